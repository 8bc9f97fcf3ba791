package bus

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Versions before the bot's partitions consumed its events through one
// durable consumer (RetiredConsumerBot) and kept each room's order in
// records of the bot state bucket ("turn.<room>"). This version declares
// neither: MigrateRetired moves what an older version left behind.

// retiredTurns are the per-room order records of earlier versions.
const retiredTurns = "turn.>"

// Migration is what MigrateRetired did.
type Migration struct {
	// Moved is how many bot events waiting in the retired consumer were
	// stored again under their partitions.
	Moved int
	// ConsumerDeleted: the retired consumer existed and is gone.
	ConsumerDeleted bool
	// TurnsPurged is how many order records were deleted.
	TurnsPurged uint64
}

// MigrateRetired moves the bot's events still waiting in the retired
// consumer to the partitions, deletes that consumer, and purges the old
// order records. It is safe to run again, and does nothing once done.
//
// The event stream must already have this version's subject transform
// (Ensure): each waiting event is published again on the subject it was
// stored under, cactus.ev.bot.<room>, which the transform stores under the
// room's partition, and acknowledged on the retired consumer only once
// stored. The events go in stream order, so a room's waiting events keep
// their order; they land after events stored since the transform was
// added. The retired consumer's filter is first narrowed to unpartitioned
// subjects, so that it stops seeing what the partitions already deliver.
// Events delivered to a botworker of the old version and not acknowledged
// come back after its AckWait, which MigrateRetired waits for, within
// ctx. progress, if set, hears how far it is.
func (t Topology) MigrateRetired(ctx context.Context, js jetstream.JetStream, progress func(string)) (Migration, error) {
	var out Migration
	if progress == nil {
		progress = func(string) {}
	}
	g := t.BotGroup()
	cons, err := js.Consumer(ctx, g.Stream, RetiredConsumerBot)
	switch {
	case errors.Is(err, jetstream.ErrConsumerNotFound):
	case err != nil:
		return out, fmt.Errorf("retired consumer %s: %w", RetiredConsumerBot, err)
	default:
		if out.Moved, err = t.moveRetired(ctx, js, cons, progress); err != nil {
			return out, err
		}
		if err := js.DeleteConsumer(ctx, g.Stream, RetiredConsumerBot); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
			return out, fmt.Errorf("delete retired consumer %s: %w", RetiredConsumerBot, err)
		}
		out.ConsumerDeleted = true
		progress(fmt.Sprintf("moved %d waiting bot events to their partitions; deleted consumer %s", out.Moved, RetiredConsumerBot))
	}
	s, err := js.Stream(ctx, "KV_"+BucketLimit)
	if err != nil {
		return out, fmt.Errorf("bucket %s: %w", BucketLimit, err)
	}
	before := s.CachedInfo().State.Msgs
	if err := s.Purge(ctx, jetstream.WithPurgeSubject("$KV."+BucketLimit+"."+retiredTurns)); err != nil {
		return out, fmt.Errorf("purge the old order records: %w", err)
	}
	if info, err := s.Info(ctx); err == nil && info.State.Msgs < before {
		out.TurnsPurged = before - info.State.Msgs
		progress(fmt.Sprintf("deleted %d old per-room order records", out.TurnsPurged))
	}
	return out, nil
}

func (t Topology) moveRetired(ctx context.Context, js jetstream.JetStream, cons jetstream.Consumer, progress func(string)) (int, error) {
	g := t.BotGroup()
	s, err := js.Stream(ctx, g.Stream)
	if err != nil {
		return 0, err
	}
	if tr := s.CachedInfo().Config.SubjectTransform; tr == nil || tr.Source != g.SubjectTransform().Source {
		return 0, fmt.Errorf("stream %s stores the bot's events without their partitions: ensure the topology first (cactusctl topology ensure)", g.Stream)
	}
	cfg := cons.CachedInfo().Config
	if old := "cactus.ev." + string(g.Class) + ".*"; cfg.FilterSubject != old {
		cfg.FilterSubject, cfg.FilterSubjects = old, nil
		if cons, err = js.UpdateConsumer(ctx, g.Stream, cfg); err != nil {
			return 0, fmt.Errorf("narrow retired consumer %s to unpartitioned events: %w", RetiredConsumerBot, err)
		}
	}
	moved := 0
	for {
		batch, err := cons.Fetch(64, jetstream.FetchMaxWait(time.Second))
		if err != nil {
			return moved, err
		}
		n := 0
		for m := range batch.Messages() {
			if err := moveOne(ctx, js, m); err != nil {
				return moved, err
			}
			n++
		}
		if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) && !errors.Is(err, jetstream.ErrNoMessages) {
			return moved, err
		}
		moved += n
		if n > 0 {
			progress(fmt.Sprintf("moved %d waiting bot events", moved))
			continue
		}
		info, err := cons.Info(ctx)
		if err != nil {
			return moved, err
		}
		if info.NumPending == 0 && info.NumAckPending == 0 {
			return moved, nil
		}
		// Delivered to an old botworker that never acknowledged them: they
		// come back after the consumer's AckWait.
		progress(fmt.Sprintf("%d bot events still held by stopped botworkers; waiting for them to come back", info.NumAckPending))
		select {
		case <-ctx.Done():
			return moved, fmt.Errorf("retired consumer %s still holds %d events: %w", RetiredConsumerBot, info.NumAckPending, ctx.Err())
		case <-time.After(time.Second):
		}
	}
}

// moveOne stores m again on its subject (the transform puts it in its
// partition) and acknowledges it once stored. The message id is the
// original's stream sequence: a second run within the duplicate window
// stores nothing twice, and the event id it had would be refused as a
// duplicate of the original.
func moveOne(ctx context.Context, js jetstream.JetStream, m jetstream.Msg) error {
	md, err := m.Metadata()
	if err != nil {
		return err
	}
	out := nats.NewMsg(m.Subject())
	for k, vs := range m.Headers() {
		for _, v := range vs {
			out.Header.Add(k, v)
		}
	}
	out.Header.Set(HeaderMsgID, "cactus-migrated-"+strconv.FormatUint(md.Sequence.Stream, 10))
	out.Data = m.Data()
	if _, err := js.PublishMsg(ctx, out); err != nil {
		return fmt.Errorf("store bot event %d under its partition: %w", md.Sequence.Stream, err)
	}
	if err := m.DoubleAck(ctx); err != nil {
		return fmt.Errorf("acknowledge moved bot event %d: %w", md.Sequence.Stream, err)
	}
	return nil
}
