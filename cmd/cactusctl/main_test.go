package main

import (
	"bytes"
	"context"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/cactus-comments/appservice/cmd/internal/envconf"
	"github.com/cactus-comments/appservice/pkg/registration"
)

type result struct {
	code           int
	stdout, stderr string
}

// ctl runs cactusctl in-process with only the given variables set.
func ctl(t *testing.T, vars map[string]string, args ...string) result {
	t.Helper()
	var out, errb bytes.Buffer
	var environ []string
	for k, v := range vars {
		environ = append(environ, k+"="+v)
	}
	code := run(context.Background(), args, &env{stdout: &out, stderr: &errb, lookup: envconf.Map(vars), environ: func() []string { return environ }})
	return result{code, out.String(), errb.String()}
}

func TestUsage(t *testing.T) {
	tests := []struct {
		args []string
		code int
		in   string // expected in stdout+stderr
	}{
		{nil, exitUsage, "want a command"},
		{[]string{"help"}, exitOK, "registration"},
		{[]string{"--help"}, exitOK, "Usage:"},
		{[]string{"nope"}, exitUsage, `unknown command "nope"`},
		{[]string{"registration", "-h"}, exitOK, "-server-name"},
		{[]string{"registration", "-bogus"}, exitUsage, "unknown shorthand flag: 'b' in -bogus"},
		{[]string{"registration", "--bogus"}, exitUsage, "unknown flag: --bogus"},
		{[]string{"registration"}, exitUsage, "--server-name is required"},
		{[]string{"doctor", "-h"}, exitOK, "-max-lag"},
		{[]string{"dlq"}, exitUsage, "want one of"},
		{[]string{"dlq", "list", "-h"}, exitOK, "-json"},
		{[]string{"dlq", "replay"}, exitUsage, "either --all or sequence numbers"},
		{[]string{"dlq", "replay", "-all", "3"}, exitUsage, "either --all or sequence numbers"},
		{[]string{"dlq", "replay", "x"}, exitUsage, "not a dead letter sequence"},
		{[]string{"dlq", "drop"}, exitUsage, "sequence numbers"},
		{[]string{"sites", "remove"}, exitUsage, "unknown subcommand"},
		{[]string{"registry", "rebuild"}, exitUsage, "CACTUS_HS_TOKEN: required"},
		{[]string{"config"}, exitOK, "CACTUS_NATS_URL"},
		{[]string{"demo"}, exitUsage, "want a step"},
		{[]string{"demo", "-h"}, exitOK, "ban SITE USER"},
		{[]string{"demo", "dance"}, exitUsage, "unknown step"},
		{[]string{"demo", "register"}, exitUsage, "wrong number of arguments"},
		{[]string{"demo", "register", "a", "b"}, exitUsage, "wrong number of arguments"},
		{[]string{"demo", "-data", "/nonexistent", "register", "x"}, exitUsage, "is the dev runner"},
		{[]string{"doctor", "-env", "/nonexistent.env"}, exitUsage, "env file"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			r := ctl(t, nil, tt.args...)
			if r.code != tt.code || !strings.Contains(r.stdout+r.stderr, tt.in) {
				t.Fatalf("exit %d (want %d), output:\n%s%s\nwant it to contain %q", r.code, tt.code, r.stdout, r.stderr, tt.in)
			}
		})
	}
}

func TestRegistrationCommand(t *testing.T) {
	dir := t.TempDir()
	regPath, envPath := filepath.Join(dir, "reg.yaml"), filepath.Join(dir, "cactus.env")
	args := []string{"registration", "-server-name", "example.org", "-gateway-url", "http://gw:8080", "-o", regPath, "-env-out", envPath}
	r := ctl(t, nil, args...)
	if r.code != exitOK {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	reg, err := registration.Load(regPath)
	if err != nil {
		t.Fatal(err)
	}
	hex64 := regexp.MustCompile(`^[0-9a-f]{64}$`)
	if !hex64.MatchString(reg.ASToken) || !hex64.MatchString(reg.HSToken) {
		t.Fatal("tokens are not 64 hex")
	}
	if reg.Namespaces.Users[0].Regex != `@cactusbot:example\.org` || reg.Namespaces.Aliases[0].Regex != `#comments_.*:example\.org` {
		t.Fatalf("namespaces %+v", reg.Namespaces)
	}
	for _, p := range []string{regPath, envPath} {
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != 0o600 {
			t.Fatalf("%s has mode %v, want 0600", p, st.Mode().Perm())
		}
	}
	lookup, err := envconf.File(envPath)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := envconf.Load(lookup)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.ASToken.Reveal() != reg.ASToken || cfg.HSToken.Reveal() != reg.HSToken {
		t.Fatal("env tokens differ from the registration")
	}

	// A second run refuses to replace the files and leaves them intact.
	before, _ := os.ReadFile(regPath)
	r = ctl(t, nil, args...)
	if r.code != exitUsage || !strings.Contains(r.stderr, "--force") {
		t.Fatalf("exit %d, %s", r.code, r.stderr)
	}
	after, _ := os.ReadFile(regPath)
	if !bytes.Equal(before, after) {
		t.Fatal("registration changed without -force")
	}
	// -force writes fresh tokens.
	if r = ctl(t, nil, append(args, "-force")...); r.code != exitOK {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	reg2, err := registration.Load(regPath)
	if err != nil {
		t.Fatal(err)
	}
	if reg2.ASToken == reg.ASToken || reg2.HSToken == reg.HSToken {
		t.Fatal("tokens did not change")
	}
}

func TestRegistrationStdout(t *testing.T) {
	r := ctl(t, nil, "registration", "-server-name", "my_host.example", "-env-out", "", "-prefix", "c_", "-bot-localpart", "bot")
	if r.code != exitOK {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	reg, err := registration.Parse([]byte(r.stdout))
	if err != nil {
		t.Fatalf("%v\n%s", err, r.stdout)
	}
	m, err := reg.Compile(registration.AnchorStart)
	if err != nil {
		t.Fatal(err)
	}
	if ok, _ := m.User("@bot:my_host.example"); !ok {
		t.Fatal("bot not in namespace")
	}
	if ok, _ := m.Alias("#c_site:my_hostXexample"); ok {
		t.Fatal("dot not escaped")
	}
	if strings.Contains(r.stderr, "wrote") && strings.Contains(r.stderr, "env") {
		t.Fatal("env written although -env-out is empty")
	}
}

// TestNATSFilesCheckedBeforeDialling: a credentials or TLS file that
// cannot be read is a configuration error (exit 2, one line naming the
// variable), not a connection failure to retry.
func TestNATSFilesCheckedBeforeDialling(t *testing.T) {
	tests := []struct{ variable, value string }{
		{"CACTUS_NATS_CA", "/nonexistent/ca.pem"},
		{"CACTUS_NATS_CREDS", "/nonexistent/operator.creds"},
		{"CACTUS_NATS_NKEY", "/nonexistent/operator.nk"},
	}
	for _, tt := range tests {
		t.Run(tt.variable, func(t *testing.T) {
			r := ctl(t, map[string]string{"CACTUS_NATS_URL": "nats://127.0.0.1:1", tt.variable: tt.value}, "dlq", "list")
			want := "cactusctl dlq list: configuration: " + tt.variable + ": cannot read the file"
			if r.code != exitUsage || !strings.HasPrefix(r.stderr, want) || strings.Count(r.stderr, "\n") != 1 {
				t.Errorf("exit %d, stderr %q; want %d and one line starting %q", r.code, r.stderr, exitUsage, want)
			}
		})
	}
}

// TestTimeoutBoundsTheHandshake: a NATS address that accepts connections
// and never speaks (a wrong port, a stuck proxy) fails within --timeout,
// in one line an operator can act on.
func TestTimeoutBoundsTheHandshake(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		var held []net.Conn
		defer func() {
			for _, c := range held {
				c.Close()
			}
		}()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			held = append(held, c) // accepted, never answered
		}
	}()
	url := "nats://" + ln.Addr().String()
	r := ctl(t, map[string]string{"CACTUS_NATS_URL": url}, "dlq", "list", "--timeout", "1s")
	want := "cactusctl dlq list: NATS at " + url + " did not answer within 1s"
	if r.code != exitFailed || !strings.HasPrefix(r.stderr, want) || strings.Count(r.stderr, "\n") != 1 {
		t.Errorf("exit %d, stderr %q; want %d and one line starting %q", r.code, r.stderr, exitFailed, want)
	}
}

// TestWarnsAboutMisspeltVariables: a misspelt name in the environment or
// the --env file is warned about once, as the services do, since it would
// otherwise leave a default in force without a word.
func TestWarnsAboutMisspeltVariables(t *testing.T) {
	envFile := filepath.Join(t.TempDir(), "cactus.env")
	if err := os.WriteFile(envFile, []byte("CACTUS_NATS_URL=nats://127.0.0.1:1\nCACTUS_NATS_TOPOLGY=check\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r := ctl(t, map[string]string{"CACTUS_LOGLEVEL": "debug", "CACTUS_DEV_DATA": "/tmp"}, "doctor", "--env", envFile, "--timeout", "1s")
	want := []string{
		"cactusctl: warning: CACTUS_LOGLEVEL is not a variable the services read; did you mean CACTUS_LOG_LEVEL?\n",
		"cactusctl: warning: " + envFile + ": CACTUS_NATS_TOPOLGY is not a variable the services read; did you mean CACTUS_NATS_TOPOLOGY?\n",
	}
	for _, w := range want {
		if strings.Count(r.stderr, w) != 1 {
			t.Errorf("stderr does not say once %q:\n%s", w, r.stderr)
		}
	}
	if strings.Contains(r.stderr, "CACTUS_DEV_DATA") {
		t.Errorf("warned about a dev runner variable:\n%s", r.stderr)
	}
}

// TestRegistrationEnvNextToIt: the environment file goes next to the
// registration unless --env-out names another place.
func TestRegistrationEnvNextToIt(t *testing.T) {
	cwd, dir := t.TempDir(), t.TempDir()
	t.Chdir(cwd)
	r := ctl(t, nil, "registration", "--server-name", "example.org", "-o", filepath.Join(dir, "reg.yaml"))
	if r.code != exitOK {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	if _, err := os.Stat(filepath.Join(dir, "cactus.env")); err != nil {
		t.Errorf("no cactus.env next to the registration: %v", err)
	}
	if _, err := os.Stat(filepath.Join(cwd, "cactus.env")); err == nil {
		t.Error("cactus.env written to the working directory")
	}
	other := filepath.Join(t.TempDir(), "services.env")
	r = ctl(t, nil, "registration", "--server-name", "example.org", "-o", filepath.Join(dir, "reg2.yaml"), "--env-out", other)
	if _, err := os.Stat(other); r.code != exitOK || err != nil {
		t.Errorf("exit %d, %v: --env-out not honoured: %s", r.code, err, r.stderr)
	}
}
