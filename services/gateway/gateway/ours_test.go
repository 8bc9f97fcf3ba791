package gateway

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/cactus-comments/appservice/pkg/registry"
)

// fakeIndex answers lookups from a set of rooms, or fails.
type fakeIndex struct {
	rooms map[string]bool
	err   error
	asked int
}

func (x *fakeIndex) Lookup(_ context.Context, room string) (registry.Room, error) {
	x.asked++
	switch {
	case x.err != nil:
		return registry.Room{}, x.err
	case x.rooms[room]:
		return registry.Room{RoomID: room}, nil
	}
	return registry.Room{}, registry.ErrNotFound
}

// TestOurRoomsAreAskedAgain: the splitter remembers which rooms are ours,
// asks again once an answer is old (a "no" sooner: the room may be a
// comment room created a moment ago), and treats an index that cannot
// answer as "not ours" (the bot worker then sees the messages, as it
// did before the gateway asked).
func TestOurRoomsAreAskedAgain(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name      string
		ours, err bool          // the index's answer now
		was       bool          // its last answer
		age       time.Duration // of the last answer; 0: never asked
		wantOurs  bool
		wantAsked int
	}{
		{name: "ours, never asked", ours: true, wantOurs: true, wantAsked: 1},
		{name: "not ours, never asked", wantOurs: false, wantAsked: 1},
		{name: "ours, asked a minute ago", ours: true, was: true, age: time.Minute, wantOurs: true, wantAsked: 0},
		{name: "ours, asked long ago, site deleted since", was: true, age: oursFor + time.Second, wantOurs: false, wantAsked: 1},
		{name: "not ours a second ago", ours: true, age: time.Second, wantOurs: false, wantAsked: 0},
		{name: "not ours a while ago, ours now", ours: true, age: notOursFor + time.Second, wantOurs: true, wantAsked: 1},
		{name: "index unreachable", ours: true, err: true, wantOurs: false, wantAsked: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, withoutSplitter())
			x := &fakeIndex{rooms: map[string]bool{}}
			if tt.ours {
				x.rooms["!r:x"] = true
			}
			if tt.err {
				x.err = errors.New("nats: timeout")
			}
			s := &splitter{g: e.gw, index: x}
			r := s.roomOf("!r:x")
			if tt.age > 0 {
				r.ours, r.checked = tt.was, time.Now().Add(-tt.age)
			}
			if got := s.ours(ctx, r); got != tt.wantOurs || x.asked != tt.wantAsked {
				t.Errorf("ours = %v after %d lookups, want %v after %d", got, x.asked, tt.wantOurs, tt.wantAsked)
			}
			if tt.err {
				// Other rooms wait: each lookup would wait as long.
				if s.ours(ctx, s.roomOf("!other:x")) || x.asked != tt.wantAsked {
					t.Errorf("asked the index again right after it failed (%d lookups)", x.asked)
				}
			}
		})
	}
	// An index that keeps failing is asked less and less often, and as
	// often as before once it answers again.
	e := newEnv(t, withoutSplitter())
	x := &fakeIndex{rooms: map[string]bool{"!r:x": true}, err: errors.New("nats: timeout")}
	s := &splitter{g: e.gw, index: x}
	var waits []time.Duration
	for i := range 7 {
		s.indexBackUntil = time.Time{} // as if each wait were over
		s.ours(ctx, s.roomOf(fmt.Sprint("!r", i, ":x")))
		waits = append(waits, s.indexBackoff)
	}
	want := []time.Duration{notOursFor, 2 * notOursFor, 4 * notOursFor, 8 * notOursFor, 16 * notOursFor, maxIndexBackoff, maxIndexBackoff}
	if !slices.Equal(waits, want) {
		t.Errorf("waits after failed lookups %v, want %v", waits, want)
	}
	x.err = nil
	s.indexBackUntil = time.Time{}
	if !s.ours(ctx, s.roomOf("!r:x")) || s.indexBackoff != 0 {
		t.Errorf("index answering again: backoff %v", s.indexBackoff)
	}

	// No index (it could not be opened): nothing is ours, nothing asked.
	if s := (&splitter{}); s.ours(ctx, s.roomOf("!r:x")) {
		t.Error("ours without an index")
	}
}
