package botworker

import (
	"errors"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/cactus-comments/appservice/pkg/bus"
)

func TestTurns(t *testing.T) {
	e := newEnv(t, nil)
	tu := e.bot.turns
	room := "!order:example.org"
	subject := (bus.Topology{}).StoredSubject(bus.ClassBot, room) // as the worker sees it
	publish := func(subj string) uint64 {
		ack, err := e.rt.JS.Publish(e.ctx, subj, []byte(`{"event_id":"$x","type":"m.room.message","room_id":"`+room+`","sender":"`+alice+`","content":{}}`))
		if err != nil {
			t.Fatal(err)
		}
		return ack.Sequence
	}
	s1 := publish(subject)
	publish(bus.EventSubject(bus.ClassBot, "!other:example.org")) // another room does not matter
	s2 := publish(subject)
	s3 := publish(subject)
	timeouts := func() float64 { return testutil.ToFloat64(e.bot.m.orderWaits.WithLabelValues("out_of_order")) }

	// The first event of a room never seen goes at once.
	t1, err := tu.wait(e.ctx, subject, room, s1, false)
	if err != nil || timeouts() != 0 {
		t.Fatalf("first event: %v, timeouts %v", err, timeouts())
	}
	// The second waits for the first; with a short bound it is handed
	// back, or on its last deliveries goes ahead.
	short := *tu
	short.maxWait = time.Millisecond
	if _, err := short.wait(e.ctx, subject, room, s2, false); !errors.Is(err, errTurn) {
		t.Fatalf("second before the first finished: %v", err)
	}
	if _, err := short.wait(e.ctx, subject, room, s2, true); err != nil || timeouts() != 1 {
		t.Fatalf("second forced before the first finished: %v, out of order %v", err, timeouts())
	}
	if err := tu.finish(e.ctx, t1); err != nil {
		t.Fatal(err)
	}
	t2, err := tu.wait(e.ctx, subject, room, s2, false)
	if err != nil || timeouts() != 1 {
		t.Fatalf("second after the first: %v, timeouts %v", err, timeouts())
	}
	// The third is released when the second finishes.
	done := make(chan error, 1)
	go func() {
		long := *tu
		long.maxWait = time.Minute
		_, err := long.wait(e.ctx, subject, room, s3, false)
		done <- err
	}()
	if err := tu.finish(e.ctx, t2); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil || timeouts() != 1 {
			t.Fatalf("third: %v, timeouts %v", err, timeouts())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("third not released by the second finishing")
	}
	// A redelivered finished event goes at once; finishing never moves
	// the room backwards.
	if err := tu.finish(e.ctx, turn{key: turnKey(room), seq: s3}); err != nil {
		t.Fatal(err)
	}
	if err := tu.finish(e.ctx, t1); err != nil {
		t.Fatal(err)
	}
	if last, _, err := tu.last(e.ctx, turnKey(room)); err != nil || last != s3 {
		t.Fatalf("last = %d (%v), want %d", last, err, s3)
	}
	// The bot's own events and malformed ones are not waited for.
	for _, data := range []string{`{"event_id":"$b","type":"m.room.message","room_id":"` + room + `","sender":"` + botID + `"}`, `{not json`, `{}`} {
		if _, err := e.rt.JS.Publish(e.ctx, subject, []byte(data)); err != nil {
			t.Fatal(err)
		}
	}
	s5 := publish(subject)
	if _, err := short.wait(e.ctx, subject, room, s5, false); err != nil || timeouts() != 1 {
		t.Fatalf("event after one of the bot's: %v, timeouts %v", err, timeouts())
	}
}
