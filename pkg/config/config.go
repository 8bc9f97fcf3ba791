// Package config loads and validates the configuration every service reads
// from CACTUS_* environment variables.
package config

import (
	"errors"
	"fmt"
	"io"
	"net/url"
	"reflect"
	"regexp"
	"regexp/syntax"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/kelseyhightower/envconfig"

	"github.com/cactus-comments/appservice/pkg/mxid"
	"github.com/cactus-comments/appservice/pkg/namespace"
)

// Prefix is the environment prefix of every variable.
const Prefix = "CACTUS"

// Secret holds a token. It formats, logs and marshals as a placeholder so a
// token that reaches a log line, an error or a panic is not revealed.
type Secret string

const redacted = "[REDACTED]"

// Reveal returns the secret for the one place that needs it.
func (s Secret) Reveal() string { return string(s) }

func (s Secret) String() string                { return redacted }
func (s Secret) GoString() string              { return redacted }
func (s Secret) MarshalJSON() ([]byte, error)  { return []byte(`"` + redacted + `"`), nil }
func (s Secret) MarshalText() ([]byte, error)  { return []byte(redacted), nil }
func (s Secret) Format(f fmt.State, verb rune) { _, _ = io.WriteString(f, redacted) }

// Config is every setting of every service. Each service reads the same
// variables so that one environment file or ConfigMap serves them all.
type Config struct {
	// The Cactus Comments variables.
	HSToken           Secret `envconfig:"HS_TOKEN" required:"true" desc:"token the homeserver sends us (registration hs_token)"`
	ASToken           Secret `envconfig:"AS_TOKEN" required:"true" desc:"token we send the homeserver (registration as_token)"`
	HomeserverURL     string `envconfig:"HOMESERVER_URL" required:"true" desc:"client-server API base URL of the homeserver, http(s)"`
	UserID            string `envconfig:"USER_ID" required:"true" desc:"the bot's user id, @localpart:server (localpart = sender_localpart)"`
	NamespaceRegex    string `envconfig:"NAMESPACE_REGEX" default:"#comments_.*" desc:"alias namespace regex of the registration; must start with # + prefix"`
	NamespacePrefix   string `envconfig:"NAMESPACE_PREFIX" default:"comments_" desc:"alias localpart prefix of every room we manage"`
	RegistrationRegex string `envconfig:"REGISTRATION_REGEX" default:"@.*:.*" desc:"users allowed to register sites (anchored at the start)"`

	// Homeserver-facing details.
	AppserviceID        string `envconfig:"APPSERVICE_ID" desc:"registration id; enables the homeserver-to-gateway ping at startup"`
	PublicHomeserverURL string `envconfig:"PUBLIC_HOMESERVER_URL" desc:"homeserver URL web browsers use, for the embed snippet (default: HOMESERVER_URL)"`
	BotDisplayName      string `envconfig:"BOT_DISPLAY_NAME" default:"Cactus Comments" desc:"display name set on the bot at startup"`
	BotAvatarURL        string `envconfig:"BOT_AVATAR_URL" desc:"mxc:// avatar set on the bot at startup (empty: leave unchanged)"`

	// NATS.
	NATSURL      string `envconfig:"NATS_URL" default:"nats://127.0.0.1:4222" desc:"NATS server URL(s), comma separated"`
	NATSCreds    string `envconfig:"NATS_CREDS" desc:"NATS credentials file (JWT + nkey)"`
	NATSNKey     string `envconfig:"NATS_NKEY" desc:"NATS nkey seed file"`
	NATSUser     string `envconfig:"NATS_USER" desc:"NATS user name"`
	NATSPassword Secret `envconfig:"NATS_PASSWORD" desc:"NATS password"`
	NATSToken    Secret `envconfig:"NATS_TOKEN" desc:"NATS authentication token"`
	NATSCA       string `envconfig:"NATS_CA" desc:"CA certificate file to verify the NATS server"`
	NATSCert     string `envconfig:"NATS_CERT" desc:"client certificate file for NATS mutual TLS"`
	NATSKey      string `envconfig:"NATS_KEY" desc:"client key file for NATS mutual TLS"`
	NATSReplicas int    `envconfig:"NATS_REPLICAS" default:"1" desc:"JetStream replicas of our streams and buckets (3 in a cluster)"`

	// Listeners and logs.
	ListenAddr string `envconfig:"LISTEN_ADDR" default:":8080" desc:"gateway: homeserver-facing Application Service API address"`
	AdminAddr  string `envconfig:"ADMIN_ADDR" default:":9090" desc:"every service: /livez, /readyz and /metrics"`
	LogFormat  string `envconfig:"LOG_FORMAT" default:"auto" desc:"auto (colored text on a terminal, else JSON), text or json"`
	LogLevel   string `envconfig:"LOG_LEVEL" default:"info" desc:"debug, info, warn or error"`

	// Gateway tuning.
	PublishTimeout    time.Duration `envconfig:"PUBLISH_TIMEOUT" default:"10s" desc:"gateway: longest wait for JetStream acks before answering 503"`
	AliasQueryTimeout time.Duration `envconfig:"ALIAS_QUERY_TIMEOUT" default:"20s" desc:"gateway: longest wait for a provisioner's answer to an alias query"`
	MaxBodyBytes      int64         `envconfig:"MAX_BODY_BYTES" default:"33554432" desc:"gateway: largest transaction body accepted"`
	ShutdownTimeout   time.Duration `envconfig:"SHUTDOWN_TIMEOUT" default:"25s" desc:"every service: longest graceful drain on SIGTERM"`

	// Workers.
	RegistrationLimit int           `envconfig:"REGISTRATION_LIMIT" default:"10" desc:"botworker: sites one user may register"`
	HomeserverTimeout time.Duration `envconfig:"HOMESERVER_TIMEOUT" default:"20s" desc:"workers: per-request timeout of homeserver calls"`
	Concurrency       int           `envconfig:"CONCURRENCY" default:"16" desc:"workers: messages processed at once per replica"`
	RetryHorizon      time.Duration `envconfig:"RETRY_HORIZON" default:"24h" desc:"workers: how long a message is retried through transient failures (homeserver down, 5xx, 429), from when it was stored, before it is dead-lettered"`
	RetryMaxBackoff   time.Duration `envconfig:"RETRY_MAX_BACKOFF" default:"5m" desc:"workers: longest wait between two retries of one message"`
	// Deprecated: workers retry by time; read only to warn.
	MaxDeliver int `envconfig:"MAX_DELIVER" desc:"deprecated and ignored: workers retry until CACTUS_RETRY_HORIZON"`

	// Derived by Validate.
	bot       mxid.UserID
	namespace *regexp.Regexp
	register  *regexp.Regexp
}

// Load reads the CACTUS_* environment and validates the result. Every error is one line naming the variable.
func Load() (*Config, error) {
	c, err := process()
	if err != nil {
		return nil, err
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return c, nil
}

// process fills a Config from the environment. envconfig falls back to the
// bare tag name (HS_TOKEN, USER_ID, LOG_LEVEL, ...) when the prefixed
// variable is unset, so an unrelated LOG_LEVEL in a container would
// configure us. It therefore processes a shadow struct whose tags carry the
// full CACTUS_ names, for which the fallback is the same name.
func process() (*Config, error) {
	t := reflect.TypeFor[Config]()
	var fields []reflect.StructField
	var index []int
	for i := range t.NumField() {
		f := t.Field(i)
		key := f.Tag.Get("envconfig")
		if key == "" {
			continue
		}
		tag := strings.Replace(string(f.Tag), `envconfig:"`+key+`"`, `envconfig:"`+Prefix+"_"+key+`"`, 1)
		fields = append(fields, reflect.StructField{Name: f.Name, Type: f.Type, Tag: reflect.StructTag(tag)})
		index = append(index, i)
	}
	shadow := reflect.New(reflect.StructOf(fields))
	if err := envconfig.Process("", shadow.Interface()); err != nil {
		return nil, oneLine(err)
	}
	var c Config
	cv := reflect.ValueOf(&c).Elem()
	for j, i := range index {
		cv.Field(i).Set(shadow.Elem().Field(j))
	}
	return &c, nil
}

// oneLine turns envconfig's errors into "CACTUS_X: why".
func oneLine(err error) error {
	var pe *envconfig.ParseError
	if errors.As(err, &pe) {
		return fmt.Errorf("%s: cannot read %q as %s", pe.KeyName, pe.Value, pe.TypeName)
	}
	msg := err.Error()
	if k, ok := strings.CutPrefix(msg, "required key "); ok {
		k, _, _ = strings.Cut(k, " ")
		return fmt.Errorf("%s: required but not set", k)
	}
	return errors.New(strings.ReplaceAll(msg, "\n", " "))
}

// Validate checks every value and fills the derived fields.
func (c *Config) Validate() error {
	v := func(name, format string, args ...any) error {
		return fmt.Errorf("%s_%s: %s", Prefix, name, fmt.Sprintf(format, args...))
	}
	if c.HSToken == "" {
		return v("HS_TOKEN", "required but empty")
	}
	if c.ASToken == "" {
		return v("AS_TOKEN", "required but empty")
	}
	hs, err := normalizeURL(c.HomeserverURL)
	if err != nil {
		return v("HOMESERVER_URL", "%v", err)
	}
	c.HomeserverURL = hs
	if c.PublicHomeserverURL == "" {
		c.PublicHomeserverURL = hs
	} else if c.PublicHomeserverURL, err = normalizeURL(c.PublicHomeserverURL); err != nil {
		return v("PUBLIC_HOMESERVER_URL", "%v", err)
	}
	if c.bot, err = mxid.ParseUserID(c.UserID); err != nil {
		return v("USER_ID", "%v", err)
	}
	if c.NamespacePrefix == "" || strings.ContainsAny(c.NamespacePrefix, ": \t\n#") {
		return v("NAMESPACE_PREFIX", "must be non-empty without ':', '#' or whitespace, got %q", c.NamespacePrefix)
	}
	if !strings.HasPrefix(c.NamespaceRegex, "#"+c.NamespacePrefix) {
		return v("NAMESPACE_REGEX", "must start with %q (# and the namespace prefix), got %q", "#"+c.NamespacePrefix, c.NamespaceRegex)
	}
	if c.namespace, err = compileMatch(c.NamespaceRegex); err != nil {
		return v("NAMESPACE_REGEX", "%v", err)
	}
	if c.register, err = compileMatch(c.RegistrationRegex); err != nil {
		return v("REGISTRATION_REGEX", "%v", err)
	}
	switch c.LogFormat {
	case "auto", "text", "json":
	default:
		return v("LOG_FORMAT", "must be auto, text or json, got %q", c.LogFormat)
	}
	switch strings.ToLower(c.LogLevel) {
	case "debug", "info", "warn", "warning", "error":
	default:
		return v("LOG_LEVEL", "must be debug, info, warn or error, got %q", c.LogLevel)
	}
	if (c.NATSCert == "") != (c.NATSKey == "") {
		return v("NATS_CERT", "NATS_CERT and NATS_KEY must be set together")
	}
	if c.NATSUser == "" && c.NATSPassword != "" {
		return v("NATS_USER", "required when NATS_PASSWORD is set")
	}
	positive := []struct {
		name string
		val  int64
	}{
		{"NATS_REPLICAS", int64(c.NATSReplicas)},
		{"PUBLISH_TIMEOUT", int64(c.PublishTimeout)},
		{"ALIAS_QUERY_TIMEOUT", int64(c.AliasQueryTimeout)},
		{"MAX_BODY_BYTES", c.MaxBodyBytes},
		{"SHUTDOWN_TIMEOUT", int64(c.ShutdownTimeout)},
		{"REGISTRATION_LIMIT", int64(c.RegistrationLimit)},
		{"HOMESERVER_TIMEOUT", int64(c.HomeserverTimeout)},
		{"CONCURRENCY", int64(c.Concurrency)},
		{"RETRY_HORIZON", int64(c.RetryHorizon)},
		{"RETRY_MAX_BACKOFF", int64(c.RetryMaxBackoff)},
	}
	for _, p := range positive {
		if p.val <= 0 {
			return v(p.name, "must be positive")
		}
	}
	if c.NATSReplicas > 5 {
		return v("NATS_REPLICAS", "JetStream allows at most 5 replicas, got %d", c.NATSReplicas)
	}
	if c.RetryMaxBackoff > c.RetryHorizon {
		return v("RETRY_MAX_BACKOFF", "%v is longer than CACTUS_RETRY_HORIZON %v", c.RetryMaxBackoff, c.RetryHorizon)
	}
	return nil
}

// Deprecations lists settings that are accepted but no longer used, one
// line each, for the services to log at startup.
func (c *Config) Deprecations() []string {
	if c.MaxDeliver != 0 {
		return []string{Prefix + "_MAX_DELIVER is ignored: workers retry transient failures until " + Prefix + "_RETRY_HORIZON and dead-letter permanent ones at once"}
	}
	return nil
}

func normalizeURL(raw string) (string, error) {
	u, err := url.Parse(strings.TrimSpace(raw))
	if err != nil {
		return "", fmt.Errorf("not a URL: %w", err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return "", fmt.Errorf("must be an http or https URL, got %q", raw)
	}
	if u.Host == "" {
		return "", fmt.Errorf("has no host: %q", raw)
	}
	if u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return "", errors.New("must not carry credentials, a query or a fragment")
	}
	return strings.TrimRight(u.String(), "/"), nil
}

// compileMatch compiles a pattern with Python re.match semantics: anchored
// at the start, free at the end. The pattern must compile on its own first:
// wrapped, "a)|(?:b" would compile and match b anywhere, escaping the anchor.
func compileMatch(pattern string) (*regexp.Regexp, error) {
	if _, err := regexp.Compile(pattern); err != nil {
		var se *syntax.Error
		if errors.As(err, &se) {
			return nil, fmt.Errorf("does not compile: %s: %q", se.Code, se.Expr)
		}
		return nil, fmt.Errorf("does not compile: %q", err.Error())
	}
	re, err := regexp.Compile(`^(?:` + pattern + `)`)
	if err != nil {
		return nil, fmt.Errorf("does not compile: %q", err.Error())
	}
	return re, nil
}

// Bot is the bot's user id.
func (c *Config) Bot() mxid.UserID { return c.bot }

// ServerName is the homeserver's server name, taken from the bot's user id.
func (c *Config) ServerName() string { return c.bot.Server() }

// Namespace is our alias namespace on this homeserver.
func (c *Config) Namespace() namespace.Namespace {
	return namespace.Namespace{Prefix: c.NamespacePrefix, Server: c.bot.Server()}
}

// InNamespace reports whether an alias matches CACTUS_NAMESPACE_REGEX.
func (c *Config) InNamespace(alias string) bool { return c.namespace.MatchString(alias) }

// MayRegister reports whether user may talk to the bot and register sites.
func (c *Config) MayRegister(user string) bool { return c.register.MatchString(user) }

// Secrets lists the configured secret values, for log redaction,
// including credentials written into CACTUS_NATS_URL (nats://user:pw@host,
// or nats://token@host, which NATS reads as a token).
func (c *Config) Secrets() []string {
	var out []string
	for _, s := range []Secret{c.HSToken, c.ASToken, c.NATSPassword, c.NATSToken} {
		if s != "" {
			out = append(out, s.Reveal())
		}
	}
	for _, raw := range strings.Split(c.NATSURL, ",") {
		u, err := url.Parse(strings.TrimSpace(raw))
		if err != nil || u.User == nil {
			continue
		}
		if pw, ok := u.User.Password(); ok {
			if pw != "" {
				out = append(out, pw)
			}
		} else if name := u.User.Username(); name != "" {
			out = append(out, name)
		}
	}
	return out
}

// Usage writes every variable with its default and description.
func Usage(w io.Writer) error {
	vars, err := Variables()
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "VARIABLE\tDEFAULT\tREQUIRED\tDESCRIPTION")
	for _, v := range vars {
		req := ""
		if v.Required {
			req = "yes"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", v.Name, v.Default, req, v.Description)
	}
	return tw.Flush()
}

// Variable describes one environment variable.
type Variable struct {
	Name, Default, Description string
	Required                   bool
}

// Variables lists every variable Config reads, in declaration order.
func Variables() ([]Variable, error) {
	t := reflect.TypeFor[Config]()
	out := make([]Variable, 0, t.NumField())
	for i := range t.NumField() {
		f := t.Field(i)
		name := f.Tag.Get("envconfig")
		if name == "" {
			continue
		}
		out = append(out, Variable{
			Name:        Prefix + "_" + name,
			Default:     f.Tag.Get("default"),
			Description: f.Tag.Get("desc"),
			Required:    f.Tag.Get("required") == "true",
		})
	}
	return out, nil
}
