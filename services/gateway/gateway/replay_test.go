package gateway

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/cactus-comments/appservice/pkg/bus"
	"github.com/cactus-comments/appservice/pkg/event"
)

// TestReplayDeadLetter: a gateway dead letter goes back through the
// gateway's own checks. An event JetStream refused while the stream took
// smaller messages is stored once the limit is raised; a spoofed event is
// refused again with the reason; nothing else is replayed as the gateway's.
func TestReplayDeadLetter(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	restore := e.limitEvents(ctx, 2048)
	big := hostileEvent("$replayed", `content={"msgtype":"m.text","body":"`+strings.Repeat("b", 3000)+`"}`)
	spoof := hostileEvent("$spoofed", `Sender="@alice:example.org"`)
	if status, body := e.do(http.MethodPut, "/_matrix/app/v1/transactions/r1", txnBody(big, spoof)); status != 200 {
		t.Fatalf("status %d body %s", status, body)
	}
	e.splitDone() // refused by the small stream, then dead-lettered
	restore()
	dls := map[string]bus.DeadLetter{}
	c, err := e.rt.JS.OrderedConsumer(ctx, bus.StreamDLQ, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		m, err := c.Next(jetstream.FetchMaxWait(10 * time.Second))
		if err != nil {
			t.Fatal(err)
		}
		d := bus.ReadDeadLetter(m)
		ev, _ := event.Decode(d.Data)
		if ev != nil {
			dls["big"] = d
		} else {
			dls["spoof"] = d
		}
	}

	route, err := ReplayDeadLetter(ctx, e.rt.JS, testBot, dls["big"])
	if err != nil {
		t.Fatalf("replay of the refused event: %v", err)
	}
	if want := bus.EventSubject(bus.ClassBot, "!r:example.org"); route.Subject != want || route.EventID != "$replayed" {
		t.Fatalf("route %+v, want subject %s", route, want)
	}
	msgs := e.stored(bus.StreamEvents)
	if len(msgs) != 1 || string(msgs[0].Data) != big || msgs[0].Header.Get(bus.HeaderEventID) != "$replayed" ||
		msgs[0].Header.Get(bus.HeaderTxnID) != "r1" || msgs[0].Subject != (bus.Topology{}).StoredSubject(bus.ClassBot, "!r:example.org") {
		t.Fatalf("event stream after the replay: %d messages", len(msgs))
	}
	// Replayed twice (the dead letter could not be deleted): stored once.
	if _, err := ReplayDeadLetter(ctx, e.rt.JS, testBot, dls["big"]); err != nil {
		t.Fatal(err)
	}
	if got := e.eventIDs(); len(got) != 1 {
		t.Fatalf("second replay stored again: %q", got)
	}

	if _, err := ReplayDeadLetter(ctx, e.rt.JS, testBot, dls["spoof"]); err == nil || !strings.Contains(err.Error(), "variant") {
		t.Fatalf("replay of the spoofed event: %v", err)
	}
	worker := dls["big"]
	worker.Source = bus.ConsumerModeration
	if _, err := ReplayDeadLetter(ctx, e.rt.JS, testBot, worker); err == nil {
		t.Fatal("a worker's dead letter replayed as the gateway's")
	}
	cut := dls["big"]
	cut.Truncated = 1 << 20
	if _, err := ReplayDeadLetter(ctx, e.rt.JS, testBot, cut); err == nil || !strings.Contains(err.Error(), "part") {
		t.Fatalf("replay of a truncated dead letter: %v", err)
	}
	if got := e.eventIDs(); len(got) != 1 {
		t.Fatalf("refused replays stored something: %q", got)
	}
}

// TestRouteEventMatchesTransactions: one event alone is judged as inside a
// transaction.
func TestRouteEventMatchesTransactions(t *testing.T) {
	for _, raw := range []string{
		message("$m", "!r:example.org"),
		" " + member("$b", "!r:example.org", "@mod:example.org", "@troll:example.org", "ban") + "\n",
		hostileEvent("$x", `content={"a":1,"a":2}`),
		hostileEvent("$y", `origin_server_ts="yesterday"`),
		`[1]`, `{"event_id":`, `{} {}`,
	} {
		got, gotRaw, gotErr := RouteEvent([]byte(raw), testBot)
		evs, err := decodeTransaction(txnBody(raw), nil)
		if err != nil {
			if gotErr == nil {
				t.Errorf("%s: routed alone, not inside a transaction (%v)", raw, err)
			}
			continue
		}
		e := &evs[0]
		if e.Problem == "" {
			e.class, e.Problem = checkEvent(e, string(e.RoomID), testBot, maxEventSize(nil))
		}
		if (gotErr == nil) != (e.Problem == "") {
			t.Errorf("%s: alone %v, in a transaction %q", raw, gotErr, e.Problem)
			continue
		}
		if gotErr == nil && (got.Class != e.class || got.EventID != e.EventID || string(gotRaw) != strings.TrimSpace(raw)) {
			t.Errorf("%s: alone %+v, in a transaction %s %s", raw, got, e.class, e.EventID)
		}
	}
}
