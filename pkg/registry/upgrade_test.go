package registry

import (
	"context"
	"errors"
	"reflect"
	"testing"

	"github.com/cactus-comments/appservice/pkg/event"
	"github.com/cactus-comments/appservice/pkg/mxid"
	"github.com/cactus-comments/appservice/pkg/power"
)

func TestFollowUpgradeOfModerationRoom(t *testing.T) {
	ctx, reg, _ := openTestRegistry(t)
	v10 := &power.Room{Version: "10", Creator: "@bot:x"}
	if err := reg.CreateSite(ctx, &Site{Name: "blog", Owner: "@o:x", ModerationRoom: "!old:x", ModerationCreate: v10, Bans: []string{"@spam:x"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := reg.FollowUpgrade(ctx, "!nope:x", "!new", nil, 0); !errors.Is(err, ErrNotFound) {
		t.Fatalf("a room not ours: %v", err)
	}
	// The bot could not read the replacement yet: its creators are unknown.
	got, err := reg.FollowUpgrade(ctx, "!old:x", "!new", nil, 7)
	if err != nil || got.RoomID != "!new" || got.Site != "blog" || !got.IsModeration() {
		t.Fatalf("FollowUpgrade = %+v, %v", got, err)
	}
	s, _ := reg.Site(ctx, "blog")
	if s.ModerationRoom != "!new" || s.ModerationCreate != nil || !s.Banned("@spam:x") || s.Owner != "@o:x" {
		t.Fatalf("site after the upgrade = %+v", s)
	}
	if r, err := reg.Lookup(ctx, "!new"); err != nil || r.Site != "blog" || !r.IsModeration() || r.ReplacedBy != "" {
		t.Fatalf("new room indexed as %+v, %v", r, err)
	}
	if r, err := reg.Lookup(ctx, "!old:x"); err != nil || r.Site != "blog" || r.ReplacedBy != "!new" || r.ReplacedSeq != 7 {
		t.Fatalf("old room indexed as %+v, %v", r, err)
	}
	// The tombstone handled again (a retry) keeps its sequence.
	if _, err := reg.FollowUpgrade(ctx, "!old:x", "!new", nil, 7); err != nil {
		t.Fatal(err)
	}
	if r, _ := reg.Lookup(ctx, "!old:x"); r.ReplacedSeq != 7 {
		t.Fatalf("tombstone sequence after a retry: %d", r.ReplacedSeq)
	}
	// Learnt later (the bot joined): recorded; again: nothing changes.
	v12 := power.Room{Version: "12", Creator: "@o:x"}
	if err := reg.SetCreate(ctx, "!new", v12); err != nil {
		t.Fatal(err)
	}
	if err := reg.SetCreate(ctx, "!new", power.Room{Version: "12", Creator: "@other:x"}); err != nil {
		t.Fatal(err)
	}
	if err := reg.SetCreate(ctx, "!old:x", power.Room{Version: "1", Creator: "@x:x"}); err != nil {
		t.Fatal(err)
	}
	s, _ = reg.Site(ctx, "blog")
	if s.ModerationCreate == nil || !reflect.DeepEqual(*s.ModerationCreate, v12) {
		t.Fatalf("moderation create = %+v, want %+v", s.ModerationCreate, v12)
	}
	// A redelivered tombstone changes nothing; another replacement of the
	// old room is refused.
	if _, err := reg.FollowUpgrade(ctx, "!old:x", "!new", nil, 0); err != nil {
		t.Fatal(err)
	}
	if s2, _ := reg.Site(ctx, "blog"); s2.ModerationCreate == nil || s2.ModerationRoom != "!new" {
		t.Fatalf("redelivery changed the site: %+v", s2)
	}
	if _, err := reg.FollowUpgrade(ctx, "!old:x", "!other", nil, 0); !errors.Is(err, ErrReplaced) {
		t.Fatalf("second replacement of one room: %v", err)
	}
	// Upgraded again: the chain is followed.
	v12b := &power.Room{Version: "12", Creator: "@o:x"}
	if _, err := reg.FollowUpgrade(ctx, "!new", "!newer", v12b, 0); err != nil {
		t.Fatal(err)
	}
	if s, _ = reg.Site(ctx, "blog"); s.ModerationRoom != "!newer" || !reflect.DeepEqual(s.ModerationCreate, v12b) {
		t.Fatalf("after the second upgrade: %+v", s)
	}
}

func TestFollowUpgradeOfCommentRoom(t *testing.T) {
	ctx, reg, _ := openTestRegistry(t)
	if err := reg.CreateSite(ctx, &Site{Name: "blog", Owner: "@o:x", ModerationRoom: "!mod:x"}); err != nil {
		t.Fatal(err)
	}
	// Recorded before versions were: no create.
	if err := reg.PutRoom(ctx, Room{Site: "blog", Section: "a", RoomID: "!a:x", Alias: "#c_blog_a:x"}); err != nil {
		t.Fatal(err)
	}
	if err := reg.SetCreate(ctx, "!a:x", power.Room{Version: "10", Creator: "@bot:x"}); err != nil {
		t.Fatal(err)
	}
	if r, _ := reg.Room(ctx, "blog", "a"); r.Create == nil || r.Create.Version != "10" {
		t.Fatalf("create not recorded: %+v", r)
	}
	if r, _ := reg.Lookup(ctx, "!a:x"); r.Create == nil || r.Create.Version != "10" {
		t.Fatalf("create not indexed: %+v", r)
	}
	v12 := &power.Room{Version: "12", Creator: "@o:x"}
	got, err := reg.FollowUpgrade(ctx, "!a:x", "!a2", v12, 0)
	if err != nil || got.RoomID != "!a2" || got.Section != "a" || got.Alias != "#c_blog_a:x" || !reflect.DeepEqual(got.Create, v12) {
		t.Fatalf("FollowUpgrade = %+v, %v", got, err)
	}
	rooms, _ := reg.Rooms(ctx, "blog")
	if len(rooms) != 1 || rooms[0].RoomID != "!a2" {
		t.Fatalf("rooms = %+v, want only the replacement", rooms)
	}
	if r, _ := reg.Lookup(ctx, "!a2"); r.Section != "a" || r.ReplacedBy != "" {
		t.Fatalf("replacement indexed as %+v", r)
	}
	if r, _ := reg.Lookup(ctx, "!a:x"); r.Section != "a" || r.ReplacedBy != "!a2" {
		t.Fatalf("old room indexed as %+v", r)
	}
	if again, err := reg.FollowUpgrade(ctx, "!a:x", "!a2", nil, 0); err != nil || !reflect.DeepEqual(again, got) {
		t.Fatalf("redelivery = %+v, %v; want %+v", again, err, got)
	}
	// A section whose alias now names a third room: the old room is only
	// marked.
	if err := reg.PutRoom(ctx, Room{Site: "blog", Section: "b", RoomID: "!b3:x"}); err != nil {
		t.Fatal(err)
	}
	if err := reg.PutRoom(ctx, Room{Site: "blog", Section: "b", RoomID: "!b:x"}); err != nil {
		t.Fatal(err)
	}
	if err := reg.PutRoom(ctx, Room{Site: "blog", Section: "b", RoomID: "!b3:x"}); err != nil {
		t.Fatal(err)
	}
	if _, err := reg.FollowUpgrade(ctx, "!b:x", "!b2", nil, 0); err != nil {
		t.Fatal(err)
	}
	if r, _ := reg.Room(ctx, "blog", "b"); r.RoomID != "!b3:x" {
		t.Fatalf("section b = %+v, want !b3:x kept", r)
	}
}

// The old room's events from before its tombstone still count, whenever
// they are handled; those after it, or when the tombstone's place is not
// known, do not.
func TestReplacedAfter(t *testing.T) {
	for _, tc := range []struct {
		replaced, seq uint64
		counts        bool
	}{
		{7, 6, true},
		{7, 1, true},
		{7, 7, false},
		{7, 8, false},
		{0, 6, false},
		{7, 0, false},
	} {
		r := Room{ReplacedBy: "!new", ReplacedSeq: tc.replaced}
		if got := r.ReplacedAfter(tc.seq); got != tc.counts {
			t.Errorf("tombstone at %d, event at %d: counts %v, want %v", tc.replaced, tc.seq, got, tc.counts)
		}
	}
}

type createOf map[string]*event.Event

func (c createOf) CreateEvent(_ context.Context, room mxid.RoomID) (*event.Event, error) {
	if ev, ok := c[room.String()]; ok {
		return ev, nil
	}
	return nil, errors.New("no such room")
}

func TestReadSuccessor(t *testing.T) {
	old, next := mxid.MustRoomID("!old:x"), mxid.MustRoomID("!next:x")
	create := func(content string) createOf {
		return createOf{next.String(): {Type: "m.room.create", Sender: "@a:x", Content: []byte(content)}}
	}
	tests := []struct {
		name    string
		content string
		ok      bool
	}{
		{"an upgrade of old", `{"room_version":"12","predecessor":{"room_id":"!old:x"}}`, true},
		{"an upgrade of old, v10 with event id", `{"room_version":"10","predecessor":{"room_id":"!old:x","event_id":"$t"}}`, true},
		{"no predecessor", `{"room_version":"10"}`, false},
		{"another room's upgrade", `{"room_version":"10","predecessor":{"room_id":"!other:x"}}`, false},
		{"predecessor of the wrong type", `{"room_version":"10","predecessor":"!old:x"}`, false},
		{"case variant key", `{"room_version":"10","Predecessor":{"room_id":"!old:x"}}`, false},
	}
	for _, tt := range tests {
		r, err := ReadSuccessor(context.Background(), create(tt.content), next, old)
		if tt.ok && (err != nil || r.Creator != "@a:x") {
			t.Errorf("%s: %+v, %v", tt.name, r, err)
		}
		if !tt.ok && !errors.Is(err, ErrNotSuccessor) {
			t.Errorf("%s: err %v, want ErrNotSuccessor", tt.name, err)
		}
	}
}
