package service

import (
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/cactus-comments/appservice/pkg/bus"
	"github.com/cactus-comments/appservice/pkg/config"
	"github.com/cactus-comments/appservice/pkg/embednats"
	"github.com/cactus-comments/appservice/pkg/logging"
)

// serveAdmin serves rt's admin handler on a port of its own until the
// test ends and returns its base URL.
func serveAdmin(t *testing.T, rt *Runtime) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	addr := make(chan net.Addr, 1)
	done := make(chan error, 1)
	go func() {
		done <- Serve(ctx, "127.0.0.1:0", rt.AdminHandler(), 2*time.Second, logging.Discard(), func(a net.Addr) { addr <- a })
	}()
	t.Cleanup(func() { cancel(); <-done })
	select {
	case a := <-addr:
		return "http://" + a.String()
	case err := <-done:
		t.Fatal(err)
	}
	return ""
}

func fetch(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

// waitReadyz polls /readyz until its body contains want.
func waitReadyz(t *testing.T, base, want string) string {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		code, body := fetch(t, base+"/readyz")
		if strings.Contains(body, want) {
			if code != http.StatusServiceUnavailable {
				t.Errorf("/readyz = %d %q, want 503", code, body)
			}
			return body
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz = %d %q, never said %q", code, body, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// checkStarting checks what probes and scrapes see of a runtime not ready
// yet: alive, not ready, and scrapeable.
func checkStarting(t *testing.T, base string) {
	t.Helper()
	if code, body := fetch(t, base+"/livez"); code != 200 || body != "ok\n" {
		t.Errorf("/livez = %d %q, want 200 while waiting", code, body)
	}
	code, body := fetch(t, base+"/metrics")
	if code != 200 || !strings.Contains(body, "\ncactus_service_ready 0\n") || !strings.Contains(body, "cactus_build_info{") {
		t.Errorf("/metrics = %d, want cactus_service_ready 0 and cactus_build_info:\n%.2000s", code, body)
	}
}

func TestAdminAnswersWhileWaitingForNATS(t *testing.T) {
	srv := embednats.StartTest(t)
	url := srv.ClientURL()
	srv.Stop()
	cfg := loadConfig(t, url)
	rt := New("test", cfg, logging.Discard())
	base := serveAdmin(t, rt)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	connected := make(chan error, 1)
	go func() { connected <- rt.Connect(ctx) }()

	body := waitReadyz(t, base, "waiting for NATS at "+url)
	if strings.Count(body, "\n") != 1 {
		t.Errorf("/readyz reason is not one line: %q", body)
	}
	checkStarting(t, base)

	// NATS comes: the runtime connects and waits for the service.
	srv2, err := srv.Restart()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv2.Shutdown)
	if err := <-connected; err != nil {
		t.Fatalf("Connect after NATS came: %v", err)
	}
	defer rt.NC.Close()
	if code, body := fetch(t, base+"/readyz"); code != http.StatusServiceUnavailable || body != "not ready\n" {
		t.Errorf("/readyz connected, service not started = %d %q", code, body)
	}
	rt.SetReady(true)
	if code, body := fetch(t, base+"/readyz"); code != 200 || body != "ok\n" {
		t.Errorf("/readyz ready = %d %q", code, body)
	}
}

func TestAdminAnswersWhileWaitingForTopology(t *testing.T) {
	srv := embednats.StartTest(t)
	env := baseEnv(srv.ClientURL())
	env["CACTUS_NATS_TOPOLOGY"] = "check"
	setEnv(t, env)
	cfg, err := config.Load()
	if err != nil {
		t.Fatal(err)
	}
	rt := New(string(bus.Botworker), cfg, logging.Discard())
	base := serveAdmin(t, rt)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	connected := make(chan error, 1)
	go func() { connected <- rt.Connect(ctx) }()

	body := waitReadyz(t, base, "waiting for the NATS topology")
	if strings.Count(body, "\n") != 1 || !strings.Contains(body, "stream "+bus.StreamDLQ) {
		t.Errorf("/readyz = %q, want one line naming the missing stream", body)
	}
	checkStarting(t, base)

	// The operator creates the topology: the runtime goes on.
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if err := Topology(cfg).Ensure(ctx, js); err != nil {
		t.Fatal(err)
	}
	if err := <-connected; err != nil {
		t.Fatalf("Connect after the topology came: %v", err)
	}
	rt.NC.Close()
}
