package gateway

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/cactus-comments/appservice/pkg/config"
	"github.com/cactus-comments/appservice/pkg/hssim"
	"github.com/cactus-comments/appservice/pkg/registration"
)

// TestStartupPing: the gateway asks the homeserver to ping it and logs
// whether the homeserver reaches it.
func TestStartupPing(t *testing.T) {
	tests := []struct {
		name   string
		mode   hssim.Mode
		id     string // CACTUS_APPSERVICE_ID
		url    string // registration url: "" means the gateway's, "null" none, else as is
		result string
		final  bool
		log    string
	}{
		{"synapse reaches us", hssim.Synapse, "cactus", "", pingOK, true, "the homeserver reaches the gateway"},
		{"dendrite has no ping", hssim.Dendrite, "cactus", "", pingUnsupported, true, "no appservice ping endpoint"},
		{"continuwuity reaches us", hssim.Conduit, "cactus", "", pingOK, true, "the homeserver reaches the gateway"},
		{"continuwuity: wrong url", hssim.Conduit, "cactus", "http://127.0.0.1:9", pingUnreachable, false, "could not ping the gateway"},
		{"continuwuity: no url", hssim.Conduit, "cactus", "null", pingUnreachable, false, "registration has no url"},
		{"continuwuity: wrong appservice id", hssim.Conduit, "someone-else", "", pingFailed, true, "CACTUS_APPSERVICE_ID must be"},
		{"wrong url", hssim.Synapse, "cactus", "http://127.0.0.1:9", pingUnreachable, false, "CANNOT reach"},
		{"no url", hssim.Synapse, "cactus", "null", pingUnreachable, false, "registration has no url"},
		{"wrong appservice id", hssim.Synapse, "someone-else", "", pingFailed, true, "CACTUS_APPSERVICE_ID must be"},
		{"no appservice id", hssim.Synapse, "", "", pingSkipped, true, "startup ping skipped"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, withConfig(func(c *config.Config) { c.AppserviceID = tt.id }))
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			reg := &registration.Registration{
				ID: "cactus", ASToken: testASToken, HSToken: testHSToken, SenderLocalpart: "cactusbot",
				Namespaces: registration.Namespaces{Users: []registration.Namespace{{Exclusive: true, Regex: `@cactusbot:example\.org`}}},
			}
			switch tt.url {
			case "":
				reg.URL = &e.srv.URL
			case "null":
			default:
				reg.URL = &tt.url
			}
			hs, err := hssim.Start(ctx, hssim.Options{ServerName: "example.org", Mode: tt.mode, TimeUnit: time.Millisecond,
				QueryTimeout: 20 * time.Second, Registrations: []*registration.Registration{reg}})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = hs.Close() })
			e.gw.cfg.HomeserverURL = hs.URL()

			if result, final := e.gw.pingOnce(ctx, 1); result != tt.result || final != tt.final {
				t.Errorf("ping = %s (final %v), want %s (final %v)", result, final, tt.result, tt.final)
			}
			logs := e.logs.String()
			if !strings.Contains(logs, tt.log) {
				t.Errorf("logs do not say %q:\n%s", tt.log, logs)
			}
			if tt.result == pingOK && !strings.Contains(logs, "ping from the homeserver") {
				t.Errorf("the homeserver's ping did not reach the gateway:\n%s", logs)
			}
			if strings.Contains(logs, testASToken) || strings.Contains(logs, testHSToken) {
				t.Error("a token reached the logs")
			}
		})
	}
}

// TestStartupPingRetriesUntilTheHomeserverIsUp: started before the
// homeserver, as compose starts it, the gateway keeps asking with backoff
// and the gauge follows: pending, then homeserver_down while nothing
// answers, then ok once the homeserver reaches it.
func TestStartupPingRetriesUntilTheHomeserverIsUp(t *testing.T) {
	e := newEnv(t, withConfig(func(c *config.Config) { c.AppserviceID = "cactus" }))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // the homeserver's port, with nothing listening yet
	e.gw.cfg.HomeserverURL = "http://" + addr
	e.gw.pingRetry = pingRetry{first: time.Millisecond, max: 50 * time.Millisecond, giveUp: time.Hour, attempt: 20 * time.Second}
	gauge := func(r string) float64 { return testutil.ToFloat64(e.gw.metrics.homeserverPinged.WithLabelValues(r)) }
	for _, r := range pingResults {
		if gauge(r) != 0 {
			t.Fatalf("startup_ping{result=%q} = %v before the ping began, want 0", r, gauge(r))
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	done := make(chan struct{})
	go func() { defer close(done); e.gw.PingHomeserver(ctx) }()
	waitFor(t, "startup_ping{result=homeserver_down} = 1", func() bool { return gauge(pingHomeserverDown) == 1 })
	if gauge(pingPending) != 0 || gauge(pingOK) != 0 {
		t.Fatal("more than one state is 1")
	}

	reg := &registration.Registration{
		ID: "cactus", URL: &e.srv.URL, ASToken: testASToken, HSToken: testHSToken, SenderLocalpart: "cactusbot",
		Namespaces: registration.Namespaces{Users: []registration.Namespace{{Exclusive: true, Regex: `@cactusbot:example\.org`}}},
	}
	hs, err := hssim.Start(ctx, hssim.Options{ServerName: "example.org", Addr: addr, TimeUnit: time.Millisecond,
		QueryTimeout: 20 * time.Second, Registrations: []*registration.Registration{reg}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = hs.Close() })
	select {
	case <-done:
	case <-ctx.Done():
		t.Fatal("the ping did not stop retrying once the homeserver answered")
	}
	for _, r := range pingResults {
		if want := map[bool]float64{true: 1}[r == pingOK]; gauge(r) != want {
			t.Errorf("startup_ping{result=%q} = %v, want %v", r, gauge(r), want)
		}
	}
	if !strings.Contains(e.logs.String(), "ping from the homeserver") {
		t.Errorf("the homeserver's ping did not reach the gateway:\n%s", e.logs.String())
	}
}
