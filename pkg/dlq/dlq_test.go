package dlq

import (
	"context"
	"errors"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/cactus-comments/appservice/pkg/bus"
	"github.com/cactus-comments/appservice/pkg/embednats"
)

func TestReplay(t *testing.T) {
	_, _, js := embednats.JetStreamTest(t)
	ctx := context.Background()
	if err := (bus.Topology{Memory: true}).Ensure(ctx, js); err != nil {
		t.Fatal(err)
	}
	s, err := js.Stream(ctx, bus.StreamDLQ)
	if err != nil {
		t.Fatal(err)
	}
	events, err := js.Stream(ctx, bus.StreamEvents)
	if err != nil {
		t.Fatal(err)
	}
	subject := bus.EventSubject(bus.ClassModeration, "!r:x")
	store := func(d bus.DeadLetter) Letter {
		t.Helper()
		if err := bus.PublishDeadLetter(ctx, js, d); err != nil {
			t.Fatal(err)
		}
		info, err := s.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		l, err := Get(ctx, s, info.State.LastSeq)
		if err != nil {
			t.Fatal(err)
		}
		return l
	}

	// First failure: the origin is the failed message itself.
	first := store(bus.DeadLetter{Source: bus.ConsumerModeration, Stream: bus.StreamEvents, Sequence: 7, Subject: subject, Reason: "x", Data: []byte("ev")})
	if to, err := Replayers(nil).Replay(ctx, js, s, first); err != nil || to != subject {
		t.Fatalf("Replay = %q, %v", to, err)
	}
	if _, err := Get(ctx, s, first.Seq); err == nil {
		t.Fatal("dead letter kept after a replay")
	}
	m, err := events.GetLastMsgForSubject(ctx, subject)
	if err != nil {
		t.Fatal(err)
	}
	o, ok := bus.ReplayOrigin(m.Header)
	if !ok || o.Sequence != 7 || o.Consumer != bus.ConsumerModeration || string(m.Data) != "ev" {
		t.Fatalf("replayed %q with origin %+v %v", m.Data, o, ok)
	}

	// The replay failed again: its dead letter carries the replay's own
	// stream and sequence, but the origin stays the first message's.
	h := nats.Header{}
	bus.SetReplayOrigin(h, o)
	again := store(bus.DeadLetter{Source: bus.ConsumerModeration, Stream: bus.StreamEvents, Sequence: m.Sequence, Subject: subject, Reason: "y", Data: []byte("ev"), Header: h})
	if _, err := Replayers(nil).Replay(ctx, js, s, again); err != nil {
		t.Fatal(err)
	}
	m, err = events.GetLastMsgForSubject(ctx, subject)
	if err != nil {
		t.Fatal(err)
	}
	if o2, _ := bus.ReplayOrigin(m.Header); o2.Sequence != 7 {
		t.Fatalf("second replay's origin %+v, want the first message's (7)", o2)
	}

	// Sources without a way back are refused and kept.
	for _, src := range []string{"gateway", "someone-else"} {
		l := store(bus.DeadLetter{Source: src, Subject: subject, Reason: "z", Data: []byte("{}")})
		if _, err := Replayers(nil).Replay(ctx, js, s, l); !errors.Is(err, ErrNotReplayable) {
			t.Fatalf("%s: Replay = %v, want ErrNotReplayable", src, err)
		}
		if _, err := Get(ctx, s, l.Seq); err != nil {
			t.Fatalf("%s: dead letter not kept: %v", src, err)
		}
	}

	// A way back the caller supplies is taken for its source, and the dead
	// letter goes only when it succeeded.
	rs := Replayers{"gateway": func(_ context.Context, _ jetstream.JetStream, l Letter) (string, error) {
		if string(l.Data) == `"bad"` {
			return "", errors.New("still refused")
		}
		return "cactus.ev.other.x", nil
	}}
	good := store(bus.DeadLetter{Source: "gateway", Subject: subject, Reason: "g", Data: []byte(`"good"`)})
	bad := store(bus.DeadLetter{Source: "gateway", Subject: subject, Reason: "g", Data: []byte(`"bad"`)})
	if to, err := rs.Replay(ctx, js, s, good); err != nil || to != "cactus.ev.other.x" {
		t.Fatalf("Replay with a gateway way back = %q, %v", to, err)
	}
	if _, err := Get(ctx, s, good.Seq); err == nil {
		t.Fatal("dead letter kept after its replay succeeded")
	}
	if _, err := rs.Replay(ctx, js, s, bad); err == nil {
		t.Fatal("a refused replay reported success")
	}
	if _, err := Get(ctx, s, bad.Seq); err != nil {
		t.Fatalf("refused dead letter not kept: %v", err)
	}
}
