package e2e

import (
	"testing"
	"time"

	"github.com/cactus-comments/appservice/pkg/mxid"
)

// A site's owner may send any m.room.tombstone in their own rooms (they
// are at 100 there), naming any room, including another site's. Only a
// real upgrade of the room is followed: a replacement whose create event
// names the tombstoned room as its predecessor, and that is no room of
// ours already. Otherwise the other site's rooms would get the
// attacker's power levels and bans, and the victim's moderation would be
// filed under the attacker's site.
func TestTombstoneNamingAnotherSitesRoomIsNotFollowed(t *testing.T) {
	t.Parallel()
	h := Start(t, Options{})
	h.StartBot(nil)
	victim, eve, visitor, carol := h.User("victim"), h.User("eve"), h.User("visitor"), h.User("carol")
	vmod := registerViaBot(t, h, victim, "victim")
	emod := registerViaBot(t, h, eve, "evesite")
	vroom := h.Join(visitor, h.CommentAlias("victim", "page"))
	h.Join(carol, h.CommentAlias("victim", "page"))
	eroom := h.Join(visitor, h.CommentAlias("evesite", "p"))
	h.Join(eve, h.CommentAlias("evesite", "p"))
	h.Quiesce(30 * time.Second)

	tombstone := func(in, to mxid.RoomID) {
		t.Helper()
		if _, err := eve.Client.SetStateEvent(h.Ctx, in, "m.room.tombstone", "",
			map[string]string{"body": "moved", "replacement_room": to.String()}); err != nil {
			t.Fatalf("eve's tombstone in %s: %v", in, err)
		}
	}
	tombstone(eroom, vroom)
	tombstone(emod, vmod)
	h.Quiesce(30 * time.Second)

	if got := usersOf(t, h, vroom)[eve.ID.String()]; got != 0 {
		t.Errorf("eve at %d in the victim's comment room", got)
	}
	if got := usersOf(t, h, vmod)[eve.ID.String()]; got != 0 {
		t.Errorf("eve at %d in the victim's moderation room", got)
	}
	for _, site := range []string{"victim", "evesite"} {
		s, err := h.Registry.Site(h.Ctx, site)
		if err != nil {
			t.Fatal(err)
		}
		want := map[string]mxid.RoomID{"victim": vmod, "evesite": emod}[site]
		if s.ModerationRoom != want.String() {
			t.Errorf("site %s: moderation room %s, want %s", site, s.ModerationRoom, want)
		}
	}
	if r, err := h.Registry.Lookup(h.Ctx, vroom.String()); err != nil || r.Site != "victim" {
		t.Errorf("the victim's comment room is now %+v, %v", r, err)
	}

	// The victim's bans still reach the victim's rooms.
	if err := victim.Client.Ban(h.Ctx, vmod, carol.ID, "spam"); err != nil {
		t.Fatal(err)
	}
	waitMembership(h, []mxid.RoomID{vroom}, carol.ID, "ban", "the victim's ban in the victim's comment room")
}
