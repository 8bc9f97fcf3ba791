package publish

import (
	"context"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/cactus-comments/appservice/pkg/bus"
	"github.com/cactus-comments/appservice/pkg/embednats"
)

// setUp starts a server with the services' topology and batches allowed.
func setUp(t *testing.T) (*embednats.Server, *nats.Conn, jetstream.JetStream) {
	t.Helper()
	s, nc, js := embednats.JetStreamTest(t)
	ctx := context.Background()
	if err := (bus.Topology{Replicas: 1}).Ensure(ctx, js); err != nil {
		t.Fatal(err)
	}
	if err := AllowBatches(ctx, js, bus.StreamEvents); err != nil {
		t.Fatal(err)
	}
	return s, nc, js
}

// txn builds events first..last (inclusive) of a run, spread over rooms.
func txn(run string, first, last int) *Txn {
	t := &Txn{ID: run, Body: []byte(`{"events":[]}`)}
	for i := first; i <= last; i++ {
		room := fmt.Sprintf("!r%d:example.org", i%3)
		m := nats.NewMsg(bus.EventSubject(bus.ClassBot, room))
		m.Header.Set(bus.HeaderMsgID, fmt.Sprintf("$%s-%d", run, i))
		m.Header.Set(bus.HeaderTxnID, run)
		m.Header.Set(bus.HeaderEventType, "m.room.message")
		m.Data = []byte(`{"type":"m.room.message","n":` + strconv.Itoa(i) + `}`)
		t.Msgs = append(t.Msgs, m)
	}
	return t
}

func newPublisher(t *testing.T, design string, nc *nats.Conn) Publisher {
	t.Helper()
	p, err := New(design, nc, 8192)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

func stored(t *testing.T, js jetstream.JetStream) uint64 {
	t.Helper()
	s, err := js.Stream(context.Background(), bus.StreamEvents)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Msgs
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

// perEvent are the designs that store one message per event.
var perEvent = []string{"async", "lean", "atomic", "fast"}

func TestEveryEventStored(t *testing.T) {
	for _, design := range perEvent {
		t.Run(design, func(t *testing.T) {
			_, nc, js := setUp(t)
			p := newPublisher(t, design, nc)
			// Two transactions, the second larger than an atomic batch.
			for i, tx := range []*Txn{txn("a", 0, 99), txn("b", 0, MaxAtomicBatch+10)} {
				r, err := p.Publish(ctx(t), tx)
				if err != nil {
					t.Fatalf("transaction %d: %v", i, err)
				}
				if r.Duplicates != 0 || r.Fallback {
					t.Errorf("transaction %d: %+v for new events", i, r)
				}
			}
			if n := stored(t, js); n != 100+MaxAtomicBatch+11 {
				t.Errorf("%d messages stored, want %d", n, 100+MaxAtomicBatch+11)
			}
		})
	}
}

// TestRetryWithStoredEvents is a homeserver retrying a transaction some
// of whose events were stored before (its first try timed out after a
// partial store, or Dendrite merged new events into the retried id): the
// retry must succeed and store each event once.
func TestRetryWithStoredEvents(t *testing.T) {
	for _, design := range perEvent {
		t.Run(design, func(t *testing.T) {
			_, nc, js := setUp(t)
			p := newPublisher(t, design, nc)
			if _, err := p.Publish(ctx(t), txn("r", 0, 9)); err != nil {
				t.Fatal(err)
			}
			r, err := p.Publish(ctx(t), txn("r", 5, 14))
			if err != nil {
				t.Fatalf("retry with 5 stored events: %v", err)
			}
			if n := stored(t, js); n != 15 {
				t.Errorf("%d messages stored, want 15", n)
			}
			switch design {
			case "async", "lean":
				if r.Duplicates != 5 {
					t.Errorf("%d duplicates reported, want 5", r.Duplicates)
				}
			case "atomic":
				if !r.Fallback || r.Duplicates != 5 {
					t.Errorf("atomic retry: %+v, want the per-event fallback with 5 duplicates", r)
				}
			}
			// The whole transaction again: everything is a duplicate.
			if _, err := p.Publish(ctx(t), txn("r", 0, 14)); err != nil {
				t.Fatalf("full retry: %v", err)
			}
			if n := stored(t, js); n != 15 {
				t.Errorf("after the full retry %d messages stored, want 15", n)
			}
		})
	}
}

func TestNoStreamIsAnError(t *testing.T) {
	for _, design := range Designs {
		t.Run(design, func(t *testing.T) {
			_, nc, js := setUp(t)
			if err := js.DeleteStream(context.Background(), bus.StreamEvents); err != nil {
				t.Fatal(err)
			}
			p := newPublisher(t, design, nc)
			c, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if _, err := p.Publish(c, txn("n", 0, 4)); err == nil {
				t.Fatal("no error though no stream takes the events")
			}
		})
	}
}

func TestNATSDownIsAnError(t *testing.T) {
	for _, design := range Designs {
		t.Run(design, func(t *testing.T) {
			s, _, _ := setUp(t)
			// A connection of its own that does not buffer while
			// disconnected, as the gateway's.
			nc, err := nats.Connect(s.ClientURL(), nats.ReconnectBufSize(-1))
			if err != nil {
				t.Fatal(err)
			}
			defer nc.Close()
			p := newPublisher(t, design, nc)
			s.Stop()
			c, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer cancel()
			if _, err := p.Publish(c, txn("d", 0, 4)); err == nil {
				t.Fatal("no error with NATS down")
			}
		})
	}
}

func TestWholeIsOneMessage(t *testing.T) {
	_, nc, js := setUp(t)
	p := newPublisher(t, "whole", nc)
	if _, err := p.Publish(ctx(t), txn("w", 0, 99)); err != nil {
		t.Fatal(err)
	}
	r, err := p.Publish(ctx(t), txn("w", 0, 99))
	if err != nil || r.Duplicates != 1 {
		t.Fatalf("retry: %+v, %v; want one duplicate", r, err)
	}
	if n := stored(t, js); n != 1 {
		t.Errorf("%d messages, want 1", n)
	}
}
