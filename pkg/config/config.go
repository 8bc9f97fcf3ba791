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
	"strconv"
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
	HSToken           Secret `envconfig:"HS_TOKEN" required:"true" check:"token" desc:"token the homeserver sends us (registration hs_token)"`
	ASToken           Secret `envconfig:"AS_TOKEN" required:"true" check:"token" desc:"token we send the homeserver (registration as_token)"`
	HomeserverURL     string `envconfig:"HOMESERVER_URL" required:"true" check:"httpurl" desc:"client-server API base URL of the homeserver, http(s)"`
	UserID            string `envconfig:"USER_ID" required:"true" desc:"the bot's user id, @localpart:server (localpart = sender_localpart)"`
	NamespaceRegex    string `envconfig:"NAMESPACE_REGEX" default:"#comments_.*" desc:"alias namespace regex of the registration; must start with # + prefix"`
	NamespacePrefix   string `envconfig:"NAMESPACE_PREFIX" default:"comments_" desc:"alias localpart prefix of every room we manage"`
	RegistrationRegex string `envconfig:"REGISTRATION_REGEX" default:"@.*:.*" desc:"users allowed to register sites (anchored at the start)"`

	// Homeserver-facing details.
	AppserviceID        string `envconfig:"APPSERVICE_ID" desc:"registration id; enables the homeserver-to-gateway ping at startup"`
	PublicHomeserverURL string `envconfig:"PUBLIC_HOMESERVER_URL" check:"httpurl" desc:"homeserver URL web browsers use, for the embed snippet (default: HOMESERVER_URL)"`
	BotDisplayName      string `envconfig:"BOT_DISPLAY_NAME" default:"Cactus Comments" desc:"display name set on the bot at startup"`
	BotAvatarURL        string `envconfig:"BOT_AVATAR_URL" check:"mxc" desc:"mxc:// avatar set on the bot at startup (empty: leave unchanged)"`

	// NATS.
	NATSURL      string `envconfig:"NATS_URL" default:"nats://127.0.0.1:4222" check:"natsurls" desc:"NATS server URL(s), comma separated"`
	NATSCreds    string `envconfig:"NATS_CREDS" desc:"NATS credentials file (JWT + nkey)"`
	NATSNKey     string `envconfig:"NATS_NKEY" desc:"NATS nkey seed file"`
	NATSUser     string `envconfig:"NATS_USER" desc:"NATS user name"`
	NATSPassword Secret `envconfig:"NATS_PASSWORD" check:"secret" desc:"NATS password"`
	NATSToken    Secret `envconfig:"NATS_TOKEN" check:"secret" desc:"NATS authentication token"`
	NATSCA       string `envconfig:"NATS_CA" desc:"CA certificate file to verify the NATS server"`
	NATSCert     string `envconfig:"NATS_CERT" desc:"client certificate file for NATS mutual TLS"`
	NATSKey      string `envconfig:"NATS_KEY" desc:"client key file for NATS mutual TLS"`
	NATSTopology string `envconfig:"NATS_TOPOLOGY" default:"ensure" check:"oneof=ensure|check" desc:"ensure: create or update streams, consumers and buckets at startup; check: only wait until they exist (least-privilege NATS users; cactusctl topology ensure creates them)"`
	NATSReplicas int    `envconfig:"NATS_REPLICAS" default:"1" check:"positive" desc:"JetStream replicas of our streams and buckets (3 in a cluster)"`

	// Listeners and logs.
	ListenAddr string `envconfig:"LISTEN_ADDR" default:":8080" check:"addr" desc:"gateway: homeserver-facing Application Service API address"`
	AdminAddr  string `envconfig:"ADMIN_ADDR" default:":9090" check:"addr" desc:"every service: /livez, /readyz and /metrics"`
	LogFormat  string `envconfig:"LOG_FORMAT" default:"auto" check:"oneof=auto|text|json" desc:"auto (colored text on a terminal, else JSON), text or json"`
	LogLevel   string `envconfig:"LOG_LEVEL" default:"info" desc:"debug, info, warn or error"`

	// Gateway tuning.
	PublishTimeout    time.Duration `envconfig:"PUBLISH_TIMEOUT" default:"10s" check:"positive" desc:"gateway: longest wait for JetStream acks before answering 503"`
	AliasQueryTimeout time.Duration `envconfig:"ALIAS_QUERY_TIMEOUT" default:"20s" check:"positive" desc:"gateway: longest wait for a provisioner's answer to an alias query"`
	MaxBodyBytes      int64         `envconfig:"MAX_BODY_BYTES" default:"33554432" check:"positive" desc:"gateway: largest transaction body accepted"`
	// The body limits bound the gateway's memory by configuration rather
	// than by what clients declare or how slowly they send.
	BodyBytesInFlight int64         `envconfig:"BODY_BYTES_IN_FLIGHT" default:"67108864" check:"positive" desc:"gateway: request body bytes held at once across all requests (a quarter of a 256 MiB pod); beyond it, 503 at once"`
	BodyReadTimeout   time.Duration `envconfig:"BODY_READ_TIMEOUT" default:"30s" check:"positive" desc:"gateway: longest time a client may take to send a request body"`
	MinBodyRate       int64         `envconfig:"MIN_BODY_RATE" default:"65536" check:"positive" desc:"gateway: slowest request body upload accepted after its first 2 s, in bytes per second"`
	ShutdownTimeout   time.Duration `envconfig:"SHUTDOWN_TIMEOUT" default:"25s" check:"positive" desc:"every service: longest graceful drain on SIGTERM"`

	// Workers.
	RegistrationLimit int           `envconfig:"REGISTRATION_LIMIT" default:"10" check:"positive" desc:"botworker: sites one user may register"`
	HomeserverTimeout time.Duration `envconfig:"HOMESERVER_TIMEOUT" default:"20s" check:"positive" desc:"workers: per-request timeout of homeserver calls"`
	Concurrency       int           `envconfig:"CONCURRENCY" default:"16" check:"positive" desc:"workers: messages processed at once per replica"`
	RetryHorizon      time.Duration `envconfig:"RETRY_HORIZON" default:"24h" check:"positive" desc:"workers: how long a message is retried through transient failures (homeserver down, 5xx, 429), from when it was stored, before it is dead-lettered"`
	RetryMaxBackoff   time.Duration `envconfig:"RETRY_MAX_BACKOFF" default:"5m" check:"positive" desc:"workers: longest wait between two retries of one message"`
	// Deprecated: workers retry by time; read only to warn.
	MaxDeliver int `envconfig:"MAX_DELIVER" desc:"deprecated and ignored: workers retry until CACTUS_RETRY_HORIZON"`

	// Derived by Validate.
	bot       mxid.UserID
	namespace *regexp.Regexp
	register  *regexp.Regexp
}

// Lookup returns the value of a variable and whether it is set: the
// process environment (os.LookupEnv), an .env file, or a map in tests.
type Lookup func(name string) (string, bool)

// Load reads the CACTUS_* environment with envconfig and validates the
// result. The error, if any, is a Problems: every problem found, one line
// each naming its variable.
func Load() (*Config, error) {
	var col collector
	c := parseEnv(&col)
	c.validate(&col)
	if err := col.err(); err != nil {
		return nil, err
	}
	return c, nil
}

// LoadFrom is Load with the variables taken from lookup (an .env file, a
// map in tests): the same defaults, the same decoding, the same problems.
func LoadFrom(lookup Lookup) (*Config, error) {
	var col collector
	c := parse(lookup, &col, true)
	c.validate(&col)
	if err := col.err(); err != nil {
		return nil, err
	}
	return c, nil
}

// Parse fills a Config from lookup, each unset variable taking its
// default, without checking required variables or validating: for tools
// that need only part of the configuration (the NATS settings). The error
// lists the values that could not be read at all.
func Parse(lookup Lookup) (*Config, error) {
	var col collector
	c := parse(lookup, &col, false)
	return c, col.err()
}

var durationType = reflect.TypeFor[time.Duration]()

// parse reads every variable by its full CACTUS_ name only: an unrelated
// LOG_LEVEL in a container must not configure us.
func parse(lookup Lookup, col *collector, required bool) *Config {
	var c Config
	v := reflect.ValueOf(&c).Elem()
	t := v.Type()
	for i := range t.NumField() {
		f := t.Field(i)
		key := f.Tag.Get("envconfig")
		if key == "" {
			continue
		}
		raw, ok := lookup(Prefix + "_" + key)
		if !ok {
			if required && f.Tag.Get("required") == "true" {
				col.add(key, "required but not set")
				continue
			}
			raw, ok = f.Tag.Get("default"), f.Tag.Get("default") != ""
		}
		if !ok {
			continue
		}
		if why := setField(v.Field(i), raw); why != "" {
			col.add(key, "%s", why)
		}
	}
	return &c
}

// parseEnv fills a Config from the process environment with envconfig,
// one field at a time: envconfig stops at the first value it cannot read,
// and an operator should see every one. Each field is read through a
// one-field struct whose tag holds the full CACTUS_ name, so envconfig
// never falls back to the bare name (an unrelated LOG_LEVEL in a container
// must not configure us).
func parseEnv(col *collector) *Config {
	var c Config
	v := reflect.ValueOf(&c).Elem()
	t := v.Type()
	for i := range t.NumField() {
		f := t.Field(i)
		key := f.Tag.Get("envconfig")
		if key == "" {
			continue
		}
		tag := strings.Replace(string(f.Tag), `envconfig:"`+key+`"`, `envconfig:"`+Prefix+"_"+key+`"`, 1)
		one := reflect.New(reflect.StructOf([]reflect.StructField{{Name: "V", Type: f.Type, Tag: reflect.StructTag(tag)}}))
		err := envconfig.Process("", one.Interface())
		var pe *envconfig.ParseError
		switch {
		case err == nil:
			v.Field(i).Set(one.Elem().Field(0))
		case errors.As(err, &pe):
			col.add(key, "%s", unreadable(f.Type, pe.Value))
		default:
			// envconfig's only other error: required and not set.
			col.add(key, "required but not set")
		}
	}
	return &c
}

// unreadable says why raw cannot be a value of type t, in envconfig's
// terms; it quotes raw only for types that cannot hold a secret.
func unreadable(t reflect.Type, raw string) string {
	switch {
	case t == durationType:
		return fmt.Sprintf("cannot read %q as a duration (e.g. 500ms, 10s, 1m30s)", raw)
	case t.Kind() == reflect.Bool:
		return fmt.Sprintf("cannot read %q as true or false", raw)
	case t.Kind() >= reflect.Int && t.Kind() <= reflect.Uint64:
		return fmt.Sprintf("cannot read %q as a whole number", raw)
	}
	return fmt.Sprintf("has an unsupported type %s", t)
}

// setField decodes raw into f as envconfig would (parseEnv), or says why it cannot; the reason quotes raw
// only for types that cannot hold a secret.
func setField(f reflect.Value, raw string) string {
	ok := true
	switch {
	case f.Type() == durationType:
		d, err := time.ParseDuration(raw)
		ok = err == nil
		f.SetInt(int64(d))
	case f.Kind() == reflect.String:
		f.SetString(raw)
	case f.Kind() >= reflect.Int && f.Kind() <= reflect.Int64:
		n, err := strconv.ParseInt(raw, 0, f.Type().Bits())
		ok = err == nil
		f.SetInt(n)
	case f.Kind() >= reflect.Uint && f.Kind() <= reflect.Uint64:
		n, err := strconv.ParseUint(raw, 0, f.Type().Bits())
		ok = err == nil
		f.SetUint(n)
	case f.Kind() == reflect.Bool:
		b, err := strconv.ParseBool(raw)
		ok = err == nil
		f.SetBool(b)
	default:
		ok = false
	}
	if !ok {
		return unreadable(f.Type(), raw)
	}
	return ""
}

// Validate checks every value, fills the derived fields and normalises the
// URLs. The error, if any, is a Problems.
func (c *Config) Validate() error {
	var col collector
	c.validate(&col)
	return col.err()
}

// validate runs the check named in each field's `check` tag (see checks),
// then the checks that involve several variables or derived values.
func (c *Config) validate(col *collector) {
	v := reflect.ValueOf(c).Elem()
	t := v.Type()
	for i := range t.NumField() {
		f := t.Field(i)
		key, tag := f.Tag.Get("envconfig"), f.Tag.Get("check")
		if key == "" || tag == "" || col.has(key) {
			continue
		}
		if f.Tag.Get("required") == "true" && v.Field(i).IsZero() {
			col.add(key, "required but empty")
			continue
		}
		name, arg, _ := strings.Cut(tag, "=")
		check, ok := checks[name]
		if !ok {
			col.add(key, "unknown check %q (a bug)", tag)
			continue
		}
		if why := check(v.Field(i), arg); why != "" {
			col.add(key, "%s", why)
		}
	}

	if c.HSToken != "" && c.HSToken == c.ASToken {
		col.add("HS_TOKEN", "must differ from CACTUS_AS_TOKEN")
	}
	if !col.has("HOMESERVER_URL") && !col.has("PUBLIC_HOMESERVER_URL") && c.PublicHomeserverURL == "" {
		c.PublicHomeserverURL = c.HomeserverURL
	}
	var err error
	if c.UserID == "" {
		col.add("USER_ID", "required but empty")
	} else if c.bot, err = mxid.ParseUserID(c.UserID); err != nil {
		col.add("USER_ID", "%v", err)
	}
	if c.NamespacePrefix == "" || strings.ContainsAny(c.NamespacePrefix, ": \t\n#") {
		col.add("NAMESPACE_PREFIX", "must be non-empty without ':', '#' or whitespace, got %q", c.NamespacePrefix)
	} else if !strings.HasPrefix(c.NamespaceRegex, "#"+c.NamespacePrefix) {
		col.add("NAMESPACE_REGEX", "must start with %q (# and the namespace prefix), got %q", "#"+c.NamespacePrefix, c.NamespaceRegex)
	}
	if c.namespace, err = compileMatch(c.NamespaceRegex); err != nil {
		col.add("NAMESPACE_REGEX", "%v", err)
	}
	if c.register, err = compileMatch(c.RegistrationRegex); err != nil {
		col.add("REGISTRATION_REGEX", "%v", err)
	}
	switch strings.ToLower(c.LogLevel) {
	case "debug", "info", "warn", "warning", "error":
	default:
		col.add("LOG_LEVEL", "must be debug, info, warn or error, got %q", c.LogLevel)
	}
	if (c.NATSCert == "") != (c.NATSKey == "") {
		col.add("NATS_CERT", "CACTUS_NATS_CERT and CACTUS_NATS_KEY must be set together")
	}
	if c.NATSUser == "" && c.NATSPassword != "" {
		col.add("NATS_USER", "required when CACTUS_NATS_PASSWORD is set")
	}
	if c.NATSUser != "" && c.NATSPassword == "" {
		col.add("NATS_PASSWORD", "required when CACTUS_NATS_USER is set")
	}
	if c.BodyBytesInFlight < c.MaxBodyBytes {
		col.add("BODY_BYTES_IN_FLIGHT", "must be at least CACTUS_MAX_BODY_BYTES (%d), got %d", c.MaxBodyBytes, c.BodyBytesInFlight)
	}
	// NATS takes one way of authenticating; two set at once means one is
	// silently ignored, or the server refuses both.
	var auth []string
	for _, a := range []struct{ name, val string }{
		{"NATS_CREDS", c.NATSCreds}, {"NATS_NKEY", c.NATSNKey}, {"NATS_USER", c.NATSUser}, {"NATS_TOKEN", string(c.NATSToken)},
	} {
		if a.val != "" {
			auth = append(auth, a.name)
		}
	}
	if len(auth) > 1 {
		col.add(auth[len(auth)-1], "only one of CACTUS_NATS_CREDS, CACTUS_NATS_NKEY, CACTUS_NATS_USER and CACTUS_NATS_TOKEN may be set (got %s)", Prefix+"_"+strings.Join(auth, ", "+Prefix+"_"))
	}
	if c.NATSReplicas > 5 {
		col.add("NATS_REPLICAS", "JetStream allows at most 5 replicas, got %d", c.NATSReplicas)
	}
	if !col.has("RETRY_HORIZON") && !col.has("RETRY_MAX_BACKOFF") && c.RetryMaxBackoff > c.RetryHorizon {
		col.add("RETRY_MAX_BACKOFF", "%v is longer than CACTUS_RETRY_HORIZON %v", c.RetryMaxBackoff, c.RetryHorizon)
	}
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
