package gateway

import (
	"context"
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
		log    string
	}{
		{"synapse reaches us", hssim.Synapse, "cactus", "", pingOK, "the homeserver reaches the gateway"},
		{"dendrite has no ping", hssim.Dendrite, "cactus", "", pingUnsupported, "no appservice ping endpoint"},
		{"wrong url", hssim.Synapse, "cactus", "http://127.0.0.1:9", pingUnreachable, "CANNOT reach"},
		{"no url", hssim.Synapse, "cactus", "null", pingUnreachable, "registration has no url"},
		{"wrong appservice id", hssim.Synapse, "someone-else", "", pingFailed, "CACTUS_APPSERVICE_ID must be"},
		{"no appservice id", hssim.Synapse, "", "", pingSkipped, "startup ping skipped"},
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

			e.gw.PingHomeserver(ctx)
			if got := testutil.ToFloat64(e.gw.metrics.homeserverPinged.WithLabelValues(tt.result)); got != 1 {
				t.Errorf("startup_ping{result=%q} = %v, want 1", tt.result, got)
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
