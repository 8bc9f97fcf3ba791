package provisioner

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/go-json-experiment/json/jsontext"

	"github.com/cactus-comments/appservice/pkg/bus"
	"github.com/cactus-comments/appservice/pkg/event"
	"github.com/cactus-comments/appservice/pkg/registry"
)

const (
	owner = "@owner:example.org"
	alice = "@alice:example.org"
	bob   = "@bob:example.org"
)

// modEvent builds the moderation events of the table below.
func modEvent(typ, sender, target, membership, prev string, content string) *event.Event {
	e := &event.Event{EventID: "$" + typ + target + membership, Type: typ, RoomID: "!mod:x", Sender: sender}
	switch typ {
	case "m.room.member":
		e.StateKey = &target
		e.Content, _ = json.Marshal(map[string]string{"membership": membership})
		if prev != "" {
			e.Unsigned, _ = json.Marshal(map[string]any{"prev_content": map[string]string{"membership": prev}})
		}
	default:
		empty := ""
		e.StateKey = &empty
		e.Content = jsontext.Value(content)
	}
	return e
}

func ban(user string) *event.Event {
	return modEvent("m.room.member", owner, user, "ban", "join", "")
}
func unban(user string) *event.Event {
	return modEvent("m.room.member", owner, user, "leave", "ban", "")
}
func unbanUnknownPrev(user string) *event.Event {
	return modEvent("m.room.member", owner, user, "leave", "", "")
}
func kick(user string) *event.Event {
	return modEvent("m.room.member", owner, user, "leave", "join", "")
}
func selfLeave(user string) *event.Event {
	return modEvent("m.room.member", user, user, "leave", "join", "")
}
func levels(content string) *event.Event {
	return modEvent("m.room.power_levels", owner, "", "", "", content)
}

// inOrder is what the moderation consumer did when it applied one event at
// a time in stream order, reading the snapshot to tell an unban from a
// kick when the homeserver did not say: the oracle the concurrent,
// order-free handling must agree with.
func inOrder(t *testing.T, events []*event.Event) (bans []string, pl string) {
	t.Helper()
	banned := map[string]bool{}
	for _, e := range events {
		switch {
		case e.Type == "m.room.power_levels":
			d, err := decide(e, true, "")
			if err != nil {
				t.Fatal(err)
			}
			pl = string(d.powerLevels)
		case e.Membership() == "ban":
			banned[*e.StateKey] = true
		case e.Membership() == "leave" && e.Sender != *e.StateKey:
			prev := e.PrevMembership()
			if prev == "ban" || prev == "" && banned[*e.StateKey] {
				banned[*e.StateKey] = false
			}
		}
	}
	for u, b := range banned {
		if b {
			bans = append(bans, u)
		}
	}
	slices.Sort(bans)
	return bans, pl
}

// applyAll applies events, each with its stream sequence, in the given
// order to a fresh snapshot.
func applyAll(t *testing.T, events []*event.Event, order []int) *registry.Site {
	t.Helper()
	s := &registry.Site{Name: "blog", PowerLevels: json.RawMessage(`{"users":{"@owner:example.org":100}}`)}
	for _, i := range order {
		d, err := decide(events[i], true, "")
		if err != nil {
			t.Fatal(err)
		}
		d.apply(s, uint64(i+1))
	}
	return s
}

// Applying a site's moderation events in any order, any number of times
// (redeliveries, replays, replicas racing) ends in the snapshot applying
// them once in order gives.
func TestModerationConvergesInAnyOrder(t *testing.T) {
	tests := []struct {
		name   string
		events []*event.Event
	}{
		{"ban then unban", []*event.Event{ban(alice), unban(alice)}},
		{"unban then ban", []*event.Event{ban(alice), unban(alice), ban(alice)}},
		{"unban without prev_content", []*event.Event{ban(alice), unbanUnknownPrev(alice)}},
		{"kick without prev_content of a user never banned", []*event.Event{unbanUnknownPrev(bob), ban(alice)}},
		{"kick does not unban", []*event.Event{ban(alice), kick(alice), ban(bob)}},
		{"self-leave does not unban", []*event.Event{ban(alice), selfLeave(alice)}},
		{"ban of a banned user", []*event.Event{ban(alice), ban(alice), unban(alice), ban(alice)}},
		{"power levels, last one wins", []*event.Event{
			levels(`{"users":{"@owner:example.org":100,"@alice:example.org":50}}`),
			levels(`{"users":{"@owner:example.org":100,"@alice:example.org":50,"@bob:example.org":50}}`),
			levels(`{"users":{"@owner:example.org":100}}`),
		}},
		{"everything at once", []*event.Event{
			ban(alice), ban(bob), levels(`{"users":{"@owner:example.org":100,"@bob:example.org":50}}`),
			unban(alice), kick(bob), unbanUnknownPrev(bob), ban("@carol:example.org"),
			levels(`{"ban":10,"users":{"@owner:example.org":100}}`), ban(alice), selfLeave("@carol:example.org"),
			unbanUnknownPrev("@dave:example.org"),
		}},
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			wantBans, wantPL := inOrder(t, tt.events)
			n := len(tt.events)
			inorder := make([]int, n)
			for i := range inorder {
				inorder[i] = i
			}
			ref := applyAll(t, tt.events, inorder)
			if !slices.Equal(ref.Bans, wantBans) {
				t.Fatalf("in order: bans %v, want %v", ref.Bans, wantBans)
			}
			if wantPL != "" && string(ref.PowerLevels) != wantPL {
				t.Fatalf("in order: power levels %s, want %s", ref.PowerLevels, wantPL)
			}
			for round := range 300 {
				// A permutation, with some events delivered again.
				order := rng.Perm(n)
				for range rng.IntN(n + 1) {
					order = slices.Insert(order, rng.IntN(len(order)+1), rng.IntN(n))
				}
				got := applyAll(t, tt.events, order)
				if !slices.Equal(got.Bans, ref.Bans) || string(got.PowerLevels) != string(ref.PowerLevels) ||
					got.PowerLevelsSeq != ref.PowerLevelsSeq || fmt.Sprint(got.BanDecisions) != fmt.Sprint(ref.BanDecisions) {
					t.Fatalf("round %d, order %v:\n got bans %v pl %s decisions %v\nwant bans %v pl %s decisions %v",
						round, order, got.Bans, got.PowerLevels, got.BanDecisions, ref.Bans, ref.PowerLevels, ref.BanDecisions)
				}
			}
		})
	}
}

// A replay of an old decision after a newer one changes nothing: it
// carries its original sequence.
func TestOldDecisionAfterNewerIsIgnored(t *testing.T) {
	s := &registry.Site{Name: "blog"}
	b, _ := decide(ban(alice), true, "")
	u, _ := decide(unban(alice), true, "")
	if taken, changed := b.apply(s, 10); !taken || !changed {
		t.Fatal("first ban not taken")
	}
	if taken, changed := u.apply(s, 20); !taken || !changed || s.Banned(alice) {
		t.Fatal("newer unban not taken")
	}
	if taken, changed := b.apply(s, 10); taken || changed || s.Banned(alice) {
		t.Fatalf("replayed older ban: taken %v changed %v banned %v", taken, changed, s.Banned(alice))
	}
}

func TestDecide(t *testing.T) {
	tests := []struct {
		name   string
		ev     *event.Event
		modRm  bool
		prev   string // what the homeserver says the event replaced
		action string
	}{
		{"ban", ban(alice), false, "", "ban"},
		{"unban", unban(alice), false, "", "unban"},
		{"leave by another, previous unknown", unbanUnknownPrev(alice), false, "", "unban"},
		{"leave by another, homeserver says joined", unbanUnknownPrev(alice), false, "join", "ignored"},
		{"leave by another, homeserver says banned", unbanUnknownPrev(alice), false, "ban", "unban"},
		{"kick, event says joined whatever asked", kick(alice), false, "ban", "ignored"},
		{"kick", kick(alice), false, "", "ignored"},
		{"self-leave", selfLeave(alice), false, "", "ignored"},
		{"invite", modEvent("m.room.member", owner, alice, "invite", "", ""), false, "", "ignored"},
		{"power levels in the moderation room", levels(`{"ban":50}`), true, "", "power_levels"},
		{"power levels in a comment room", levels(`{"ban":50}`), false, "", "ignored"},
		{"canonical alias", modEvent("m.room.canonical_alias", owner, "", "", "", `{"alias":"#a:x"}`), true, "", "ignored"},
	}
	for _, tt := range tests {
		d, err := decide(tt.ev, tt.modRm, tt.prev)
		if err != nil || d.action() != tt.action {
			t.Errorf("%s: %s, %v; want %s", tt.name, d.action(), err, tt.action)
		}
	}
	if _, err := decide(levels(`{"ban":"fifty"}`), true, ""); err == nil {
		t.Error("unreadable power levels accepted")
	}
	// Content that does not decode as its type requires is refused (and
	// dead-lettered by the caller), not taken as "nothing to do".
	for _, content := range []string{`{"membership":1}`, `{"membership":{"ban":true}}`, `"ban"`, `{}`, `{"membership":null}`, `{"Membership":"ban"}`} {
		ev := ban(alice)
		ev.Content = jsontext.Value(content)
		if _, err := decide(ev, true, ""); err == nil {
			t.Errorf("unreadable membership %s accepted", content)
		}
	}
	// The membership is all a decision reads: the homeserver applied a
	// ban whatever type its reason or display name has.
	for _, content := range []string{`{"membership":"ban","reason":7}`, `{"membership":"ban","is_direct":"yes","displayname":7}`} {
		ev := ban(alice)
		ev.Content = jsontext.Value(content)
		if d, err := decide(ev, true, ""); err != nil || d.action() != "ban" {
			t.Errorf("ban %s: %s, %v; want ban", content, d.action(), err)
		}
	}
	// A membership that decodes but means nothing to us is ignored.
	if d, err := decide(modEvent("m.room.member", owner, alice, "BAN", "", ""), true, ""); err != nil || d.action() != "ignored" {
		t.Errorf("membership BAN: %s, %v; want ignored", d.action(), err)
	}
	// Equal contents however spelled decide the same bytes.
	a, _ := decide(levels(`{"users":{"@b:x":50,"@a:x":100},"ban":50}`), true, "")
	b, _ := decide(levels(`{"ban":50, "users":{"@a:x":100,"@b:x":50}}`), true, "")
	if string(a.powerLevels) != string(b.powerLevels) {
		t.Errorf("%s != %s", a.powerLevels, b.powerLevels)
	}
}

// TestReplacementRoom: a tombstone whose content does not decode is
// refused (dead-lettered); one whose replacement decodes but is no room id
// is ignored.
func TestReplacementRoom(t *testing.T) {
	tests := []struct {
		content    string
		unreadable bool
		room       string // "" if ignored
	}{
		{`{"replacement_room":"!new:x.org","body":"moved"}`, false, "!new:x.org"},
		{`{"replacement_room":"not a room"}`, false, ""},
		{`{"body":"no replacement"}`, false, ""},
		{`{"replacement_room":7}`, true, ""},
		{`{"replacement_room":{"room_id":"!new:x.org"}}`, true, ""},
		{`{"replacement_room":"!a:x.org","replacement_room":"!b:x.org"}`, true, ""},
		{`"!new:x.org"`, true, ""},
	}
	for _, tt := range tests {
		room, ok, err := replacementRoom(jsontext.Value(tt.content))
		if (err != nil) != tt.unreadable || ok != (tt.room != "") || ok && room.String() != tt.room {
			t.Errorf("%s: %v, %v, %v", tt.content, room, ok, err)
		}
	}
}

// FuzzMemberEventsReachModeration: every member event this consumer would
// act on or refuse (and dead-letter) is one the gateway routes to it. One
// the gateway takes for something no worker reads must mean nothing here:
// else a ban would vanish unseen between the two.
func FuzzMemberEventsReachModeration(f *testing.F) {
	for _, c := range []string{`{"membership":"ban"}`, `{"membership":"ban","reason":7}`, `{"membership":["ban"]}`, `"ban"`, `{}`,
		`{"membership":"leave","reason":{"a":1}}`, `{"membership":"join","displayname":5}`, `{"membership":"BAN"}`, `{"Membership":"ban"}`,
		`{"membership":"ban","membership":"join"}`, `{"membership":"leave"}`, `null`} {
		f.Add(c, false)
		f.Add(c, true)
	}
	f.Fuzz(func(t *testing.T, content string, self bool) {
		e := ban(alice)
		if self {
			e.Sender = alice
		}
		e.Content = jsontext.Value(content)
		d, err := decide(e, true, "")
		if c := bus.Classify(e, "@cactusbot:x"); c != bus.ClassModeration && (err != nil || d.kind != decideNothing) {
			t.Fatalf("content %s (self %v): decide says %q, %v; the gateway routes it to %s", content, self, d.action(), err, c)
		}
	})
}
