package botworker

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/cactus-comments/appservice/pkg/event"
	"github.com/cactus-comments/appservice/pkg/matrix"
	"github.com/cactus-comments/appservice/pkg/mxid"
	"github.com/cactus-comments/appservice/pkg/power"
	"github.com/cactus-comments/appservice/pkg/registry"
)

// On a homeserver making version 12 rooms the bot is the moderation room's
// creator: it must not name itself in the power levels, and the registry
// learns the room's version and creators.
func TestRegisterVersion12(t *testing.T) {
	e := newEnv(t, nil)
	e.hs.version = "12"
	e.say(dmRoom, alice, "register blog")
	if got := e.last(dmRoom); !strings.Contains(got, "Done") {
		t.Fatalf("reply %q", got)
	}
	req := e.hs.roomByAlias("#comments_blog:example.org").req
	if req.RoomVersion != "12" || !reflect.DeepEqual(req.PowerLevelContentOverride.Users, map[string]int{alice: 100}) {
		t.Fatalf("createRoom version %q, users %v", req.RoomVersion, req.PowerLevelContentOverride.Users)
	}
	s, err := e.reg.Site(e.ctx, "blog")
	if err != nil || !reflect.DeepEqual(s.ModerationCreate, &power.Room{Version: "12", Creator: botID}) {
		t.Fatalf("site %+v, %v", s, err)
	}
}

// A createRoom refused for naming the creator (what the service did
// before it knew version 12) left a room with its alias and nothing else.
// Registering the name again completes that room instead of answering
// "taken" for ever.
func TestRegisterCompletesHalfMadeRoom(t *testing.T) {
	e := newEnv(t, nil)
	e.hs.version = "12"
	old := &matrix.CreateRoomRequest{RoomAliasName: "comments_blog", RoomVersion: "12",
		PowerLevelContentOverride: &matrix.PowerLevels{Users: map[string]int{alice: 100, botID: 100}}}
	if _, err := e.hs.CreateRoom(e.ctx, old); !strings.Contains(errString(err), "must not appear") {
		t.Fatalf("the fake homeserver accepted the creator in users: %v", err)
	}
	mod := e.hs.roomByAlias("#comments_blog:example.org")
	if mod == nil || mod.powerLevels != nil {
		t.Fatal("no half-made room to start from")
	}

	// Seconds later it may be a createRoom under way: not adopted yet.
	ev := e.text(dmRoom, alice, "register blog")
	if err := e.bot.HandleEvent(e.ctx, ev, false); err == nil || !strings.Contains(err.Error(), "under way") {
		t.Fatalf("a young room without power levels: %v", err)
	}
	// A minute later it is half made for good.
	e.bot.now = func() time.Time { return time.Now().Add(2 * halfMadeAfter) }
	if err := e.bot.HandleEvent(e.ctx, ev, false); err != nil {
		t.Fatal(err)
	}
	if got := e.last(dmRoom); !strings.Contains(got, "Done") {
		t.Fatalf("reply %q", got)
	}
	var pl matrix.PowerLevels
	if err := json.Unmarshal(mod.powerLevels, &pl); err != nil {
		t.Fatalf("power levels %s: %v", mod.powerLevels, err)
	}
	if !reflect.DeepEqual(pl.Users, map[string]int{alice: 100}) || pl.EventLevel("m.room.power_levels", true) != 100 || pl.EventLevel("m.room.tombstone", true) != 150 {
		t.Fatalf("completed power levels %s", mod.powerLevels)
	}
	if e.hs.membership(mod.id, alice) != "invite" {
		t.Fatal("owner not invited to the completed room")
	}
	if b, _ := json.Marshal(mod.state["m.room.join_rules"]); string(b) != `{"join_rule":"invite"}` {
		t.Fatalf("join rules %s", b)
	}
	s, err := e.reg.Site(e.ctx, "blog")
	if err != nil || s.Owner != alice || s.ModerationRoom != mod.id || s.ModerationCreate == nil || s.ModerationCreate.Version != "12" {
		t.Fatalf("site %+v, %v", s, err)
	}
	// Someone else can no longer take it.
	const bobDM = "!bobdm:example.org"
	e.hs.addRoom(bobDM, map[string]string{bob: "join", botID: "join"})
	if err := e.bot.state.markDirect(e.ctx, bobDM, bob); err != nil {
		t.Fatal(err)
	}
	e.say(bobDM, bob, "register blog")
	if got := e.last(bobDM); !strings.Contains(got, "already taken") {
		t.Fatalf("bob's reply %q", got)
	}
}

// The owner invites the bot to the replacement of an upgraded moderation
// room it could not join: the registry learns the replacement's version
// and creators from the invite.
func TestInviteToUpgradedModerationRoom(t *testing.T) {
	e, next := upgradedSite(t)
	e.hs.addRoom(next, map[string]string{alice: "join", botID: "invite"})
	key := botID
	ev := &event.Event{EventID: e.eventID(), Type: "m.room.member", RoomID: next, Sender: alice, StateKey: &key,
		Content: []byte(`{"membership":"invite"}`),
		Unsigned: []byte(`{"invite_room_state":[{"type":"m.room.create","state_key":"","sender":"` + alice +
			`","content":{"room_version":"12","predecessor":{"room_id":"!old:example.org"}}}]}`)}
	if err := e.bot.HandleEvent(e.ctx, ev, false); err != nil {
		t.Fatal(err)
	}
	if e.hs.membership(next, botID) != "join" {
		t.Fatal("the bot did not join")
	}
	s, _ := e.reg.Site(e.ctx, "blog")
	if !reflect.DeepEqual(s.ModerationCreate, &power.Room{Version: "12", Creator: alice}) {
		t.Fatalf("moderation create %+v", s.ModerationCreate)
	}
	if got := e.last(next); !strings.Contains(got, "I moderate blog from this room") {
		t.Fatalf("message in the new room %q", got)
	}
	// Redelivered: nothing more is said.
	if err := e.bot.HandleEvent(e.ctx, ev, false); err != nil {
		t.Fatal(err)
	}
	if n := len(e.hs.messages(next)); n != 1 {
		t.Fatalf("%d messages after a redelivery", n)
	}
}

// The provisioner may learn the replacement's creators first: it retries a
// deferred power levels change, which succeeds as soon as the bot has
// joined, possibly before the bot has handled its own invite to the end.
// The bot still says, in the new room, that it moderates from there.
func TestInviteToUpgradedModerationRoomCreatorsKnownFirst(t *testing.T) {
	e, next := upgradedSite(t)
	if err := e.reg.SetCreate(e.ctx, next, power.Room{Version: "12", Creator: alice}); err != nil {
		t.Fatal(err)
	}
	e.hs.addRoom(next, map[string]string{alice: "join", botID: "invite"})
	key := botID
	ev := &event.Event{EventID: e.eventID(), Type: "m.room.member", RoomID: next, Sender: alice, StateKey: &key,
		Content: []byte(`{"membership":"invite"}`)}
	if err := e.bot.HandleEvent(e.ctx, ev, false); err != nil {
		t.Fatal(err)
	}
	if got := e.last(next); !strings.Contains(got, "I moderate blog from this room") {
		t.Fatalf("message in the new room %q", got)
	}
}

// upgradedSite is a site "blog" whose v10 moderation room was upgraded to
// next, which the bot has not joined.
func upgradedSite(t *testing.T) (*env, string) {
	t.Helper()
	e := newEnv(t, nil)
	const next = "!next"
	if err := e.reg.CreateSite(e.ctx, &registry.Site{Name: "blog", Owner: alice, ModerationRoom: "!old:example.org",
		ModerationCreate: &power.Room{Version: "10", Creator: botID}}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.reg.FollowUpgrade(e.ctx, "!old:example.org", next, nil, 0); err != nil {
		t.Fatal(err)
	}
	return e, next
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// FuzzInviteCreate: whatever an invite's stripped state holds, a room read
// from it has a creator that is a user id, and its version and creators
// survive the registry's JSON unchanged.
func FuzzInviteCreate(f *testing.F) {
	f.Add(`{"invite_room_state":[{"type":"m.room.create","state_key":"","sender":"@a:x","content":{"room_version":"12","additional_creators":["@b:x"]}}]}`)
	f.Add(`{"invite_room_state":[{"type":"m.room.create","state_key":"","sender":"@a:x","content":{"room_version":"10"}}]}`)
	f.Add(`{"invite_room_state":[{"type":"m.room.create","state_key":"x","sender":"@a:x","content":{}}]}`)
	f.Add(`{"invite_room_state":[{"type":"m.room.create","state_key":"","sender":"nobody","content":{"room_version":"12"}}]}`)
	f.Add(`{"invite_room_state":[{"type":"m.room.create","state_key":"","sender":"@a:x","content":{"room_version":"12","additional_creators":"@b:x"}}]}`)
	f.Add(`{"invite_room_state":"x"}`)
	f.Add(`{"invite_room_state":[{"type":"m.room.create","state_key":"","sender":"@a:x","content":{"room_version":"12","additional_creators":[]}}]}`)
	f.Fuzz(func(t *testing.T, unsigned string) {
		r, ok := inviteCreate(&event.Event{Unsigned: []byte(unsigned)})
		if !ok {
			return
		}
		if _, err := mxid.ParseUserID(r.Creator); err != nil {
			t.Fatalf("creator %q: %v", r.Creator, err)
		}
		b, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		var back power.Room
		if err := json.Unmarshal(b, &back); err != nil || back.Version != r.Version || !reflect.DeepEqual(back.Creators(), r.Creators()) {
			t.Fatalf("%+v stored as %s, read back as %+v (%v)", r, b, back, err)
		}
	})
}
