package config

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/lmittmann/tint"
)

const (
	hsToken = "hs-secret-0123456789abcdef0123456789abcdef"
	asToken = "as-secret-fedcba9876543210fedcba9876543210"
)

// setEnv clears every CACTUS_* variable for the test, then sets vars.
func setEnv(t *testing.T, vars map[string]string) {
	t.Helper()
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, Prefix+"_") {
			t.Setenv(k, "") // restores the old value at the end of the test
			if err := os.Unsetenv(k); err != nil {
				t.Fatal(err)
			}
		}
	}
	for k, v := range vars {
		t.Setenv(k, v)
	}
}

func required() map[string]string {
	return map[string]string{
		"CACTUS_HS_TOKEN":       hsToken,
		"CACTUS_AS_TOKEN":       asToken,
		"CACTUS_HOMESERVER_URL": "https://matrix.example.org",
		"CACTUS_USER_ID":        "@cactusbot:example.org",
	}
}

func with(extra map[string]string, drop ...string) map[string]string {
	m := required()
	for k, v := range extra {
		m[k] = v
	}
	for _, k := range drop {
		delete(m, k)
	}
	return m
}

func TestLoadDefaults(t *testing.T) {
	setEnv(t, required())
	c, err := Load()
	if err != nil {
		t.Fatal(err)
	}
	checks := []struct {
		name      string
		got, want any
	}{
		{"HSToken", c.HSToken.Reveal(), hsToken},
		{"ASToken", c.ASToken.Reveal(), asToken},
		{"HomeserverURL", c.HomeserverURL, "https://matrix.example.org"},
		{"PublicHomeserverURL", c.PublicHomeserverURL, "https://matrix.example.org"},
		{"UserID", c.UserID, "@cactusbot:example.org"},
		{"NamespaceRegex", c.NamespaceRegex, "#comments_.*"},
		{"NamespacePrefix", c.NamespacePrefix, "comments_"},
		{"RegistrationRegex", c.RegistrationRegex, "@.*:.*"},
		{"AppserviceID", c.AppserviceID, ""},
		{"BotDisplayName", c.BotDisplayName, "Cactus Comments"},
		{"NATSURL", c.NATSURL, "nats://127.0.0.1:4222"},
		{"NATSReplicas", c.NATSReplicas, 1},
		{"ListenAddr", c.ListenAddr, ":8080"},
		{"AdminAddr", c.AdminAddr, ":9090"},
		{"LogFormat", c.LogFormat, "auto"},
		{"LogLevel", c.LogLevel, "info"},
		{"PublishTimeout", c.PublishTimeout, 10 * time.Second},
		{"AliasQueryTimeout", c.AliasQueryTimeout, 20 * time.Second},
		{"MaxBodyBytes", c.MaxBodyBytes, int64(32 << 20)},
		{"BodyBytesInFlight", c.BodyBytesInFlight, int64(64 << 20)},
		{"BodyReadTimeout", c.BodyReadTimeout, 30 * time.Second},
		{"MinBodyRate", c.MinBodyRate, int64(64 << 10)},
		{"ShutdownTimeout", c.ShutdownTimeout, 25 * time.Second},
		{"RegistrationLimit", c.RegistrationLimit, 10},
		{"HomeserverTimeout", c.HomeserverTimeout, 20 * time.Second},
		{"Concurrency", c.Concurrency, 16},
		{"RetryHorizon", c.RetryHorizon, 24 * time.Hour},
		{"RetryMaxBackoff", c.RetryMaxBackoff, 5 * time.Minute},
		{"Deprecations", len(c.Deprecations()), 0},
		{"Bot", c.Bot().String(), "@cactusbot:example.org"},
		{"ServerName", c.ServerName(), "example.org"},
		{"Namespace.Prefix", c.Namespace().Prefix, "comments_"},
		{"Namespace.Server", c.Namespace().Server, "example.org"},
	}
	for _, ch := range checks {
		if ch.got != ch.want {
			t.Errorf("%s = %#v, want %#v", ch.name, ch.got, ch.want)
		}
	}
	if got := c.Secrets(); len(got) != 2 || got[0] != hsToken || got[1] != asToken {
		t.Errorf("Secrets() = %d values, want the two tokens", len(got))
	}
}

func TestLoadValues(t *testing.T) {
	setEnv(t, with(map[string]string{
		"CACTUS_HOMESERVER_URL":        " http://synapse:8008/ ",
		"CACTUS_PUBLIC_HOMESERVER_URL": "https://matrix.example.org/base//",
		"CACTUS_USER_ID":               "@bot:my_server.example:8448",
		"CACTUS_NAMESPACE_PREFIX":      "talk-",
		"CACTUS_NAMESPACE_REGEX":       "#talk-.*",
		"CACTUS_LOG_LEVEL":             "WARNING",
		"CACTUS_LOG_FORMAT":            "json",
		"CACTUS_NATS_USER":             "u",
		"CACTUS_NATS_PASSWORD":         "natspassword",
		"CACTUS_NATS_REPLICAS":         "5",
		"CACTUS_PUBLISH_TIMEOUT":       "1500ms",
		"CACTUS_CONCURRENCY":           "1",
		"CACTUS_RETRY_HORIZON":         "1h",
		"CACTUS_MAX_DELIVER":           "8",
	}))
	c, err := Load()
	if err != nil {
		t.Fatal(err)
	}
	if c.RetryHorizon != time.Hour {
		t.Errorf("RetryHorizon = %v", c.RetryHorizon)
	}
	// The variable that went away is still accepted, with a warning.
	if d := c.Deprecations(); len(d) != 1 || !strings.Contains(d[0], "CACTUS_MAX_DELIVER") {
		t.Errorf("Deprecations() = %q", d)
	}
	if c.HomeserverURL != "http://synapse:8008" {
		t.Errorf("HomeserverURL = %q, want the trailing slash stripped", c.HomeserverURL)
	}
	if c.PublicHomeserverURL != "https://matrix.example.org/base" {
		t.Errorf("PublicHomeserverURL = %q", c.PublicHomeserverURL)
	}
	if c.ServerName() != "my_server.example:8448" || c.Namespace().Prefix != "talk-" {
		t.Errorf("ServerName = %q, Namespace = %+v", c.ServerName(), c.Namespace())
	}
	if c.NATSReplicas != 5 || c.PublishTimeout != 1500*time.Millisecond || c.Concurrency != 1 {
		t.Errorf("NATSReplicas %d, PublishTimeout %v, Concurrency %d", c.NATSReplicas, c.PublishTimeout, c.Concurrency)
	}
	if got := c.Secrets(); len(got) != 3 {
		t.Errorf("Secrets() has %d values, want 3", len(got))
	}
}

func TestLoadErrors(t *testing.T) {
	tests := []struct {
		name string
		env  map[string]string
		// The variable the error must start with, and a part of the reason.
		variable, why string
	}{
		{"missing HS_TOKEN", with(nil, "CACTUS_HS_TOKEN"), "CACTUS_HS_TOKEN", "required"},
		{"missing AS_TOKEN", with(nil, "CACTUS_AS_TOKEN"), "CACTUS_AS_TOKEN", "required"},
		{"missing HOMESERVER_URL", with(nil, "CACTUS_HOMESERVER_URL"), "CACTUS_HOMESERVER_URL", "required"},
		{"missing USER_ID", with(nil, "CACTUS_USER_ID"), "CACTUS_USER_ID", "required"},
		{"empty HS_TOKEN", with(map[string]string{"CACTUS_HS_TOKEN": ""}), "CACTUS_HS_TOKEN", "empty"},
		{"empty AS_TOKEN", with(map[string]string{"CACTUS_AS_TOKEN": ""}), "CACTUS_AS_TOKEN", "empty"},
		{"empty HOMESERVER_URL", with(map[string]string{"CACTUS_HOMESERVER_URL": ""}), "CACTUS_HOMESERVER_URL", "empty"},
		{"malformed URL", with(map[string]string{"CACTUS_HOMESERVER_URL": "http://[::1"}), "CACTUS_HOMESERVER_URL", "not a URL"},
		{"URL with control char", with(map[string]string{"CACTUS_HOMESERVER_URL": "http://a\x01b"}), "CACTUS_HOMESERVER_URL", "not a URL"},
		{"non-http scheme", with(map[string]string{"CACTUS_HOMESERVER_URL": "ftp://example.org"}), "CACTUS_HOMESERVER_URL", "http or https"},
		{"no scheme", with(map[string]string{"CACTUS_HOMESERVER_URL": "example.org"}), "CACTUS_HOMESERVER_URL", "http or https"},
		{"no host", with(map[string]string{"CACTUS_HOMESERVER_URL": "http:///path"}), "CACTUS_HOMESERVER_URL", "no host"},
		{"credentials in URL", with(map[string]string{"CACTUS_HOMESERVER_URL": "https://u:p@example.org"}), "CACTUS_HOMESERVER_URL", "credentials"},
		{"query in URL", with(map[string]string{"CACTUS_HOMESERVER_URL": "https://example.org/?access_token=x"}), "CACTUS_HOMESERVER_URL", "query"},
		{"bad public URL", with(map[string]string{"CACTUS_PUBLIC_HOMESERVER_URL": "matrix.example.org"}), "CACTUS_PUBLIC_HOMESERVER_URL", "http or https"},
		{"user id without sigil", with(map[string]string{"CACTUS_USER_ID": "cactusbot:example.org"}), "CACTUS_USER_ID", "invalid"},
		{"user id without server", with(map[string]string{"CACTUS_USER_ID": "@cactusbot"}), "CACTUS_USER_ID", "server"},
		{"user id bad server", with(map[string]string{"CACTUS_USER_ID": "@cactusbot:exa mple.org"}), "CACTUS_USER_ID", "invalid"},
		{"empty prefix", with(map[string]string{"CACTUS_NAMESPACE_PREFIX": "", "CACTUS_NAMESPACE_REGEX": "#.*"}), "CACTUS_NAMESPACE_PREFIX", "non-empty"},
		{"prefix with colon", with(map[string]string{"CACTUS_NAMESPACE_PREFIX": "a:b", "CACTUS_NAMESPACE_REGEX": "#a:b.*"}), "CACTUS_NAMESPACE_PREFIX", "':'"},
		{"namespace regex without #", with(map[string]string{"CACTUS_NAMESPACE_REGEX": "comments_.*"}), "CACTUS_NAMESPACE_REGEX", `"#comments_"`},
		{"namespace regex other prefix", with(map[string]string{"CACTUS_NAMESPACE_REGEX": "#talk_.*"}), "CACTUS_NAMESPACE_REGEX", "must start with"},
		{"namespace regex prefix mismatch", with(map[string]string{"CACTUS_NAMESPACE_PREFIX": "talk_"}), "CACTUS_NAMESPACE_REGEX", `"#talk_"`},
		{"namespace regex does not compile", with(map[string]string{"CACTUS_NAMESPACE_REGEX": "#comments_(.*"}), "CACTUS_NAMESPACE_REGEX", "does not compile"},
		{"registration regex does not compile", with(map[string]string{"CACTUS_REGISTRATION_REGEX": "@[a-"}), "CACTUS_REGISTRATION_REGEX", "does not compile"},
		{"registration regex escaping the anchor", with(map[string]string{"CACTUS_REGISTRATION_REGEX": "@a)|(?:b"}), "CACTUS_REGISTRATION_REGEX", "does not compile"},
		{"registration regex with newline", with(map[string]string{"CACTUS_REGISTRATION_REGEX": "@a\n(b"}), "CACTUS_REGISTRATION_REGEX", "does not compile"},
		{"bad log format", with(map[string]string{"CACTUS_LOG_FORMAT": "xml"}), "CACTUS_LOG_FORMAT", `"xml"`},
		{"bad log level", with(map[string]string{"CACTUS_LOG_LEVEL": "verbose"}), "CACTUS_LOG_LEVEL", `"verbose"`},
		{"cert without key", with(map[string]string{"CACTUS_NATS_CERT": "/c.pem"}), "CACTUS_NATS_CERT", "together"},
		{"key without cert", with(map[string]string{"CACTUS_NATS_KEY": "/k.pem"}), "CACTUS_NATS_CERT", "together"},
		{"password without user", with(map[string]string{"CACTUS_NATS_PASSWORD": "pw-value"}), "CACTUS_NATS_USER", "NATS_PASSWORD"},
		{"user without password", with(map[string]string{"CACTUS_NATS_USER": "gateway"}), "CACTUS_NATS_PASSWORD", "CACTUS_NATS_USER"},
		{"replicas zero", with(map[string]string{"CACTUS_NATS_REPLICAS": "0"}), "CACTUS_NATS_REPLICAS", "positive"},
		{"replicas above 5", with(map[string]string{"CACTUS_NATS_REPLICAS": "6"}), "CACTUS_NATS_REPLICAS", "at most 5"},
		{"replicas not a number", with(map[string]string{"CACTUS_NATS_REPLICAS": "three"}), "CACTUS_NATS_REPLICAS", `"three"`},
		{"publish timeout zero", with(map[string]string{"CACTUS_PUBLISH_TIMEOUT": "0s"}), "CACTUS_PUBLISH_TIMEOUT", "positive"},
		{"publish timeout negative", with(map[string]string{"CACTUS_PUBLISH_TIMEOUT": "-1s"}), "CACTUS_PUBLISH_TIMEOUT", "positive"},
		{"publish timeout without unit", with(map[string]string{"CACTUS_PUBLISH_TIMEOUT": "10"}), "CACTUS_PUBLISH_TIMEOUT", `"10"`},
		{"alias query timeout zero", with(map[string]string{"CACTUS_ALIAS_QUERY_TIMEOUT": "0"}), "CACTUS_ALIAS_QUERY_TIMEOUT", "positive"},
		{"max body zero", with(map[string]string{"CACTUS_MAX_BODY_BYTES": "0"}), "CACTUS_MAX_BODY_BYTES", "positive"},
		{"max body garbage", with(map[string]string{"CACTUS_MAX_BODY_BYTES": "32MB"}), "CACTUS_MAX_BODY_BYTES", `"32MB"`},
		{"bodies in flight below one body", with(map[string]string{"CACTUS_BODY_BYTES_IN_FLIGHT": "1000"}), "CACTUS_BODY_BYTES_IN_FLIGHT", "at least CACTUS_MAX_BODY_BYTES"},
		{"body read timeout zero", with(map[string]string{"CACTUS_BODY_READ_TIMEOUT": "0s"}), "CACTUS_BODY_READ_TIMEOUT", "positive"},
		{"min body rate negative", with(map[string]string{"CACTUS_MIN_BODY_RATE": "-1"}), "CACTUS_MIN_BODY_RATE", "positive"},
		{"shutdown timeout negative", with(map[string]string{"CACTUS_SHUTDOWN_TIMEOUT": "-5s"}), "CACTUS_SHUTDOWN_TIMEOUT", "positive"},
		{"registration limit zero", with(map[string]string{"CACTUS_REGISTRATION_LIMIT": "0"}), "CACTUS_REGISTRATION_LIMIT", "positive"},
		{"homeserver timeout zero", with(map[string]string{"CACTUS_HOMESERVER_TIMEOUT": "0s"}), "CACTUS_HOMESERVER_TIMEOUT", "positive"},
		{"retry horizon zero", with(map[string]string{"CACTUS_RETRY_HORIZON": "0s"}), "CACTUS_RETRY_HORIZON", "positive"},
		{"retry backoff beyond the horizon", with(map[string]string{"CACTUS_RETRY_HORIZON": "1m", "CACTUS_RETRY_MAX_BACKOFF": "2m"}), "CACTUS_RETRY_MAX_BACKOFF", "longer than"},
		{"concurrency zero", with(map[string]string{"CACTUS_CONCURRENCY": "0"}), "CACTUS_CONCURRENCY", "positive"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			setEnv(t, tt.env)
			c, err := Load()
			if err == nil {
				t.Fatalf("Load() accepted the configuration: %+v", c)
			}
			msg := err.Error()
			if !strings.HasPrefix(msg, tt.variable+": ") {
				t.Errorf("error %q does not start with %q", msg, tt.variable+": ")
			}
			if !strings.Contains(msg, tt.why) {
				t.Errorf("error %q does not say %q", msg, tt.why)
			}
			if strings.ContainsAny(msg, "\r\n") {
				t.Errorf("error spans lines: %q", msg)
			}
			for _, secret := range []string{hsToken, asToken, "pw-value"} {
				if strings.Contains(msg, secret) {
					t.Errorf("error reveals a secret: %q", msg)
				}
			}
		})
	}
}

func TestMatchSemantics(t *testing.T) {
	setEnv(t, with(map[string]string{
		"CACTUS_REGISTRATION_REGEX": `@.*:example\.org`,
		"CACTUS_NAMESPACE_REGEX":    `#comments_[a-z]+`,
	}))
	c, err := Load()
	if err != nil {
		t.Fatal(err)
	}
	// Python re.match: anchored at the start only.
	register := []struct {
		user string
		want bool
	}{
		{"@a:example.org", true},
		{"@a:example.org.evil", true},
		{"@a:example.org:8448", true},
		{"x@a:example.org", false},
		{" @a:example.org", false},
		{"@a:exampleXorg", false},
		{"@a:other.org", false},
		{"", false},
	}
	for _, tt := range register {
		if got := c.MayRegister(tt.user); got != tt.want {
			t.Errorf("MayRegister(%q) = %v, want %v", tt.user, got, tt.want)
		}
	}
	ns := []struct {
		alias string
		want  bool
	}{
		{"#comments_blog:example.org", true},
		{"#comments_blog_/x:example.org", true},
		{"#comments_:example.org", false},
		{"x#comments_blog:example.org", false},
		{"#other_blog:example.org", false},
	}
	for _, tt := range ns {
		if got := c.InNamespace(tt.alias); got != tt.want {
			t.Errorf("InNamespace(%q) = %v, want %v", tt.alias, got, tt.want)
		}
	}

	// An alternation must not escape the start anchor.
	setEnv(t, with(map[string]string{"CACTUS_REGISTRATION_REGEX": `@admin:a\.org|@admin:b\.org`}))
	if c, err = Load(); err != nil {
		t.Fatal(err)
	}
	for user, want := range map[string]bool{"@admin:a.org": true, "@admin:b.org": true, "@evil:x.org#@admin:b.org": false} {
		if got := c.MayRegister(user); got != want {
			t.Errorf("alternation: MayRegister(%q) = %v, want %v", user, got, want)
		}
	}
}

func TestSecretNeverPrints(t *testing.T) {
	const value = "super-secret-token-value"
	s := Secret(value)
	type holder struct {
		Name  string
		Token Secret
		Ptr   *Secret
	}
	h := holder{"x", s, &s}
	cfg := Config{HSToken: s, ASToken: s, NATSPassword: s, NATSToken: s}

	var outs []string
	for _, f := range []string{"%v", "%s", "%+v", "%#v", "%q", "%x", "%X", "%d", "%10s", "%-v"} {
		outs = append(outs, fmt.Sprintf(f, s), fmt.Sprintf(f, h), fmt.Sprintf(f, cfg), fmt.Sprintf(f, &cfg))
	}
	outs = append(outs, fmt.Sprint(s), fmt.Sprintln(s, h), s.String(), s.GoString())
	for _, v := range []any{s, h, cfg, &cfg, map[string]Secret{"k": s}, []Secret{s}} {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		outs = append(outs, string(b))
	}
	b, _ := s.MarshalText()
	outs = append(outs, string(b))

	var buf bytes.Buffer
	handlers := []slog.Handler{
		slog.NewJSONHandler(&buf, nil),
		slog.NewTextHandler(&buf, nil),
		tint.NewHandler(&buf, &tint.Options{NoColor: true}),
	}
	for _, hd := range handlers {
		l := slog.New(hd)
		l.Info("msg", "secret", s, "holder", h, "cfg", cfg, "cfgptr", &cfg, "group", slog.GroupValue(slog.Any("s", s)))
		l.With("w", s).Info("with")
	}
	outs = append(outs, buf.String())

	for _, o := range outs {
		if strings.Contains(o, value) {
			t.Errorf("secret printed: %s", o)
		}
		if strings.Contains(o, "7375706572") { // hex of "super"
			t.Errorf("secret printed in hex: %s", o)
		}
	}
	if !strings.Contains(fmt.Sprint(s), redacted) {
		t.Errorf("Sprint(secret) = %q, want the placeholder", fmt.Sprint(s))
	}
	if s.Reveal() != value {
		t.Error("Reveal lost the value")
	}
}

func TestVariablesAndUsage(t *testing.T) {
	vars, err := Variables()
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	var usage bytes.Buffer
	if err := Usage(&usage); err != nil {
		t.Fatal(err)
	}
	for _, v := range vars {
		if !strings.HasPrefix(v.Name, "CACTUS_") || v.Description == "" {
			t.Errorf("variable %+v lacks the prefix or a description", v)
		}
		if seen[v.Name] {
			t.Errorf("variable %s listed twice", v.Name)
		}
		seen[v.Name] = true
		if !strings.Contains(usage.String(), v.Name) {
			t.Errorf("Usage omits %s", v.Name)
		}
	}
	for _, name := range []string{"CACTUS_HS_TOKEN", "CACTUS_AS_TOKEN", "CACTUS_HOMESERVER_URL", "CACTUS_USER_ID"} {
		found := false
		for _, v := range vars {
			if v.Name == name {
				found = v.Required
			}
		}
		if !found {
			t.Errorf("%s is not listed as required", name)
		}
	}
}

// TestReadmeListsEveryVariable keeps the README's configuration table in
// step with the code.
func TestReadmeListsEveryVariable(t *testing.T) {
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatalf("README.md must exist at the repository root and list every variable: %v", err)
	}
	readme := string(b)
	vars, err := Variables()
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range vars {
		if !strings.Contains(readme, "`"+v.Name+"`") {
			t.Errorf("README.md does not list `%s`", v.Name)
		}
	}
}

// TestIgnoresUnprefixedVariables: envconfig alone would read HS_TOKEN or
// LOG_LEVEL when CACTUS_HS_TOKEN or CACTUS_LOG_LEVEL is unset.
func TestIgnoresUnprefixedVariables(t *testing.T) {
	setEnv(t, with(nil, "CACTUS_HS_TOKEN"))
	t.Setenv("HS_TOKEN", "from-bare-name")
	t.Setenv("LOG_LEVEL", "garbage")
	t.Setenv("CONCURRENCY", "-3")
	if _, err := Load(); err == nil || !strings.HasPrefix(err.Error(), "CACTUS_HS_TOKEN: required") {
		t.Fatalf("Load() = %v, want CACTUS_HS_TOKEN required", err)
	}
	setEnv(t, required())
	t.Setenv("LOG_LEVEL", "garbage")
	t.Setenv("USER_ID", "@other:elsewhere.org")
	t.Setenv("NATS_URL", "nats://elsewhere:4222")
	c, err := Load()
	if err != nil {
		t.Fatalf("Load() read a bare variable: %v", err)
	}
	if c.LogLevel != "info" || c.UserID != "@cactusbot:example.org" || c.NATSURL != "nats://127.0.0.1:4222" {
		t.Fatalf("bare variables leaked in: %q %q %q", c.LogLevel, c.UserID, c.NATSURL)
	}
}

func TestSecretsIncludeNATSURLCredentials(t *testing.T) {
	setEnv(t, with(map[string]string{
		"CACTUS_NATS_URL": "nats://alice:pw-in-url@n1:4222, nats://tok-in-url@n2:4222,nats://n3:4222",
	}))
	c, err := Load()
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Join(c.Secrets(), " ")
	for _, want := range []string{hsToken, asToken, "pw-in-url", "tok-in-url"} {
		if !strings.Contains(got, want) {
			t.Errorf("Secrets() lacks %q", want)
		}
	}
	if strings.Contains(got, "alice") || strings.Contains(got, "n3") {
		t.Errorf("Secrets() lists a user name or host: %q", got)
	}
}

// TestEnvAndLookupAgree: services read the environment with envconfig
// (Load); tools read .env files and maps (LoadFrom). Both must give the
// same configuration, or the same problems, for the same variables.
func TestEnvAndLookupAgree(t *testing.T) {
	cases := []map[string]string{
		required(),
		with(nil, "CACTUS_HS_TOKEN", "CACTUS_USER_ID"),
		with(map[string]string{"CACTUS_CONCURRENCY": "0x10", "CACTUS_PUBLISH_TIMEOUT": "1m30s"}),
		with(map[string]string{"CACTUS_CONCURRENCY": " 16", "CACTUS_PUBLISH_TIMEOUT": "10"}),
		with(map[string]string{"CACTUS_CONCURRENCY": "many", "CACTUS_SHUTDOWN_TIMEOUT": "soon", "CACTUS_NATS_REPLICAS": ""}),
		with(map[string]string{"CACTUS_LOG_LEVEL": "", "CACTUS_BOT_DISPLAY_NAME": ""}),
		with(map[string]string{"CACTUS_HS_TOKEN": "REPLACE_ME", "CACTUS_LISTEN_ADDR": "notanaddr"}),
	}
	for i, vars := range cases {
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			setEnv(t, vars)
			fromEnv, envErr := Load()
			fromMap, mapErr := LoadFrom(func(k string) (string, bool) { v, ok := vars[k]; return v, ok })
			if fmt.Sprint(envErr) != fmt.Sprint(mapErr) {
				t.Fatalf("problems differ:\nenvironment: %v\nlookup:      %v", envErr, mapErr)
			}
			if envErr == nil {
				a, b := reflect.ValueOf(*fromEnv), reflect.ValueOf(*fromMap)
				for i := range a.NumField() {
					if f := a.Type().Field(i); f.IsExported() && a.Field(i).Interface() != b.Field(i).Interface() {
						t.Errorf("%s differs: environment %v, lookup %v", f.Name, a.Field(i).Interface(), b.Field(i).Interface())
					}
				}
			}
		})
	}
}
