package e2e

import (
	"testing"
	"time"

	"github.com/cactus-comments/appservice/pkg/hssim"
)

// What each homeserver leaves out of the events it pushes. Synapse puts
// unsigned.prev_content in an event it sends from memory, but its
// recoverer, which resends a transaction that failed and sends those
// formed while the appservice was down, reads the events back without it;
// Dendrite never puts it in a push. A leave caused by someone else is then
// an unban or a kick with nothing in the event to tell which.

// TestKickOfABannedUserIsNotAnUnban: a moderator bans a spammer in one
// comment room and, before the ban has reached another, kicks the spammer
// from that one, while the appservice is down: the homeserver sends both
// later. The kick must not be taken for an unban: the spammer stays
// banned from the site, in every room.
func TestKickOfABannedUserIsNotAnUnban(t *testing.T) {
	t.Parallel()
	for _, mode := range []hssim.Mode{hssim.Synapse, hssim.Dendrite, hssim.Conduit} {
		t.Run(string(mode), func(t *testing.T) {
			t.Parallel()
			h := Start(t, Options{Mode: mode})
			owner := h.User("owner")
			spammer := h.User("spammer")
			_, rooms := siteWithRooms(t, h, "blog", owner, spammer, 3)
			for _, r := range rooms[:2] {
				if _, err := owner.Client.JoinRoom(h.Ctx, r.String()); err != nil {
					t.Fatal(err)
				}
			}
			h.Quiesce(20 * time.Second)

			h.withGatewayDown(func() string { return h.Say(owner, rooms[0], "behave") }, func() []string {
				if err := owner.Client.Ban(h.Ctx, rooms[0], spammer.ID, "spam"); err != nil {
					t.Fatal(err)
				}
				ban := lastTimelineEvent(h, rooms[0].String())
				if err := owner.Client.Kick(h.Ctx, rooms[1], spammer.ID, "out"); err != nil {
					t.Fatal(err)
				}
				return []string{ban, lastTimelineEvent(h, rooms[1].String())}
			})
			waitMembership(h, rooms, spammer.ID, "ban", "the spammer banned from every comment room")
			h.Quiesce(20 * time.Second)
			s, err := h.Registry.Site(h.Ctx, "blog")
			if err != nil {
				t.Fatal(err)
			}
			if !s.Banned(spammer.ID.String()) {
				t.Error("the kick was taken for an unban: the site no longer bans the spammer")
			}
			for _, r := range rooms {
				if m := h.HS.Membership(r.String(), spammer.ID.String()); m != "ban" {
					t.Errorf("the spammer is %q in %s, want ban", m, r)
				}
			}
		})
	}
}

func lastTimelineEvent(h *Harness, room string) string {
	h.t.Helper()
	tl := h.HS.Timeline(room)
	return tl[len(tl)-1].EventID
}
