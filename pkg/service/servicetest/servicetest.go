// Package servicetest checks, for any service's Run, what every service
// owes the probes and scrapes of its orchestrator.
package servicetest

import (
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/cactus-comments/appservice/pkg/config"
	"github.com/cactus-comments/appservice/pkg/embednats"
)

// AdminWhileWaitingForNATS runs run with cfg pointed at a NATS server
// that has stopped and checks that the service is alive, says it waits for
// NATS, and can be scraped (cactus_service_ready 0), instead of refusing
// the probes that would then restart it. It stops run before returning.
func AdminWhileWaitingForNATS(t *testing.T, cfg *config.Config, run func(context.Context, *config.Config) error) {
	t.Helper()
	ln := stoppedNATS(t, cfg)
	_ = ln.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- run(ctx, cfg) }()

	admin := "http://" + cfg.AdminAddr
	get := func(path string) (int, string) {
		resp, err := http.Get(admin + path)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		code, body := get("/readyz")
		if code == http.StatusServiceUnavailable && strings.HasPrefix(body, "waiting for NATS at "+cfg.NATSURL) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz = %d %q, want 503 waiting for NATS", code, body)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if code, body := get("/livez"); code != http.StatusOK {
		t.Errorf("/livez = %d %q while waiting for NATS", code, body)
	}
	if code, body := get("/metrics"); code != http.StatusOK || !strings.Contains(body, "\ncactus_service_ready 0\n") || !strings.Contains(body, "cactus_build_info{") {
		t.Errorf("/metrics = %d while waiting for NATS:\n%.2000s", code, body)
	}
	cancel()
	select {
	case <-done:
	case <-time.After(time.Minute):
		t.Fatal("Run did not return after its context ended")
	}
}

// AdminPortTaken runs run with its admin address taken and NATS down:
// the service fails at once, naming the address, rather than waiting for
// NATS without its probes.
func AdminPortTaken(t *testing.T, cfg *config.Config, run func(context.Context, *config.Config) error) {
	t.Helper()
	ln := stoppedNATS(t, cfg)
	defer ln.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- run(ctx, cfg) }()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), cfg.AdminAddr) {
			t.Fatalf("Run = %v, want the taken admin address %s", err, cfg.AdminAddr)
		}
	case <-time.After(time.Minute):
		t.Fatal("Run waited for NATS with its admin address taken")
	}
}

// stoppedNATS points cfg at a NATS server that has stopped, and its admin
// address at a port of its own, listened on until the caller closes it.
func stoppedNATS(t *testing.T, cfg *config.Config) net.Listener {
	t.Helper()
	ns := embednats.StartTest(t)
	cfg.NATSURL = ns.ClientURL()
	ns.Stop()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg.AdminAddr = ln.Addr().String()
	return ln
}
