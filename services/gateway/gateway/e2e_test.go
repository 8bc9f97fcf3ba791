package gateway

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/cactus-comments/appservice/pkg/bus"
	"github.com/cactus-comments/appservice/pkg/config"
	"github.com/cactus-comments/appservice/pkg/hssim"
	"github.com/cactus-comments/appservice/pkg/registration"
)

// TestEndToEnd puts the gateway behind the homeserver simulator in each
// mode: real transactions (Synapse, Dendrite and continuwuity txn ids,
// sizes, auth and retry behaviour), an alias query with the mode's path
// escaping answered by a provisioner on NATS, and a NATS outage during
// which the homeserver's retries must not lose or duplicate anything.
func TestEndToEnd(t *testing.T) {
	for _, mode := range []hssim.Mode{hssim.Synapse, hssim.Dendrite, hssim.Conduit} {
		t.Run(string(mode), func(t *testing.T) {
			t.Parallel()
			endToEnd(t, mode)
		})
	}
}

func endToEnd(t *testing.T, mode hssim.Mode) {
	e := newEnv(t, withConfig(func(c *config.Config) { c.LogLevel = "info" }))
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	defer cancel()
	url := e.srv.URL
	reg := &registration.Registration{
		ID: "cactus-comments", URL: &url, ASToken: testASToken, HSToken: testHSToken,
		SenderLocalpart: "cactusbot",
		Namespaces: registration.Namespaces{
			Users:   []registration.Namespace{{Exclusive: true, Regex: `@cactusbot:example\.org`}},
			Aliases: []registration.Namespace{{Exclusive: true, Regex: `#comments_.*`}},
		},
	}
	hs, err := hssim.Start(ctx, hssim.Options{
		ServerName: "example.org", Mode: mode, TimeUnit: time.Millisecond,
		Registrations: []*registration.Registration{reg},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = hs.Close() })

	// A provisioner that creates the comment room, as the real one does,
	// before saying it exists.
	var mu sync.Mutex
	var asked []string
	nc, err := nats.Connect(e.ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	_, err = nc.QueueSubscribe(bus.SubjectAliasQuery, bus.QueueProvisioners, func(m *nats.Msg) {
		var q bus.AliasQuery
		_ = json.Unmarshal(m.Data, &q)
		mu.Lock()
		asked = append(asked, q.Alias)
		mu.Unlock()
		local := strings.TrimPrefix(q.Alias[:strings.IndexByte(q.Alias, ':')], "#")
		_, err := hs.CreateRoom(ctx, testASToken, map[string]any{
			"visibility": "private", "room_alias_name": local,
			"initial_state": []any{map[string]any{"type": "m.room.join_rules", "state_key": "", "content": map[string]any{"join_rule": "public"}}},
		})
		ans := bus.AliasAnswer{Exists: err == nil}
		if err != nil {
			ans.Error = err.Error()
		}
		b, _ := json.Marshal(ans)
		_ = m.Respond(b)
	})
	if err != nil {
		t.Fatal(err)
	}

	// The bot's own room and messages: every event has a sender in our
	// namespace, so the homeserver pushes all of them.
	room, err := hs.CreateRoom(ctx, testASToken, map[string]any{"name": "bot room"})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 30 {
		if _, err := hs.SendText(ctx, testASToken, room, fmt.Sprintf("message %d", i)); err != nil {
			t.Fatal(err)
		}
	}
	// A visitor invites the bot: routed to the bot workers.
	_, aliceToken, err := hs.RegisterUser("alice", "pw")
	if err != nil {
		t.Fatal(err)
	}
	dm, err := hs.CreateRoom(ctx, aliceToken, map[string]any{"invite": []string{testBot}, "is_direct": true})
	if err != nil {
		t.Fatal(err)
	}
	// A visitor opens a comment section whose id holds slashes: the alias
	// query reaches the provisioner with the alias decoded once, whatever
	// the mode's escaping.
	alias := "#comments_blog.example.org_/posts/hello:example.org"
	if _, err := hs.Join(ctx, aliceToken, alias); err != nil {
		t.Fatalf("joining %s: %v", alias, err)
	}
	mu.Lock()
	if !slices.Equal(asked, []string{alias}) {
		t.Errorf("provisioner asked about %q, want exactly %q", asked, alias)
	}
	mu.Unlock()
	if err := hs.WaitIdle(ctx); err != nil {
		t.Fatal(err)
	}
	checkStored(t, e, hs)
	if id := inviteOf(t, hs, dm); subjectOf(t, e, id) != (bus.Topology{}).StoredSubject(bus.ClassBot, dm) {
		t.Errorf("the bot's invite %s is not on the bot subject of its room", id)
	}

	// NATS goes away while the bot keeps talking: the homeserver gets
	// 503s and retries (Dendrite merging new events into the retried txn
	// id) until NATS is back.
	e.ns.Stop()
	waitFor(t, "the gateway to see NATS down", func() bool { return !e.rt.NC.IsConnected() })
	failedBefore := failedPushes(hs)
	var during []string
	for i := range 5 {
		id, err := hs.SendText(ctx, testASToken, room, fmt.Sprintf("during the outage %d", i))
		if err != nil {
			t.Fatal(err)
		}
		during = append(during, id)
	}
	if err := hs.Wait(ctx, func() bool { return failedPushes(hs) >= failedBefore+2 }); err != nil {
		t.Fatalf("no failed push during the outage: %v", err)
	}
	for _, id := range during {
		if hs.Delivered(id) {
			t.Fatalf("%s acknowledged while NATS was down", id)
		}
	}
	ns, err := e.ns.Restart()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ns.Shutdown)
	e.ns = ns
	for _, id := range during {
		if err := hs.WaitDelivered(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	if err := hs.WaitIdle(ctx); err != nil {
		t.Fatal(err)
	}
	checkStored(t, e, hs)
}

// checkStored: the stream holds exactly the events the homeserver saw
// acknowledged that a worker reads, each once.
func checkStored(t *testing.T, e *env, hs *hssim.Server) {
	t.Helper()
	read := map[string]bool{} // event id -> a worker reads it
	for _, room := range hs.Rooms() {
		for _, ev := range hs.Timeline(room) {
			read[ev.EventID] = bus.Classify(&ev, testBot).Stored()
		}
	}
	want := map[string]bool{}
	ignored := 0
	for _, rec := range hs.Transactions() {
		if rec.OK {
			for _, id := range rec.EventIDs {
				r, ok := read[id]
				if !ok {
					t.Fatalf("%s pushed but in no room's timeline", id)
				}
				if r {
					want[id] = true
				} else if !want[id] {
					ignored++
				}
			}
		}
	}
	if ignored == 0 {
		t.Error("no event pushed that no worker reads: the test shows nothing about them")
	}
	got := map[string]int{}
	for _, id := range e.eventIDs() {
		got[id]++
	}
	for id, n := range got {
		if n != 1 {
			t.Errorf("%s stored %d times", id, n)
		}
		switch r, ok := read[id]; {
		case ok && !r:
			t.Errorf("%s stored though no worker reads it", id)
		case !want[id]:
			t.Errorf("%s stored but never acknowledged to the homeserver", id)
		}
	}
	for id := range want {
		if got[id] == 0 {
			t.Errorf("%s acknowledged but not stored", id)
		}
	}
	if len(want) == 0 {
		t.Fatal("the homeserver pushed nothing")
	}
}

func failedPushes(hs *hssim.Server) int {
	n := 0
	for _, rec := range hs.Transactions() {
		if !rec.OK {
			n++
		}
	}
	return n
}

// inviteOf finds the bot's invite in a room's timeline.
func inviteOf(t *testing.T, hs *hssim.Server, room string) string {
	t.Helper()
	for _, ev := range hs.Timeline(room) {
		if ev.Type == "m.room.member" && ev.StateKey != nil && *ev.StateKey == testBot && strings.Contains(string(ev.Content), `"invite"`) {
			return ev.EventID
		}
	}
	t.Fatalf("no invite of the bot in %s", room)
	return ""
}

func subjectOf(t *testing.T, e *env, eventID string) string {
	t.Helper()
	for _, m := range e.stored(bus.StreamEvents) {
		if m.Header.Get(bus.HeaderEventID) == eventID {
			return m.Subject
		}
	}
	t.Fatalf("%s not stored", eventID)
	return ""
}
