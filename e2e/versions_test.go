package e2e

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cactus-comments/appservice/pkg/bus"
	"github.com/cactus-comments/appservice/pkg/hssim"
	"github.com/cactus-comments/appservice/pkg/matrix"
	"github.com/cactus-comments/appservice/pkg/mxid"
	"github.com/cactus-comments/appservice/pkg/registry"
	"github.com/cactus-comments/appservice/services/botworker/botworker"
	"github.com/cactus-comments/appservice/services/provisioner/provisioner"
)

// The services on homeservers making rooms of version 10, 11 or 12 (12:
// the bot is the creator of the rooms it makes, with infinite power, and
// never appears in their power levels' users).

// registerViaBot registers a site the way a site owner does, by asking
// the bot in a direct chat, and has the owner join the moderation room.
func registerViaBot(t *testing.T, h *Harness, owner *User, name string) mxid.RoomID {
	t.Helper()
	dm := h.DirectChat(owner)
	n := len(h.BotMessages(dm))
	h.Say(owner, dm, "register "+name)
	if reply := h.WaitBotMessages(dm, n+1)[n]; !strings.Contains(reply, "#comments_"+name+":") {
		t.Fatalf("register %s answered %q", name, reply)
	}
	mod, ok := h.ModerationRoomOf(name)
	if !ok {
		t.Fatalf("no moderation room for %s", name)
	}
	if _, err := owner.Client.JoinRoom(h.Ctx, mod.String()); err != nil {
		t.Fatalf("owner joins the moderation room: %v", err)
	}
	return mod
}

// usersOf is the users of a room's power levels content.
func usersOf(t *testing.T, h *Harness, room mxid.RoomID) map[string]int {
	t.Helper()
	raw, ok := h.HS.StateEvent(room.String(), "m.room.power_levels", "")
	if !ok {
		t.Fatalf("no power levels in %s", room)
	}
	var pl matrix.PowerLevels
	if err := json.Unmarshal(raw, &pl); err != nil {
		t.Fatal(err)
	}
	return pl.Users
}

// checkRoom checks a room's version and that the bot has the power to
// moderate it, named in users only where it is no creator.
func checkRoom(t *testing.T, h *Harness, room mxid.RoomID, version string) {
	t.Helper()
	if got := h.HS.RoomVersionOf(room.String()); got != version {
		t.Errorf("room %s is version %q, want %s", room, got, version)
	}
	_, named := usersOf(t, h, room)[h.BotID.String()]
	creator := slices.Contains(h.HS.Creators(room.String()), h.BotID.String())
	if named == creator {
		t.Errorf("room %s: bot named in users %v, bot a creator %v", room, named, creator)
	}
	if got := h.HS.PowerLevel(room.String(), h.BotID.String()); got < 100 {
		t.Errorf("room %s: bot at %d", room, got)
	}
}

// waitMembership waits until user has membership in every room.
func waitMembership(h *Harness, rooms []mxid.RoomID, user mxid.UserID, membership, what string) {
	h.t.Helper()
	h.WaitSim(func() bool {
		for _, r := range rooms {
			if h.HS.Membership(r.String(), user.String()) != membership {
				return false
			}
		}
		return true
	}, 30*time.Second, what)
}

// waitLevel waits until user has level in every room.
func waitLevel(h *Harness, rooms []mxid.RoomID, user mxid.UserID, level int, what string) {
	h.t.Helper()
	h.WaitSim(func() bool {
		for _, r := range rooms {
			if h.HS.PowerLevel(r.String(), user.String()) != level {
				return false
			}
		}
		return true
	}, 30*time.Second, what)
}

func setLevel(t *testing.T, h *Harness, by *User, room mxid.RoomID, user mxid.UserID, level int) {
	t.Helper()
	pl, err := by.Client.GetPowerLevels(h.Ctx, room)
	if err != nil {
		t.Fatal(err)
	}
	pl.SetUserLevel(user.String(), level)
	if _, err := by.Client.SetPowerLevels(h.Ctx, room, pl); err != nil {
		t.Fatalf("%s sets %s to %d in %s: %v", by.ID, user, level, room, err)
	}
}

// A site's whole life in each room version: registration, first visits,
// bans and unbans, power levels with a second owner at the bot's level,
// and a registry rebuilt from the homeserver.
func TestRoomVersions(t *testing.T) {
	t.Parallel()
	for _, version := range []string{"10", "11", "12"} {
		t.Run("v"+version, func(t *testing.T) {
			t.Parallel()
			h := Start(t, Options{RoomVersion: version, Provisioners: 2})
			h.StartBot(nil)
			owner, alice, bob := h.User("owner"), h.User("alice"), h.User("bob")
			spammer, visitor := h.User("spammer"), h.User("visitor")
			creator := version == "12"

			// Register.
			mod := registerViaBot(t, h, owner, "blog")
			checkRoom(t, h, mod, version)
			if got := h.HS.PowerLevel(mod.String(), owner.ID.String()); got != 100 {
				t.Errorf("owner at %d in the moderation room", got)
			}
			site, err := h.Registry.Site(h.Ctx, "blog")
			if err != nil || site.ModerationCreate == nil || site.ModerationCreate.Version != version || site.ModerationCreate.Creator != h.BotID.String() {
				t.Fatalf("site %+v, %v", site, err)
			}

			// First visits.
			rooms := make([]mxid.RoomID, 3)
			for i := range rooms {
				rooms[i] = h.Join(visitor, h.CommentAlias("blog", fmt.Sprintf("post%d", i)))
				checkRoom(t, h, rooms[i], version)
				if got := h.HS.PowerLevel(rooms[i].String(), owner.ID.String()); got != 100 {
					t.Errorf("owner at %d in %s", got, rooms[i])
				}
				rec := recordedRoom(h, "blog", fmt.Sprintf("post%d", i))
				if rec.RoomID != rooms[i].String() || rec.Create == nil || rec.Create.Version != version {
					t.Errorf("registry room %+v", rec)
				}
			}
			all := append([]mxid.RoomID{mod}, rooms...)

			// A ban in a comment room reaches every room; an unban in the
			// moderation room lifts it everywhere.
			if _, err := spammer.Client.JoinRoom(h.Ctx, rooms[1].String()); err != nil {
				t.Fatal(err)
			}
			if _, err := owner.Client.JoinRoom(h.Ctx, rooms[1].String()); err != nil {
				t.Fatal(err)
			}
			if err := owner.Client.Ban(h.Ctx, rooms[1], spammer.ID, "spam"); err != nil {
				t.Fatal(err)
			}
			waitMembership(h, all, spammer.ID, "ban", "the ban in every room")
			if err := owner.Client.Unban(h.Ctx, mod, spammer.ID, ""); err != nil {
				t.Fatal(err)
			}
			waitMembership(h, all, spammer.ID, "leave", "the unban in every room")

			// A second owner at 100, then she steps down and makes bob a
			// moderator in one change. Where the bot is not above her (it
			// is at 100 too) her demotion is reported as skipped; where it
			// is the room's creator it applies.
			if err := owner.Client.Invite(h.Ctx, mod, alice.ID, ""); err != nil {
				t.Fatal(err)
			}
			if _, err := alice.Client.JoinRoom(h.Ctx, mod.String()); err != nil {
				t.Fatal(err)
			}
			setLevel(t, h, owner, mod, alice.ID, 100)
			waitLevel(h, rooms, alice.ID, 100, "alice at 100 in every comment room")
			pl, err := alice.Client.GetPowerLevels(h.Ctx, mod)
			if err != nil {
				t.Fatal(err)
			}
			pl.SetUserLevel(alice.ID.String(), 0)
			pl.SetUserLevel(bob.ID.String(), 50)
			if _, err := alice.Client.SetPowerLevels(h.Ctx, mod, pl); err != nil {
				t.Fatal(err)
			}
			waitLevel(h, rooms, bob.ID, 50, "bob at 50 in every comment room")
			h.Quiesce(30 * time.Second)
			wantAlice := 100
			if creator {
				wantAlice = 0
			}
			for _, r := range rooms {
				if got := h.HS.PowerLevel(r.String(), alice.ID.String()); got != wantAlice {
					t.Errorf("room %s: alice at %d, want %d", r, got, wantAlice)
				}
				if got := h.HS.PowerLevel(r.String(), owner.ID.String()); got != 100 {
					t.Errorf("room %s: owner at %d", r, got)
				}
				checkRoom(t, h, r, version)
			}
			skipped := metricValue(t, h, "cactus_provisioner_power_level_changes_skipped_total")
			if creator != (skipped == 0) {
				t.Errorf("skipped changes reported %v in version %s", skipped, version)
			}

			// The registry rebuilt from the homeserver is the same,
			// versions and creators included, and works.
			h.Quiesce(30 * time.Second)
			before := snapshotRegistry(t, h)
			if err := h.Registry.Wipe(h.Ctx); err != nil {
				t.Fatal(err)
			}
			rep, err := registry.Rebuild(h.Ctx, h.Registry, h.Bot, h.NS, h.BotID, h.Logger("rebuild"))
			if err != nil || !slices.Equal(rep.Sites, []string{"blog"}) || rep.CommentRooms != len(rooms) || len(rep.Skipped) != 0 {
				t.Fatalf("rebuild %+v, %v", rep, err)
			}
			if after := snapshotRegistry(t, h); after != before {
				t.Errorf("registry after rebuild differs:\nbefore: %s\nafter:  %s", before, after)
			}
			if err := owner.Client.Ban(h.Ctx, mod, spammer.ID, "again"); err != nil {
				t.Fatal(err)
			}
			waitMembership(h, rooms, spammer.ID, "ban", "a ban after the rebuild in every comment room")
			if dl := h.DeadLetters(); len(dl) != 0 {
				t.Errorf("dead letters: %+v", dl)
			}
		})
	}
}

// A site registered while the homeserver made version 10 rooms keeps
// working once its default moves to 12: new comment rooms are made in 12
// with the site's power levels copied into them, and moderation spans both
// versions. A site registered after the change gets a v12 moderation room,
// whose levels are copied back into v10 rooms if the default moves back.
func TestMixedRoomVersions(t *testing.T) {
	t.Parallel()
	h := Start(t, Options{RoomVersion: "10", Provisioners: -1})
	// Remembering the default version briefly, the provisioner sees the
	// change at its next query.
	h.StartProvisioner(provisioner.Options{RoomVersionTTL: time.Nanosecond})
	h.StartBot(nil)
	owner, alice, spammer, visitor := h.User("owner"), h.User("alice"), h.User("spammer"), h.User("visitor")

	mod := registerViaBot(t, h, owner, "old")
	a := h.Join(visitor, h.CommentAlias("old", "a"))
	checkRoom(t, h, mod, "10")
	checkRoom(t, h, a, "10")

	if err := h.HS.SetRoomVersion("12"); err != nil {
		t.Fatal(err)
	}
	b := h.Join(visitor, h.CommentAlias("old", "b"))
	checkRoom(t, h, b, "12")
	if got := h.HS.PowerLevel(b.String(), owner.ID.String()); got != 100 {
		t.Errorf("owner at %d in the v12 comment room of a v10 site", got)
	}
	rooms := []mxid.RoomID{mod, a, b}

	// Moderation across versions.
	if err := owner.Client.Ban(h.Ctx, mod, spammer.ID, "spam"); err != nil {
		t.Fatal(err)
	}
	waitMembership(h, rooms[1:], spammer.ID, "ban", "the ban in both comment rooms")
	if err := owner.Client.Invite(h.Ctx, mod, alice.ID, ""); err != nil {
		t.Fatal(err)
	}
	if _, err := alice.Client.JoinRoom(h.Ctx, mod.String()); err != nil {
		t.Fatal(err)
	}
	setLevel(t, h, owner, mod, alice.ID, 100)
	waitLevel(h, rooms[1:], alice.ID, 100, "the second owner in both comment rooms")
	if _, err := owner.Client.JoinRoom(h.Ctx, b.String()); err != nil {
		t.Fatal(err)
	}
	if err := owner.Client.Unban(h.Ctx, b, spammer.ID, ""); err != nil {
		t.Fatal(err)
	}
	waitMembership(h, []mxid.RoomID{mod, a}, spammer.ID, "leave", "the unban from the v12 room in the v10 rooms")

	// A site registered now: a v12 moderation room; its levels copied
	// into a v10 comment room name the bot explicitly.
	newMod := registerViaBot(t, h, owner, "new")
	checkRoom(t, h, newMod, "12")
	c := h.Join(visitor, h.CommentAlias("new", "c"))
	checkRoom(t, h, c, "12")
	if err := h.HS.SetRoomVersion("10"); err != nil {
		t.Fatal(err)
	}
	d := h.Join(visitor, h.CommentAlias("new", "d"))
	checkRoom(t, h, d, "10")
	if got := h.HS.PowerLevel(d.String(), owner.ID.String()); got != 100 {
		t.Errorf("owner at %d in the v10 comment room of a v12 site", got)
	}
	if err := owner.Client.Ban(h.Ctx, newMod, spammer.ID, "spam"); err != nil {
		t.Fatal(err)
	}
	waitMembership(h, []mxid.RoomID{c, d}, spammer.ID, "ban", "the ban of the v12 site in both comment rooms")
	h.Quiesce(30 * time.Second)
	if dl := h.DeadLetters(); len(dl) != 0 {
		t.Errorf("dead letters: %+v", dl)
	}
}

// Synapse up to 1.157.1 answers 500 to a v12 createRoom while another by
// the same user is under way (both compute the same room id; nothing is
// created). Visitors opening two new pages at once, with two provisioners:
// the bot creates both rooms at the same time, one of them collides and is
// retried. Every visitor gets in, and each page has one room.
func TestConcurrentFirstVisitsV12Collisions(t *testing.T) {
	t.Parallel()
	h := Start(t, Options{RoomVersion: "12", V12CreateCollisions: true, Provisioners: 2})
	owner := h.User("owner")
	h.RegisterSite("news", owner)
	// Answers come later than the rooms: the window in which another
	// createRoom collides.
	h.HS.SetLatency(hssim.EPCreateRoom, 150*time.Millisecond)
	const visitors, pages = 10, 2
	users := make([]*User, visitors)
	for i := range users {
		users[i] = h.User(fmt.Sprintf("v%02d", i))
	}
	joined := make([]mxid.RoomID, visitors)
	errs := make([]error, visitors)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i, u := range users {
		wg.Go(func() {
			<-start
			joined[i], errs[i] = u.Client.JoinRoom(h.Ctx, h.CommentAlias("news", fmt.Sprintf("page%d", i%pages)).String())
		})
	}
	close(start)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("visitor %d: %v", i, err)
		}
	}
	for p := range pages {
		alias := h.CommentAlias("news", fmt.Sprintf("page%d", p))
		var withAlias []string
		for _, r := range h.HS.Rooms() {
			if raw, ok := h.HS.StateEvent(r, "m.room.canonical_alias", ""); ok && strings.Contains(string(raw), alias.String()) {
				withAlias = append(withAlias, r)
			}
		}
		if len(withAlias) != 1 {
			t.Fatalf("rooms with alias %s: %v, want exactly one", alias, withAlias)
		}
		for i := p; i < visitors; i += pages {
			if joined[i].String() != withAlias[0] {
				t.Errorf("visitor %d joined %s, want %s", i, joined[i], withAlias[0])
			}
		}
		checkRoom(t, h, mxid.MustRoomID(withAlias[0]), "12")
		if rec := recordedRoom(h, "news", fmt.Sprintf("page%d", p)); rec.RoomID != withAlias[0] || rec.Create == nil {
			t.Errorf("registry room = %+v", rec)
		}
	}
	t.Logf("createRoom answered 500 (a collision) %v times", metricValue(t, h, "cactus_homeserver_requests_total", "status", "500"))
}

// The owner upgrades the site's moderation room to version 12. The
// replacement is invite-only, so the bot cannot join it by itself: it asks
// the owner, in the old room, for an invite; meanwhile bans set in the new
// room still apply (the homeserver sends us its events: our alias moved
// there) and the comment rooms keep the last power levels. Once invited,
// the bot moderates from the new room, where the owner is a creator.
func TestModerationRoomUpgradedToV12(t *testing.T) {
	t.Parallel()
	h := Start(t, Options{RoomVersion: "10", Provisioners: 2})
	h.StartBot(nil)
	owner, bob, spammer, troll, visitor := h.User("owner"), h.User("bob"), h.User("spammer"), h.User("troll"), h.User("visitor")
	mod := registerViaBot(t, h, owner, "blog")
	a := h.Join(visitor, h.CommentAlias("blog", "a"))
	h.Quiesce(30 * time.Second)

	next, err := owner.Client.UpgradeRoom(h.Ctx, mod, "12")
	if err != nil {
		t.Fatal(err)
	}
	h.WaitSim(func() bool {
		for _, m := range h.BotMessages(mod) {
			if strings.Contains(m, "invite me") && strings.Contains(m, next.String()) {
				return true
			}
		}
		return false
	}, 30*time.Second, "the bot asking for an invite in the old moderation room")
	if got := h.HS.Membership(next.String(), h.BotID.String()); got != "leave" {
		t.Fatalf("bot membership in the invite-only replacement: %q", got)
	}
	site, err := h.Registry.Site(h.Ctx, "blog")
	if err != nil || site.ModerationRoom != next.String() || site.ModerationCreate != nil {
		t.Fatalf("site after the upgrade: %+v, %v", site, err)
	}

	// Before the invite: a ban set in the new room applies; a change of
	// power levels there waits.
	if err := owner.Client.Ban(h.Ctx, next, spammer.ID, "spam"); err != nil {
		t.Fatal(err)
	}
	waitMembership(h, []mxid.RoomID{a}, spammer.ID, "ban", "a ban from the uninvited-to replacement")
	// The change waits, retried, until the bot can read the room (so the
	// moderation consumer does not drain meanwhile).
	setLevel(t, h, owner, next, bob.ID, 20)
	h.Eventually(func() bool {
		return metricValue(t, h, "cactus_provisioner_moderation_events_total", "action", "deferred") >= 2
	}, 30*time.Second, "the power levels change deferred, and tried again")
	if got := h.HS.PowerLevel(a.String(), bob.ID.String()); got != 0 {
		t.Errorf("bob at %d in the comment room before the bot could read the new moderation room", got)
	}

	// The owner invites the bot: it joins, and moderation follows the new
	// room in full.
	if err := owner.Client.Invite(h.Ctx, next, h.BotID, ""); err != nil {
		t.Fatal(err)
	}
	h.WaitSim(func() bool { return h.HS.Membership(next.String(), h.BotID.String()) == "join" }, 30*time.Second, "the bot in the new moderation room")
	h.WaitBotMessages(next, 1)
	h.Eventually(func() bool {
		s, err := h.Registry.Site(h.Ctx, "blog")
		return err == nil && s.ModerationCreate != nil
	}, 30*time.Second, "the new moderation room's creators recorded")
	site, _ = h.Registry.Site(h.Ctx, "blog")
	if site.ModerationCreate.Version != "12" || site.ModerationCreate.Creator != owner.ID.String() {
		t.Fatalf("moderation create %+v", site.ModerationCreate)
	}
	// The deferred change was kept, not dropped: it applies now.
	waitLevel(h, []mxid.RoomID{a}, bob.ID, 20, "bob's deferred level from the new moderation room")
	setLevel(t, h, owner, next, bob.ID, 50)
	waitLevel(h, []mxid.RoomID{a}, bob.ID, 50, "bob's level from the new moderation room")
	if got := h.HS.PowerLevel(a.String(), owner.ID.String()); got != 100 {
		t.Errorf("owner (a creator of the new moderation room) at %d in the comment room", got)
	}
	// New sections: the owner, in no users of the moderation room, is
	// named in the comment room's.
	b := h.Join(visitor, h.CommentAlias("blog", "b"))
	checkRoom(t, h, b, "10")
	if got := h.HS.PowerLevel(b.String(), owner.ID.String()); got != 100 {
		t.Errorf("owner at %d in a comment room made after the upgrade", got)
	}
	if got := h.HS.Membership(b.String(), spammer.ID.String()); got != "ban" {
		t.Errorf("spammer %q in a comment room made after the upgrade", got)
	}
	if err := owner.Client.Ban(h.Ctx, next, troll.ID, "troll"); err != nil {
		t.Fatal(err)
	}
	waitMembership(h, []mxid.RoomID{a, b}, troll.ID, "ban", "the troll banned from the new moderation room")
	// A ban in the old room is not the site's any more.
	if err := owner.Client.Ban(h.Ctx, mod, visitor.ID, "in the old room"); err != nil {
		t.Fatal(err)
	}
	h.Quiesce(30 * time.Second)
	if got := h.HS.Membership(a.String(), visitor.ID.String()); got != "join" {
		t.Errorf("a ban in the replaced room reached a comment room: %q", got)
	}

	// Rebuilt from the homeserver: the new room, the owner found as its
	// creator.
	if err := h.Registry.Wipe(h.Ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := registry.Rebuild(h.Ctx, h.Registry, h.Bot, h.NS, h.BotID, h.Logger("rebuild")); err != nil {
		t.Fatal(err)
	}
	site, err = h.Registry.Site(h.Ctx, "blog")
	if err != nil || site.ModerationRoom != next.String() || site.Owner != owner.ID.String() || site.ModerationCreate == nil || site.ModerationCreate.Creator != owner.ID.String() {
		t.Errorf("rebuilt site %+v, %v", site, err)
	}
	if dl := h.DeadLetters(); len(dl) != 0 {
		t.Errorf("dead letters: %+v", dl)
	}
}

// The owner upgrades a comment room: the bot joins the replacement (comment
// rooms are public), the registry follows it, and bans reach it. The owner
// is a creator there: a ban of the owner (set by the second owner who
// took over the site) is refused in that room alone, reported, not retried,
// and applied in a version 12 room the bot created.
func TestCommentRoomUpgraded(t *testing.T) {
	t.Parallel()
	h := Start(t, Options{RoomVersion: "10", Provisioners: -1})
	h.StartProvisioner(provisioner.Options{RoomVersionTTL: time.Nanosecond})
	owner, alice, spammer, visitor := h.User("owner"), h.User("alice"), h.User("spammer"), h.User("visitor")
	site := h.RegisterSite("blog", owner)
	mod := mxid.MustRoomID(site.ModerationRoom)
	a := h.Join(visitor, h.CommentAlias("blog", "a"))
	if err := h.HS.SetRoomVersion("12"); err != nil {
		t.Fatal(err)
	}
	other := h.Join(visitor, h.CommentAlias("blog", "other"))
	checkRoom(t, h, other, "12")
	if _, err := owner.Client.JoinRoom(h.Ctx, a.String()); err != nil {
		t.Fatal(err)
	}
	next, err := owner.Client.UpgradeRoom(h.Ctx, a, "12")
	if err != nil {
		t.Fatal(err)
	}
	h.WaitSim(func() bool { return h.HS.Membership(next.String(), h.BotID.String()) == "join" }, 30*time.Second, "the bot in the new comment room")
	h.Eventually(func() bool {
		r, err := h.Registry.Room(h.Ctx, "blog", "a")
		return err == nil && r.RoomID == next.String() && r.Create != nil
	}, 90*time.Second, "the registry following the new comment room")
	if r, _ := h.Registry.Room(h.Ctx, "blog", "a"); !slices.Equal(r.Create.Creators(), []string{owner.ID.String()}) {
		t.Errorf("new comment room create %+v", r.Create)
	}
	if again := h.Join(h.User("late"), h.CommentAlias("blog", "a")); again != next {
		t.Errorf("the alias leads to %s, want the replacement %s", again, next)
	}
	if err := owner.Client.Ban(h.Ctx, mod, spammer.ID, "spam"); err != nil {
		t.Fatal(err)
	}
	waitMembership(h, []mxid.RoomID{next, other}, spammer.ID, "ban", "the ban in the replacement")

	// The owner hands the site to alice and steps down to 50; alice bans
	// the former owner. Nobody can ban a creator: that room refuses, the
	// others follow.
	if err := owner.Client.Invite(h.Ctx, mod, alice.ID, ""); err != nil {
		t.Fatal(err)
	}
	if _, err := alice.Client.JoinRoom(h.Ctx, mod.String()); err != nil {
		t.Fatal(err)
	}
	pl, err := owner.Client.GetPowerLevels(h.Ctx, mod)
	if err != nil {
		t.Fatal(err)
	}
	pl.SetUserLevel(alice.ID.String(), 100)
	pl.SetUserLevel(owner.ID.String(), 50)
	if _, err := owner.Client.SetPowerLevels(h.Ctx, mod, pl); err != nil {
		t.Fatal(err)
	}
	waitLevel(h, []mxid.RoomID{other}, owner.ID, 50, "the former owner at 50")
	if err := alice.Client.Ban(h.Ctx, mod, owner.ID, "handed over"); err != nil {
		t.Fatal(err)
	}
	waitMembership(h, []mxid.RoomID{other}, owner.ID, "ban", "the former owner banned")
	h.Quiesce(30 * time.Second)
	if got := h.HS.Membership(next.String(), owner.ID.String()); got == "ban" {
		t.Error("a creator was banned")
	}
	if got := metricValue(t, h, "cactus_provisioner_moderation_refused_total"); got != 1 {
		t.Errorf("refused bans reported %v, want 1", got)
	}
	if dl := h.DeadLetters(); len(dl) != 0 {
		t.Errorf("dead letters: %+v", dl)
	}
}

// What this service did on a version 12 homeserver before it knew the
// version's rules: the moderation room's createRoom named the bot, the
// creator, in the power levels' users, and Synapse refused it after
// storing the room, the bot's join and the alias. Registering the site
// again completes that room (once it is clearly not a createRoom under
// way) instead of calling the name taken.
func TestHalfMadeRegistrationCompleted(t *testing.T) {
	t.Parallel()
	h := Start(t, Options{RoomVersion: "12"})
	owner, visitor := h.User("owner"), h.User("visitor")
	_, err := h.Bot.CreateRoom(h.Ctx, &matrix.CreateRoomRequest{
		RoomAliasName: h.NS.ModerationLocalpart("blog"), Invite: []string{owner.ID.String()},
		PowerLevelContentOverride: &matrix.PowerLevels{Users: map[string]int{owner.ID.String(): 100, h.BotID.String(): 100}},
	})
	if !strings.Contains(fmt.Sprint(err), "must not appear in content.users") {
		t.Fatalf("the old moderation room request: %v", err)
	}
	half, ok := h.ModerationRoomOf("blog")
	if !ok {
		t.Fatal("no half-made room behind the moderation alias")
	}
	// A botworker whose clock says the room was made minutes ago.
	h.startBotWith(nil, botworker.Options{Now: func() time.Time { return time.Now().Add(5 * time.Minute) }})
	if mod := registerViaBot(t, h, owner, "blog"); mod != half {
		t.Fatalf("registered with %s, want the completed %s", mod, half)
	}
	checkRoom(t, h, half, "12")
	if got := h.HS.PowerLevel(half.String(), owner.ID.String()); got != 100 {
		t.Errorf("owner at %d in the completed moderation room", got)
	}
	for typ, want := range map[string]string{"m.room.join_rules": "invite", "m.room.history_visibility": "invited", "m.room.name": "blog moderation room"} {
		if got := stateString(t, h, half, typ, ""); got != want {
			t.Errorf("%s = %q, want %q", typ, got, want)
		}
	}
	site, err := h.Registry.Site(h.Ctx, "blog")
	if err != nil || site.Owner != owner.ID.String() || site.ModerationRoom != half.String() || site.ModerationCreate == nil {
		t.Fatalf("site %+v, %v", site, err)
	}
	if room := h.Join(visitor, h.CommentAlias("blog", "post")); h.HS.PowerLevel(room.String(), owner.ID.String()) != 100 {
		t.Error("the owner has no power in the site's first comment room")
	}
}

// A power levels job for a site's moderation room that the bot is not in
// yet (the replacement of an upgrade, before the owner invites the bot; a
// fan-out that read the site just after the upgrade was followed queues
// one) waits, as the site's power levels do: no homeserver read the bot
// is refused, no dead letter.
func TestPowerJobForUnreadableModerationRoomWaits(t *testing.T) {
	t.Parallel()
	h := Start(t, Options{RoomVersion: "10"})
	h.StartBot(nil)
	owner := h.User("owner")
	mod := registerViaBot(t, h, owner, "blog")
	h.Quiesce(30 * time.Second)
	next, err := owner.Client.UpgradeRoom(h.Ctx, mod, "12")
	if err != nil {
		t.Fatal(err)
	}
	h.Eventually(func() bool {
		s, err := h.Registry.Site(h.Ctx, "blog")
		return err == nil && s.ModerationRoom == next.String()
	}, 30*time.Second, "the site following the replacement moderation room")
	// The replacement's power levels, handled after the site followed it
	// (moderation events are handled concurrently), rightly wait until
	// the bot is invited there: only the jobs must drain.
	h.QuiesceJobs(30 * time.Second)
	if m := h.HS.Membership(next.String(), h.BotID.String()); m == "join" {
		t.Fatalf("bot membership in the replacement: %q", m)
	}

	j := provisioner.Job{Kind: provisioner.KindPower, Site: "blog", Room: next.String(), Cause: "test:" + next.String()}
	data, err := json.Marshal(j)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.JS.Publish(h.Ctx, bus.JobSubject(j.Kind, j.Site, j.Room), data); err != nil {
		t.Fatal(err)
	}
	h.QuiesceJobs(30 * time.Second)
	if dl := h.DeadLetters(); len(dl) != 0 {
		t.Fatalf("dead letters: %+v", dl)
	}
}
