package service

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/cactus-comments/appservice/pkg/buildinfo"
	"github.com/cactus-comments/appservice/pkg/bus"
	"github.com/cactus-comments/appservice/pkg/config"
	"github.com/cactus-comments/appservice/pkg/embednats"
	"github.com/cactus-comments/appservice/pkg/logging"
	"github.com/cactus-comments/appservice/pkg/matrix"
	"github.com/cactus-comments/appservice/pkg/worker"
)

const asToken = "as-token-for-service-tests-0123456789"

// setEnv clears every CACTUS_* variable for the test, then sets vars.
func setEnv(t *testing.T, vars map[string]string) {
	t.Helper()
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, config.Prefix+"_") {
			t.Setenv(k, "")
			if err := os.Unsetenv(k); err != nil {
				t.Fatal(err)
			}
		}
	}
	for k, v := range vars {
		t.Setenv(k, v)
	}
}

func baseEnv(natsURL string) map[string]string {
	return map[string]string{
		"CACTUS_HS_TOKEN":         "hs-token-for-service-tests-0123456789",
		"CACTUS_AS_TOKEN":         asToken,
		"CACTUS_HOMESERVER_URL":   "http://127.0.0.1:1",
		"CACTUS_USER_ID":          "@cactusbot:example.org",
		"CACTUS_NATS_URL":         natsURL,
		"CACTUS_SHUTDOWN_TIMEOUT": "2s",
		"CACTUS_RETRY_HORIZON":    "1h",
	}
}

func loadConfig(t *testing.T, natsURL string) *config.Config {
	t.Helper()
	setEnv(t, baseEnv(natsURL))
	cfg, err := config.Load()
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func startRuntime(t *testing.T) (*Runtime, *embednats.Server) {
	t.Helper()
	srv := embednats.StartTest(t)
	cfg := loadConfig(t, srv.ClientURL())
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	rt, err := Start(ctx, "test", cfg, logging.Discard())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rt.NC.Close() })
	return rt, srv
}

func get(t *testing.T, h http.Handler, path string) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	return rec.Code, rec.Body.String()
}

func TestStartEnsuresTopology(t *testing.T) {
	rt, _ := startRuntime(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	topo := Topology(rt.Config)
	if err := topo.Check(ctx, rt.JS); err != nil {
		t.Fatalf("topology not ensured: %v", err)
	}
	c, err := rt.JS.Consumer(ctx, bus.StreamEvents, bus.ConsumerModeration)
	if err != nil {
		t.Fatal(err)
	}
	if got := c.CachedInfo().Config.MaxDeliver; got != -1 {
		t.Errorf("consumer MaxDeliver = %d, want -1: workers decide when to give up", got)
	}
	if rt.Name != "test" || rt.Metrics == nil || rt.Log == nil {
		t.Errorf("runtime %+v", rt)
	}
}

func TestStartFailsWithoutNATS(t *testing.T) {
	srv := embednats.StartTest(t)
	url := srv.ClientURL()
	srv.Stop()
	cfg := loadConfig(t, url)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if _, err := Start(ctx, "test", cfg, logging.Discard()); err == nil {
		t.Fatal("Start succeeded without NATS")
	}
}

func TestAdminHandler(t *testing.T) {
	rt, srv := startRuntime(t)
	h := rt.AdminHandler()

	if code, body := get(t, h, "/livez"); code != 200 || body != "ok\n" {
		t.Errorf("/livez = %d %q", code, body)
	}
	if code, _ := get(t, h, "/readyz"); code != http.StatusServiceUnavailable {
		t.Errorf("/readyz before SetReady = %d, want 503", code)
	}
	rt.SetReady(true)
	if code, body := get(t, h, "/readyz"); code != 200 || body != "ok\n" {
		t.Errorf("/readyz when ready = %d %q", code, body)
	}
	code, body := get(t, h, "/metrics")
	if code != 200 || !strings.Contains(body, "go_goroutines") || !strings.Contains(body, "go_gc_duration_seconds") || !strings.Contains(body, "cactus_build_info{") {
		t.Errorf("/metrics = %d, missing go_ metrics:\n%.500s", code, body)
	}
	if strings.Contains(body, asToken) {
		t.Error("/metrics reveals the as_token")
	}
	if code, _ := get(t, h, "/nope"); code != http.StatusNotFound {
		t.Errorf("/nope = %d", code)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/livez", nil))
	if rec.Code != http.StatusMethodNotAllowed {
		t.Errorf("POST /livez = %d", rec.Code)
	}

	// NATS goes away: not ready, though the service still says it is.
	srv.Stop()
	deadline := time.Now().Add(10 * time.Second)
	for {
		code, body := get(t, h, "/readyz")
		if code == http.StatusServiceUnavailable {
			if !strings.Contains(body, "nats") {
				t.Errorf("/readyz body %q does not say why", body)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("/readyz stayed 200 with NATS down")
		}
		time.Sleep(10 * time.Millisecond)
	}
	rt.SetReady(false)
	if code, body := get(t, h, "/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "not ready") {
		t.Errorf("/readyz after SetReady(false) = %d %q", code, body)
	}
}

func TestServeShutsDownWhenContextEnds(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	addrc := make(chan net.Addr, 1)
	done := make(chan error, 1)
	h := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "hello") })
	go func() {
		done <- Serve(ctx, "127.0.0.1:0", h, 2*time.Second, logging.Discard(), func(a net.Addr) { addrc <- a })
	}()
	addr := <-addrc
	resp, err := http.Get("http://" + addr.String() + "/")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(b) != "hello" {
		t.Fatalf("served %q", b)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Serve = %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after its context ended")
	}
	if _, err := net.Dial("tcp", addr.String()); err == nil {
		t.Fatal("still listening after Serve returned")
	}
}

func TestServeBadAddress(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	err = Serve(context.Background(), ln.Addr().String(), http.NotFoundHandler(), time.Second, logging.Discard(), nil)
	if err == nil || !strings.Contains(err.Error(), ln.Addr().String()) {
		t.Fatalf("Serve on a taken port = %v", err)
	}
}

func TestMainHelp(t *testing.T) {
	setEnv(t, nil)
	vars, err := config.Variables()
	if err != nil {
		t.Fatal(err)
	}
	for _, flag := range []string{"-h", "-help", "--help"} {
		var out bytes.Buffer
		called := false
		code := Main("svc", []string{flag}, &out, func(context.Context, *config.Config) error { called = true; return nil })
		if code != 0 || called {
			t.Fatalf("Main(%s) = %d, run called %v", flag, code, called)
		}
		for _, v := range vars {
			if !strings.Contains(out.String(), v.Name) {
				t.Errorf("Main(%s) does not list %s", flag, v.Name)
			}
		}
	}
}

func TestMainVersion(t *testing.T) {
	setEnv(t, nil) // no configuration needed
	for _, flag := range []string{"-version", "--version"} {
		var out bytes.Buffer
		called := false
		code := Main("svc", []string{flag}, &out, func(context.Context, *config.Config) error { called = true; return nil })
		if want := "svc " + buildinfo.Get().String() + "\n"; code != 0 || called || out.String() != want {
			t.Fatalf("Main(%s) = %d, run called %v, printed %q; want 0 and %q", flag, code, called, out.String(), want)
		}
	}
}

func TestMainExitCodes(t *testing.T) {
	tests := []struct {
		name    string
		env     map[string]string
		args    []string
		runErr  error
		code    int
		stderr  string // substring; "" means empty output
		runs    bool
		oneLine bool
	}{
		{"ok", baseEnv("nats://127.0.0.1:1"), nil, nil, 0, "", true, false},
		{"run fails", baseEnv("nats://127.0.0.1:1"), nil, errors.New("boom"), 1, `"err":"boom"`, true, true},
		{"unexpected argument", baseEnv("nats://127.0.0.1:1"), []string{"serve"}, nil, 2, "unexpected arguments", false, true},
		{"missing variable", func() map[string]string { m := baseEnv("nats://127.0.0.1:1"); delete(m, "CACTUS_USER_ID"); return m }(), nil, nil, 2, "CACTUS_USER_ID", false, true},
		{"invalid variable", func() map[string]string { m := baseEnv("nats://127.0.0.1:1"); m["CACTUS_LOG_LEVEL"] = "loud"; return m }(), nil, nil, 2, "CACTUS_LOG_LEVEL", false, true},
		{"missing CA file", func() map[string]string {
			m := baseEnv("tls://127.0.0.1:1")
			m["CACTUS_NATS_CA"] = "/nonexistent/ca.pem"
			return m
		}(), nil, nil, 2, "svc: configuration: CACTUS_NATS_CA: cannot read the file", false, true},
		{"missing credentials file", func() map[string]string {
			m := baseEnv("nats://127.0.0.1:1")
			m["CACTUS_NATS_CREDS"] = "/nonexistent/gateway.creds"
			return m
		}(), nil, nil, 2, "svc: configuration: CACTUS_NATS_CREDS: cannot read the file", false, true},
		{"user without password", func() map[string]string {
			m := baseEnv("nats://127.0.0.1:1")
			m["CACTUS_NATS_USER"] = "gateway"
			return m
		}(), nil, nil, 2, "svc: configuration: CACTUS_NATS_PASSWORD: required", false, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			setEnv(t, tt.env)
			var out bytes.Buffer
			ran := false
			code := Main("svc", tt.args, &out, func(ctx context.Context, cfg *config.Config) error {
				ran = true
				if ctx.Err() != nil || cfg.Bot().String() != "@cactusbot:example.org" {
					t.Errorf("run got ctx %v, cfg %+v", ctx.Err(), cfg)
				}
				return tt.runErr
			})
			if code != tt.code || ran != tt.runs {
				t.Fatalf("Main = %d (run called %v), want %d (%v); stderr %q", code, ran, tt.code, tt.runs, out.String())
			}
			if tt.stderr == "" && out.Len() != 0 || !strings.Contains(out.String(), tt.stderr) {
				t.Fatalf("stderr %q, want it to contain %q", out.String(), tt.stderr)
			}
			if tt.oneLine && strings.Count(out.String(), "\n") != 1 {
				t.Fatalf("stderr is not one line: %q", out.String())
			}
			if strings.Contains(out.String(), asToken) {
				t.Fatal("stderr reveals the as_token")
			}
		})
	}
}

// TestMainReportsEveryProblemBeforeConnecting: bad values are refused with
// exit 2, all at once and one line each, before anything is dialled; a
// misspelt variable is warned about.
func TestMainReportsEveryProblemBeforeConnecting(t *testing.T) {
	env := baseEnv("http://127.0.0.1:1")
	delete(env, "CACTUS_USER_ID")
	delete(env, "CACTUS_HS_TOKEN")
	env["CACTUS_AS_TOKEN"] = "REPLACE_ME"
	env["CACTUS_LISTEN_ADDR"] = "notanaddr"
	env["CACTUS_LOGLEVEL"] = "debug"
	setEnv(t, env)
	var out bytes.Buffer
	ran := false
	code := Main("svc", nil, &out, func(context.Context, *config.Config) error { ran = true; return nil })
	if code != 2 || ran {
		t.Fatalf("Main = %d, run called %v; want 2 without running", code, ran)
	}
	lines := strings.Split(strings.TrimRight(out.String(), "\n"), "\n")
	want := []string{
		"svc: warning: CACTUS_LOGLEVEL is not a variable the services read; did you mean CACTUS_LOG_LEVEL?",
		"svc: configuration: CACTUS_HS_TOKEN: required but not set",
		"svc: configuration: CACTUS_AS_TOKEN: is a placeholder",
		"svc: configuration: CACTUS_USER_ID: required but not set",
		"svc: configuration: CACTUS_NATS_URL: ",
		"svc: configuration: CACTUS_LISTEN_ADDR: ",
	}
	if len(lines) != len(want) {
		t.Fatalf("stderr has %d lines, want %d:\n%s", len(lines), len(want), out.String())
	}
	for i, w := range want {
		if !strings.HasPrefix(lines[i], w) {
			t.Errorf("line %d = %q, want it to start with %q", i+1, lines[i], w)
		}
	}
}

func TestCloseDrains(t *testing.T) {
	rt, _ := startRuntime(t)
	rt.Close()
	if !rt.NC.IsClosed() {
		t.Fatal("connection still open after Close")
	}
	rt.Close() // idempotent
}

func TestConnOptionsRevealSecretsOnlyToNATS(t *testing.T) {
	setEnv(t, map[string]string{
		"CACTUS_HS_TOKEN": "h1234567-0123456789abcdef0123456789", "CACTUS_AS_TOKEN": "a1234567-0123456789abcdef0123456789",
		"CACTUS_HOMESERVER_URL": "http://hs", "CACTUS_USER_ID": "@b:x",
		"CACTUS_NATS_USER": "u", "CACTUS_NATS_PASSWORD": "natspass",
		"CACTUS_NATS_CERT": "/c", "CACTUS_NATS_KEY": "/k", "CACTUS_NATS_CA": "/ca",
	})
	cfg, err := config.Load()
	if err != nil {
		t.Fatal(err)
	}
	o := ConnOptions(cfg, "gateway")
	if o.Name != "cactus-gateway" || o.User != "u" || o.Password != "natspass" || o.Token != "" || o.Cert != "/c" || o.Key != "/k" || o.CA != "/ca" {
		t.Fatalf("ConnOptions = %+v", o)
	}
	topo := Topology(cfg)
	if topo.Replicas != 1 {
		t.Fatalf("Topology = %+v", topo)
	}
}

func TestReadyChecks(t *testing.T) {
	rt, _ := startRuntime(t)
	h := rt.AdminHandler()
	rt.SetReady(true)
	var failing atomic.Bool
	rt.AddReadyCheck(func() error {
		if failing.Load() {
			return errors.New("jetstream does not acknowledge")
		}
		return nil
	})
	if code, body := get(t, h, "/readyz"); code != http.StatusOK {
		t.Fatalf("/readyz with a passing check = %d %q", code, body)
	}
	failing.Store(true)
	if code, body := get(t, h, "/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "does not acknowledge") {
		t.Fatalf("/readyz with a failing check = %d %q", code, body)
	}
	failing.Store(false)
	if code, _ := get(t, h, "/readyz"); code != http.StatusOK {
		t.Fatalf("/readyz after the check recovered = %d", code)
	}
}

// A worker whose homeserver does not answer says so on /readyz, staying
// ready, and in its status report; both clear once the homeserver answers.
func TestReportWorker(t *testing.T) {
	rt, _ := startRuntime(t)
	rt.SetReady(true)
	reg := prometheus.NewRegistry()
	hs := matrix.NewMetrics(reg)
	ctx, cancel := context.WithCancel(context.Background())
	rt.ReportWorker(ctx, WorkerHealth{Homeserver: hs, Worker: worker.NewMetrics(reg)})
	h := rt.AdminHandler()
	if code, body := get(t, h, "/readyz"); code != 200 || body != "ok\n" {
		t.Fatalf("/readyz = %d %q", code, body)
	}
	hs.Observe("ban", 0, time.Millisecond)
	code, body := get(t, h, "/readyz")
	if code != 200 || !strings.HasPrefix(body, "ok\nhomeserver unreachable since ") || !strings.Contains(body, "no response") {
		t.Fatalf("/readyz while the homeserver does not answer = %d %q", code, body)
	}
	kv, err := rt.JS.KeyValue(ctx, bus.BucketStatus)
	if err != nil {
		t.Fatal(err)
	}
	key := bus.StatusKey(rt.Name, rt.Instance())
	deadline := time.Now().Add(2 * bus.StatusEvery)
	for {
		e, err := kv.Get(ctx, key)
		if err == nil {
			var s bus.Status
			if err := json.Unmarshal(e.Value(), &s); err != nil {
				t.Fatal(err)
			}
			if s.HomeserverUnreachableSince != nil && s.Service == rt.Name {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no status report saying the homeserver is unreachable: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	hs.Observe("ban", 200, time.Millisecond)
	if _, body := get(t, h, "/readyz"); body != "ok\n" {
		t.Fatalf("/readyz after the homeserver answered = %q", body)
	}
	cancel()
	for deadline := time.Now().Add(10 * time.Second); ; {
		if _, err := kv.Get(context.Background(), key); errors.Is(err, jetstream.ErrKeyNotFound) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("status report left behind after the worker stopped")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestMainLogsThroughTheLogger: with JSON logs, the misspelt-variable
// warning and the error the service stopped with are JSON lines a log
// pipeline can read, the error once and named once.
func TestMainLogsThroughTheLogger(t *testing.T) {
	env := baseEnv("nats://127.0.0.1:1")
	env["CACTUS_LOG_FORMAT"] = "json"
	env["CACTUS_LOGLEVEL"] = "debug"
	setEnv(t, env)
	var out bytes.Buffer
	code := Main("svc", nil, &out, func(context.Context, *config.Config) error {
		return errors.New("set up bot user: homeserver said no")
	})
	if code != 1 {
		t.Fatalf("Main = %d, want 1", code)
	}
	lines := strings.Split(strings.TrimRight(out.String(), "\n"), "\n")
	if len(lines) != 2 {
		t.Fatalf("stderr has %d lines, want the warning and the error:\n%s", len(lines), out.String())
	}
	var warn, fatal map[string]any
	for i, into := range []*map[string]any{&warn, &fatal} {
		if err := json.Unmarshal([]byte(lines[i]), into); err != nil {
			t.Fatalf("line %d is not JSON: %q", i+1, lines[i])
		}
		if (*into)["service"] != "svc" {
			t.Errorf("line %d has no service: %q", i+1, lines[i])
		}
	}
	if warn["level"] != "WARN" || !strings.Contains(fmt.Sprint(warn["msg"]), "did you mean CACTUS_LOG_LEVEL?") {
		t.Errorf("warning = %q", lines[0])
	}
	if fatal["level"] != "ERROR" || fatal["err"] != "set up bot user: homeserver said no" || strings.Contains(lines[1], "svc:") {
		t.Errorf("fatal error = %q", lines[1])
	}
}
