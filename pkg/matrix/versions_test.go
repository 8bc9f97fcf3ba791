package matrix_test

import (
	"context"
	"strings"
	"testing"

	"github.com/cactus-comments/appservice/pkg/hssim"
	"github.com/cactus-comments/appservice/pkg/matrix"
	"github.com/cactus-comments/appservice/pkg/mxid"
)

// The default room version, the create event with its sender, and an
// upgrade, in every room version the services meet and every mode.
func TestRoomVersionCallsAgainstSimulator(t *testing.T) {
	ctx := context.Background()
	for _, mode := range []hssim.Mode{hssim.Synapse, hssim.Dendrite, hssim.Conduit} {
		for _, version := range []string{"10", "11", "12"} {
			t.Run(string(mode)+"/"+version, func(t *testing.T) {
				hs, err := hssim.Start(ctx, hssim.Options{ServerName: "example.org", Mode: mode, RoomVersion: version})
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { _ = hs.Close() })
				uid, tok, err := hs.RegisterUser("alice", "pw")
				if err != nil {
					t.Fatal(err)
				}
				c, err := matrix.NewClient(matrix.Config{HomeserverURL: hs.URL(), Token: tok})
				if err != nil {
					t.Fatal(err)
				}
				got, err := c.DefaultRoomVersion(ctx)
				if err != nil || got != version {
					t.Fatalf("DefaultRoomVersion = %q, %v; want %s", got, err, version)
				}
				room, err := c.CreateRoom(ctx, &matrix.CreateRoomRequest{RoomVersion: version})
				if err != nil {
					t.Fatal(err)
				}
				ev, err := c.CreateEvent(ctx, room)
				if err != nil {
					t.Fatal(err)
				}
				if ev.Sender != uid || ev.Type != "m.room.create" || !strings.Contains(string(ev.Content), `"room_version":"`+version+`"`) {
					t.Fatalf("create event = %+v", ev)
				}
				next, err := c.UpgradeRoom(ctx, room, "12")
				if err != nil {
					t.Fatal(err)
				}
				if hs.RoomVersionOf(next.String()) != "12" {
					t.Fatalf("replacement %s is version %q", next, hs.RoomVersionOf(next.String()))
				}
				var tomb struct {
					Replacement string `json:"replacement_room"`
				}
				if err := c.GetStateEvent(ctx, room, "m.room.tombstone", "", &tomb); err != nil || tomb.Replacement != next.String() {
					t.Fatalf("tombstone = %+v, %v", tomb, err)
				}
				if _, err := c.UpgradeRoom(ctx, mxid.MustRoomID("!nope:example.org"), "12"); !matrix.IsNotFound(err) && !matrix.IsForbidden(err) {
					t.Fatalf("upgrade of an unknown room: %v", err)
				}
			})
		}
	}
}
