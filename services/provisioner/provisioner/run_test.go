package provisioner

import (
	"context"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/cactus-comments/appservice/pkg/config"
	"github.com/cactus-comments/appservice/pkg/embednats"
	"github.com/cactus-comments/appservice/pkg/hssim"
	"github.com/cactus-comments/appservice/pkg/registration"
)

// freeAddr is a local address nothing listens on now.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// status is the HTTP status of GET url, 0 if nothing answers.
func status(url string) int {
	resp, err := http.Get(url)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// waitStatus polls url until it answers want: readiness is only visible
// over HTTP.
func waitStatus(t *testing.T, url string, want int) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for status(url) != want {
		if time.Now().After(deadline) {
			t.Fatalf("%s never answered %d", url, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestRunWaitsForTheHomeserver: a provisioner started before its
// homeserver (as compose and Kubernetes may start them) is alive, not
// ready, and keeps trying to set up the bot until the homeserver answers;
// it does not exit.
func TestRunWaitsForTheHomeserver(t *testing.T) {
	ns := embednats.StartTest(t)
	hsAddr, adminAddr := freeAddr(t), freeAddr(t)
	const (
		hsToken = "hs-token-for-provisioner-run-test-0123456789"
		asToken = "as-token-for-provisioner-run-test-0123456789"
	)
	env := map[string]string{
		"CACTUS_HS_TOKEN": hsToken, "CACTUS_AS_TOKEN": asToken,
		"CACTUS_HOMESERVER_URL": "http://" + hsAddr, "CACTUS_USER_ID": "@cactusbot:example.org",
		"CACTUS_NATS_URL": ns.ClientURL(), "CACTUS_ADMIN_ADDR": adminAddr,
		"CACTUS_LOG_LEVEL": "error", "CACTUS_SHUTDOWN_TIMEOUT": "5s", "CACTUS_HOMESERVER_TIMEOUT": "2s",
	}
	cfg, err := config.LoadFrom(func(k string) (string, bool) { v, ok := env[k]; return v, ok })
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- Run(ctx, cfg) }()

	admin := "http://" + adminAddr
	waitStatus(t, admin+"/livez", http.StatusOK)
	if got := status(admin + "/readyz"); got != http.StatusServiceUnavailable {
		t.Fatalf("/readyz = %d without a homeserver, want 503", got)
	}
	select {
	case err := <-done:
		t.Fatalf("Run returned while the homeserver was down: %v", err)
	default:
	}

	url := ""
	reg := &registration.Registration{
		ID: "cactus", URL: &url, ASToken: asToken, HSToken: hsToken, SenderLocalpart: "cactusbot",
		Namespaces: registration.Namespaces{Users: []registration.Namespace{{Exclusive: true, Regex: `@cactusbot:example\.org`}}},
	}
	hs, err := hssim.Start(ctx, hssim.Options{ServerName: "example.org", Addr: hsAddr, Registrations: []*registration.Registration{reg}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = hs.Close() })
	waitStatus(t, admin+"/readyz", http.StatusOK)
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run = %v after a clean stop", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("Run did not return after its context ended")
	}
}
