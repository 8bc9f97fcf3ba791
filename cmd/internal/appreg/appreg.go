// Package appreg generates what a homeserver and our services need to
// know about each other: the appservice registration file with fresh
// tokens and correctly escaped namespaces, and the matching CACTUS_*
// environment file.
package appreg

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net/url"
	"regexp"
	"strings"

	"github.com/cactus-comments/appservice/pkg/mxid"
	"github.com/cactus-comments/appservice/pkg/registration"
)

// Params describe an appservice installation.
type Params struct {
	ServerName    string // the homeserver's server name, e.g. example.org
	GatewayURL    string // where the homeserver reaches the gateway
	HomeserverURL string // where our services reach the homeserver (env file only)
	ID            string // registration id, default cactus-comments
	BotLocalpart  string // default cactusbot
	Prefix        string // alias namespace prefix, default comments_
	// ASToken and HSToken reuse existing tokens; empty: fresh ones.
	ASToken, HSToken string
}

// Defaults of Params.
const (
	DefaultID           = "cactus-comments"
	DefaultBotLocalpart = "cactusbot"
	DefaultPrefix       = "comments_"
)

var (
	// Matrix user localpart grammar (new ids).
	localpartRE = regexp.MustCompile(`^[a-z0-9._=\-/+]+$`)
	// Prefixes are kept to characters that mean nothing in a regex, so that
	// CACTUS_NAMESPACE_REGEX can start with the literal "#" + prefix as the
	// services require.
	prefixRE = regexp.MustCompile(`^[A-Za-z0-9_=\-]+$`)
	idRE     = regexp.MustCompile(`^[A-Za-z0-9._\-]+$`)
	hexRE    = regexp.MustCompile(`^[0-9a-f]{64}$`)
)

// withDefaults fills defaults and validates every field.
func (p Params) withDefaults() (Params, error) {
	if p.ID == "" {
		p.ID = DefaultID
	}
	if p.BotLocalpart == "" {
		p.BotLocalpart = DefaultBotLocalpart
	}
	if p.Prefix == "" {
		p.Prefix = DefaultPrefix
	}
	if p.ServerName == "" {
		return p, fmt.Errorf("server name is required")
	}
	if err := mxid.ParseServerName(p.ServerName); err != nil {
		return p, fmt.Errorf("server name: %w", err)
	}
	if !localpartRE.MatchString(p.BotLocalpart) {
		return p, fmt.Errorf("bot localpart %q: only a-z, 0-9 and ._=-/+ are allowed", p.BotLocalpart)
	}
	if !prefixRE.MatchString(p.Prefix) {
		return p, fmt.Errorf("prefix %q: only letters, digits, '_', '=' and '-' are allowed", p.Prefix)
	}
	if !idRE.MatchString(p.ID) {
		return p, fmt.Errorf("id %q: only letters, digits and ._- are allowed", p.ID)
	}
	for _, u := range []struct{ name, v string }{{"gateway URL", p.GatewayURL}, {"homeserver URL", p.HomeserverURL}} {
		if u.v == "" {
			continue
		}
		pu, err := url.Parse(u.v)
		if err != nil || (pu.Scheme != "http" && pu.Scheme != "https") || pu.Host == "" {
			return p, fmt.Errorf("%s %q: want an http(s) URL with a host", u.name, u.v)
		}
	}
	if p.GatewayURL == "" {
		return p, fmt.Errorf("gateway URL is required")
	}
	for _, t := range []struct{ name, v string }{{"as_token", p.ASToken}, {"hs_token", p.HSToken}} {
		if t.v != "" && !hexRE.MatchString(t.v) {
			return p, fmt.Errorf("existing %s is not 64 lower-case hex characters", t.name)
		}
	}
	return p, nil
}

// NewToken returns 32 random bytes as 64 hex characters.
func NewToken() (string, error) {
	b := make([]byte, 32)
	if _, err := io.ReadFull(rand.Reader, b); err != nil {
		return "", fmt.Errorf("random token: %w", err)
	}
	return hex.EncodeToString(b), nil
}

// UserRegex is the users namespace: exactly the bot, server name escaped.
func UserRegex(botLocalpart, serverName string) string {
	return "@" + regexp.QuoteMeta(botLocalpart) + ":" + regexp.QuoteMeta(serverName)
}

// AliasRegex is the aliases namespace: every alias with the prefix on this
// server. The server part keeps us from claiming other servers' aliases on
// homeservers that match anywhere in the id.
func AliasRegex(prefix, serverName string) string {
	return "#" + regexp.QuoteMeta(prefix) + ".*:" + regexp.QuoteMeta(serverName)
}

// Generated is a registration with its parameters.
type Generated struct {
	Params       Params
	Registration *registration.Registration
}

// Generate builds the registration, with fresh tokens unless p carries
// them. It validates the result the way homeservers load it.
func Generate(p Params) (*Generated, error) {
	p, err := p.withDefaults()
	if err != nil {
		return nil, err
	}
	for _, tok := range []*string{&p.ASToken, &p.HSToken} {
		if *tok == "" {
			if *tok, err = NewToken(); err != nil {
				return nil, err
			}
		}
	}
	if p.ASToken == p.HSToken {
		return nil, fmt.Errorf("as_token and hs_token must differ")
	}
	gw := strings.TrimRight(p.GatewayURL, "/")
	no := false
	r := &registration.Registration{
		ID:              p.ID,
		URL:             &gw,
		ASToken:         p.ASToken,
		HSToken:         p.HSToken,
		SenderLocalpart: p.BotLocalpart,
		RateLimited:     &no,
		Namespaces: registration.Namespaces{
			Users:   []registration.Namespace{{Exclusive: true, Regex: UserRegex(p.BotLocalpart, p.ServerName)}},
			Aliases: []registration.Namespace{{Exclusive: true, Regex: AliasRegex(p.Prefix, p.ServerName)}},
		},
	}
	if err := r.Validate(); err != nil {
		return nil, err
	}
	return &Generated{Params: p, Registration: r}, nil
}

// YAML is the registration file.
func (g *Generated) YAML() ([]byte, error) {
	body, err := g.Registration.Marshal()
	if err != nil {
		return nil, err
	}
	head := "# Appservice registration for Cactus Comments. Give this file to the homeserver\n" +
		"# (Synapse: app_service_config_files). It holds secrets: keep it private.\n"
	return append([]byte(head), body...), nil
}

// Env is the environment of our services, as KEY=VALUE lines that docker
// compose, systemd, `kubectl create secret --from-env-file` and a shell all
// read the same way (no quoting needed: no value holds spaces or quotes).
func (g *Generated) Env() map[string]string {
	p := g.Params
	hs := p.HomeserverURL
	if hs == "" {
		hs = "https://" + p.ServerName
	}
	return map[string]string{
		"CACTUS_AS_TOKEN":         p.ASToken,
		"CACTUS_HS_TOKEN":         p.HSToken,
		"CACTUS_HOMESERVER_URL":   strings.TrimRight(hs, "/"),
		"CACTUS_USER_ID":          "@" + p.BotLocalpart + ":" + p.ServerName,
		"CACTUS_APPSERVICE_ID":    p.ID,
		"CACTUS_NAMESPACE_PREFIX": p.Prefix,
		"CACTUS_NAMESPACE_REGEX":  AliasRegex(p.Prefix, p.ServerName),
	}
}

// envOrder is the order the env file lists variables in.
var envOrder = []string{
	"CACTUS_HOMESERVER_URL", "CACTUS_USER_ID", "CACTUS_APPSERVICE_ID",
	"CACTUS_NAMESPACE_PREFIX", "CACTUS_NAMESPACE_REGEX", "CACTUS_AS_TOKEN", "CACTUS_HS_TOKEN",
}

// EnvFile renders Env, plus extra variables after it (sorted by the
// caller), as a .env file.
func (g *Generated) EnvFile(extra ...[2]string) []byte {
	env := g.Env()
	var b strings.Builder
	b.WriteString("# Cactus Comments services configuration, matching the registration file.\n")
	b.WriteString("# It holds the appservice tokens: keep it private.\n")
	if g.Params.HomeserverURL == "" {
		b.WriteString("# CACTUS_HOMESERVER_URL is a guess: set it to your homeserver's client-server API URL.\n")
	}
	for _, k := range envOrder {
		fmt.Fprintf(&b, "%s=%s\n", k, env[k])
	}
	for _, kv := range extra {
		fmt.Fprintf(&b, "%s=%s\n", kv[0], kv[1])
	}
	return []byte(b.String())
}
