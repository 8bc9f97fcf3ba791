package matrix_test

import (
	"context"
	"testing"

	"github.com/cactus-comments/appservice/pkg/hssim"
	"github.com/cactus-comments/appservice/pkg/matrix"
	"github.com/cactus-comments/appservice/pkg/mxid"
	"github.com/cactus-comments/appservice/pkg/registration"
)

func TestEnsureUserAgainstSimulator(t *testing.T) {
	ctx := context.Background()
	null := "" // the appservice is never pushed to in this test
	reg := &registration.Registration{
		ID: "cactus", URL: &null, ASToken: "as-token-for-profile-test", HSToken: "hs-token-for-profile-test",
		SenderLocalpart: "cactusbot",
	}
	reg.Namespaces.Users = []registration.Namespace{{Exclusive: true, Regex: `@cactusbot:example\.org`}}
	for _, mode := range []hssim.Mode{hssim.Synapse, hssim.Dendrite, hssim.Conduit} {
		t.Run(string(mode), func(t *testing.T) {
			hs, err := hssim.Start(ctx, hssim.Options{ServerName: "example.org", Mode: mode, Registrations: []*registration.Registration{reg}})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = hs.Close() })
			c, err := matrix.NewClient(matrix.Config{HomeserverURL: hs.URL(), Token: reg.ASToken})
			if err != nil {
				t.Fatal(err)
			}
			bot := mxid.MustUserID("@cactusbot:example.org")

			if _, err := c.EnsureUser(ctx, bot, "Cactus Comments", "mxc://example.org/cactus"); err != nil {
				t.Fatalf("first EnsureUser: %v", err)
			}
			p, err := c.Profile(ctx, bot)
			if err != nil {
				t.Fatal(err)
			}
			if p.DisplayName != "Cactus Comments" || p.AvatarURL != "mxc://example.org/cactus" {
				t.Fatalf("profile after EnsureUser = %+v", p)
			}
			// Unchanged: no profile write at all on a second start.
			writes := hs.Calls(hssim.EPProfile)
			created, err := c.EnsureUser(ctx, bot, "Cactus Comments", "mxc://example.org/cactus")
			if err != nil || created {
				t.Fatalf("second EnsureUser: created=%v err=%v", created, err)
			}
			if got := hs.Calls(hssim.EPProfile) - writes; got != 0 {
				t.Errorf("unchanged profile written %d times", got)
			}
			// Changed name only: exactly one write.
			if _, err := c.EnsureUser(ctx, bot, "Comments", ""); err != nil {
				t.Fatal(err)
			}
			if got := hs.Calls(hssim.EPProfile) - writes; got != 1 {
				t.Errorf("changed display name: %d writes, want 1", got)
			}
			if p, _ := c.Profile(ctx, bot); p.DisplayName != "Comments" || p.AvatarURL != "mxc://example.org/cactus" {
				t.Errorf("profile after rename = %+v", p)
			}
		})
	}
}

func TestProfileOfUnknownUserIsEmpty(t *testing.T) {
	ctx := context.Background()
	hs, err := hssim.Start(ctx, hssim.Options{ServerName: "example.org"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = hs.Close() })
	_, tok, err := hs.RegisterUser("alice", "password-alice")
	if err != nil {
		t.Fatal(err)
	}
	c, err := matrix.NewClient(matrix.Config{HomeserverURL: hs.URL(), Token: tok})
	if err != nil {
		t.Fatal(err)
	}
	p, err := c.Profile(ctx, mxid.MustUserID("@nobody:example.org"))
	if err != nil || p != (matrix.Profile{}) {
		t.Fatalf("Profile(unknown) = %+v, %v; want empty, nil", p, err)
	}
}
