package botworker

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/cactus-comments/appservice/pkg/config"
	"github.com/cactus-comments/appservice/pkg/embednats"
	"github.com/cactus-comments/appservice/pkg/hssim"
	"github.com/cactus-comments/appservice/pkg/registration"
)

// Run against the homeserver simulator: the bot user is registered with
// its profile, the service stops cleanly when its context ends, and a
// restart does not write the unchanged profile again (every profile write
// sends a member event into every room the bot is in).
func TestRunSetsUpBotUser(t *testing.T) {
	ns := embednats.StartTest(t)
	url := ""
	reg := &registration.Registration{
		ID: "cactus", URL: &url, ASToken: testASToken, HSToken: testHSToken, SenderLocalpart: "cactusbot",
		Namespaces: registration.Namespaces{
			Users:   []registration.Namespace{{Exclusive: true, Regex: `@cactusbot:example\.org`}},
			Aliases: []registration.Namespace{{Exclusive: true, Regex: "#comments_.*"}},
		},
	}
	hs, err := hssim.Start(t.Context(), hssim.Options{ServerName: server, Registrations: []*registration.Registration{reg}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = hs.Close() })
	cfg := testConfig(t, ns.ClientURL(), func(c *config.Config) {
		c.HomeserverURL = hs.URL()
		c.BotAvatarURL = "mxc://example.org/cactus"
	})

	runOnce := func() {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		cfg.AdminAddr = ln.Addr().String()
		_ = ln.Close()
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		go func() { done <- Run(ctx, cfg) }()
		// Ready means set up; nothing else signals it, so poll /readyz.
		deadline := time.Now().Add(20 * time.Second)
		for !ready(cfg.AdminAddr) {
			select {
			case err := <-done:
				t.Fatalf("Run returned early: %v", err)
			default:
			}
			if time.Now().After(deadline) {
				t.Fatal("botworker never ready")
			}
			time.Sleep(10 * time.Millisecond)
		}
		if name, avatar := profile(t, hs.URL()); name != "Cactus Comments" || avatar != "mxc://example.org/cactus" {
			t.Fatalf("profile %q %q", name, avatar)
		}
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("Run: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("Run did not stop")
		}
	}
	runOnce()
	writes := hs.Calls(hssim.EPProfile)
	if writes != 2 {
		t.Fatalf("%d profile writes on first start, want 2", writes)
	}
	runOnce()
	if got := hs.Calls(hssim.EPProfile); got != writes {
		t.Fatalf("restart wrote the unchanged profile again (%d -> %d writes)", writes, got)
	}
	if !hs.UserExists(botID) {
		t.Fatal("bot user not registered")
	}
}

func ready(addr string) bool {
	resp, err := http.Get("http://" + addr + "/readyz")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

func profile(t *testing.T, base string) (string, string) {
	resp, err := http.Get(base + "/_matrix/client/v3/profile/" + botID)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var p struct {
		DisplayName string `json:"displayname"`
		AvatarURL   string `json:"avatar_url"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&p)
	return p.DisplayName, p.AvatarURL
}
