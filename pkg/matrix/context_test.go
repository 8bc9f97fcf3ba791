package matrix_test

import (
	"context"
	"testing"

	"github.com/cactus-comments/appservice/pkg/hssim"
	"github.com/cactus-comments/appservice/pkg/matrix"
	"github.com/cactus-comments/appservice/pkg/mxid"
)

// EventContext reads the membership a kick replaced, in every mode.
func TestEventContextAgainstSimulator(t *testing.T) {
	ctx := context.Background()
	for _, mode := range []hssim.Mode{hssim.Synapse, hssim.Dendrite, hssim.Conduit} {
		t.Run(string(mode), func(t *testing.T) {
			hs, err := hssim.Start(ctx, hssim.Options{ServerName: "example.org", Mode: mode})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = hs.Close() })
			client := func(localpart string) (*matrix.Client, mxid.UserID) {
				uid, tok, err := hs.RegisterUser(localpart, "pw")
				if err != nil {
					t.Fatal(err)
				}
				c, err := matrix.NewClient(matrix.Config{HomeserverURL: hs.URL(), Token: tok})
				if err != nil {
					t.Fatal(err)
				}
				return c, mxid.MustUserID(uid)
			}
			owner, _ := client("owner")
			visitor, vid := client("visitor")
			room, err := owner.CreateRoom(ctx, &matrix.CreateRoomRequest{Preset: matrix.PresetPublicChat})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := visitor.JoinRoom(ctx, room.String()); err != nil {
				t.Fatal(err)
			}
			if err := owner.Kick(ctx, room, vid, "out"); err != nil {
				t.Fatal(err)
			}
			tl := hs.Timeline(room.String())
			kick, err := mxid.ParseEventID(tl[len(tl)-1].EventID)
			if err != nil {
				t.Fatal(err)
			}
			ev, err := owner.EventContext(ctx, room, kick)
			if err != nil {
				t.Fatal(err)
			}
			if ev.Membership() != "leave" || ev.PrevMembership() != "join" {
				t.Fatalf("kick read back as %+v", ev)
			}
			nowhere, _ := mxid.ParseEventID("$nowhere")
			if _, err := owner.EventContext(ctx, room, nowhere); !matrix.IsNotFound(err) {
				t.Fatalf("unknown event: %v", err)
			}
		})
	}
}
