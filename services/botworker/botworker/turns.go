package botworker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/cactus-comments/appservice/pkg/bus"
	"github.com/cactus-comments/appservice/pkg/cas"
	"github.com/cactus-comments/appservice/pkg/event"
)

// turns keeps the events of one room in order across replicas. The
// worker's lanes order a room's events within one replica only; with
// several replicas the next command of a room could run at the same time
// on another replica. So each room records, in the bot state bucket, the
// stream sequence of its last finished event, and an event waits until
// every earlier event of its room in the stream is finished.
//
// Waiting holds a worker lane, so it is short (maxWait); an event still
// blocked after it goes back to JetStream for a later delivery (errTurn),
// which frees the lane for the earlier event if it was being retried
// behind it. An earlier event that never finishes (JetStream gave up on
// it) delays its room only until the later event's last deliveries, which
// go ahead regardless (force). Only rooms
// that are not ours go through here (direct chats and other rooms the bot
// was invited to): comment rooms, where most messages come from, have
// nothing for the bot to do and need no order.
type turns struct {
	kv       jetstream.KeyValue
	stream   jetstream.Stream
	consumer jetstream.Consumer
	maxWait  time.Duration
	recheck  time.Duration
	bot      string // events the bot sent itself are not ordered
	log      *slog.Logger
	waits    *prometheus.CounterVec
}

// turn is an event's place in its room.
type turn struct {
	key string
	seq uint64
	// rev is the revision of the room's record when the event's wait
	// ended (0: no record), so that finishing usually takes one write.
	rev uint64
}

func turnKey(room string) string { return "turn." + bus.Token(room) }

// errTurn says an earlier event of the room is still unfinished.
var errTurn = errors.New("room order: an earlier event of the room is still being handled")

// wait returns once every event of subject's room stored before seq has
// finished. After maxWait it returns errTurn, unless force is set, in
// which case the event goes ahead out of order.
func (t *turns) wait(ctx context.Context, subject, room string, seq uint64, force bool) (turn, error) {
	tn := turn{key: turnKey(room), seq: seq}
	deadline := time.Now().Add(t.maxWait)
	var w jetstream.KeyWatcher
	defer func() {
		if w != nil {
			_ = w.Stop()
		}
	}()
	waited := false
	for {
		last, rev, err := t.last(ctx, tn.key)
		if err != nil {
			return tn, err
		}
		tn.rev = rev
		if seq <= last {
			// A redelivery of a finished event: handlers are idempotent.
			return tn, nil
		}
		first, err := t.firstUnfinished(ctx, subject, last)
		switch {
		case errors.Is(err, jetstream.ErrMsgNotFound):
			return tn, nil
		case err != nil:
			return tn, fmt.Errorf("room order: %w", err)
		case first >= seq:
			if waited {
				t.waits.WithLabelValues("waited").Inc()
			}
			return tn, nil
		}
		// An earlier event of the room is not finished.
		if w == nil {
			if w, err = t.kv.Watch(ctx, tn.key, jetstream.UpdatesOnly()); err != nil {
				return tn, fmt.Errorf("room order: watch: %w", err)
			}
			continue // it may have finished before the watch started
		}
		left := time.Until(deadline)
		if left <= 0 {
			if !force {
				t.waits.WithLabelValues("redelivered").Inc()
				return tn, fmt.Errorf("%w (event %d waits for %d)", errTurn, seq, first)
			}
			t.waits.WithLabelValues("out_of_order").Inc()
			t.log.Warn("earlier event of the room still unfinished; going ahead out of order",
				"room_id", room, "seq", seq, "waiting_for", first)
			return tn, nil
		}
		waited = true
		timer := time.NewTimer(min(left, t.recheck))
		select {
		case <-w.Updates():
		case <-timer.C:
		case <-ctx.Done():
			timer.Stop()
			return tn, ctx.Err()
		}
		timer.Stop()
	}
}

// firstUnfinished is the sequence of the room's first event after last
// that needs to finish before later ones. Events the bot sent itself are
// skipped: the bot does nothing with them (its messages are ignored, its
// own joins and leaves change nothing that order matters for), so they
// neither wait nor are waited for, which halves the work in a chat where
// every command has a reply. Malformed events, which HandleMsg refuses
// before ordering them, are skipped too.
func (t *turns) firstUnfinished(ctx context.Context, subject string, last uint64) (uint64, error) {
	for {
		m, err := t.stream.GetMsg(ctx, last+1, jetstream.WithGetMsgSubject(subject))
		if err != nil {
			return 0, err
		}
		if ev, err := event.Decode(m.Data); err == nil && ev.Sender != t.bot {
			return m.Sequence, nil
		}
		// The bot's own event, or one the handler refuses before it gets
		// here (undecodable, malformed): nothing to wait for.
		last = m.Sequence
	}
}

// last is the sequence of the room's last finished event and the
// revision of its record. A room never seen before starts at the
// consumer's ack floor: everything at or below it is finished.
func (t *turns) last(ctx context.Context, key string) (seq, rev uint64, err error) {
	e, err := t.kv.Get(ctx, key)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		info, err := t.consumer.Info(ctx)
		if err != nil {
			return 0, 0, fmt.Errorf("room order: consumer info: %w", err)
		}
		return info.AckFloor.Stream, 0, nil
	case err != nil:
		return 0, 0, fmt.Errorf("room order: %w", err)
	}
	n, err := strconv.ParseUint(string(e.Value()), 10, 64)
	if err != nil {
		return 0, e.Revision(), nil // unreadable: treat as nothing finished yet
	}
	return n, e.Revision(), nil
}

// finish records that the event of tn is done, never moving backwards.
// The first try writes over the revision the wait saw; only when another
// replica wrote in between does it read again.
func (t *turns) finish(ctx context.Context, tn turn) error {
	val := []byte(strconv.FormatUint(tn.seq, 10))
	rev, known := tn.rev, true
	for attempt := 0; attempt < 50; attempt++ {
		if !known {
			e, err := t.kv.Get(ctx, tn.key)
			switch {
			case errors.Is(err, jetstream.ErrKeyNotFound):
				rev = 0
			case err != nil:
				return fmt.Errorf("room order: %w", err)
			default:
				if n, perr := strconv.ParseUint(string(e.Value()), 10, 64); perr == nil && n >= tn.seq {
					return nil
				}
				rev = e.Revision()
			}
		}
		var err error
		if rev == 0 {
			_, err = t.kv.Create(ctx, tn.key, val)
		} else {
			_, err = t.kv.Update(ctx, tn.key, val, rev)
		}
		if err == nil {
			return nil
		}
		if !cas.IsConflict(err) {
			return fmt.Errorf("room order: %w", err)
		}
		known = false
	}
	return errors.New("room order: too many concurrent writers")
}
