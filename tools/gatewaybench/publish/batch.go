package publish

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/synadia-io/orbit.go/jetstreamext"
)

// MaxAtomicBatch is the server's default limit on an atomic batch's
// messages (JetStream's max_batch_size).
const MaxAtomicBatch = 1000

// Atomic publishes a transaction as atomic batches of at most
// MaxAtomicBatch messages: the server stages every message and stores all
// or none at the commit, answering one PubAck. The stream needs
// allow_atomic.
//
// An atomic batch holding a message id the stream already has is refused
// whole (error 10201): the retry of a transaction that was partly stored
// before, or a Dendrite retry with new events merged in. Atomic then
// publishes the transaction event by event, where each duplicate is
// acknowledged as such.
type Atomic struct {
	js       jetstream.JetStream
	fallback Publisher
}

func (a *Atomic) Close() {}

// codeBatchDuplicate: "atomic publish batch contains duplicate message id".
const codeBatchDuplicate jetstream.ErrorCode = 10201

func (a *Atomic) Publish(ctx context.Context, txn *Txn) (Result, error) {
	for start := 0; start < len(txn.Msgs); start += MaxAtomicBatch {
		chunk := txn.Msgs[start:min(len(txn.Msgs), start+MaxAtomicBatch)]
		_, err := jetstreamext.PublishMsgBatch(ctx, a.js, chunk,
			// No ack before the commit: one round trip per batch.
			jetstreamext.BatchFlowControl{AckFirst: false})
		if errCode(err) == codeBatchDuplicate {
			for _, m := range txn.Msgs {
				clearBatchHeaders(m)
			}
			r, err := a.fallback.Publish(ctx, txn)
			r.Fallback = true
			return r, err
		}
		if err != nil {
			return Result{}, fmt.Errorf("atomic batch of events %d to %d: %w", start, start+len(chunk)-1, err)
		}
	}
	for _, m := range txn.Msgs {
		clearBatchHeaders(m)
	}
	return Result{}, nil
}

func clearBatchHeaders(m *nats.Msg) {
	m.Header.Del(jetstreamext.BatchIDHeader)
	m.Header.Del(jetstreamext.BatchSeqHeader)
	m.Header.Del(jetstreamext.BatchCommitHeader)
	m.Reply = ""
}

// Fast publishes a transaction as a JetStream fast batch (the stream needs
// allow_batched): messages are stored as they arrive, an already stored
// message id is skipped, and the commit's PubAck says how many messages
// the batch counted. With gap mode "fail" an error stops the batch, so a
// count short of the transaction means some events are not stored.
type Fast struct {
	js jetstream.JetStream
}

func (f *Fast) Close() {}

func (f *Fast) Publish(ctx context.Context, txn *Txn) (Result, error) {
	n := len(txn.Msgs)
	if n == 0 {
		return Result{}, nil
	}
	var (
		mu      sync.Mutex
		flowErr error
	)
	fp, err := jetstreamext.NewFastPublisher(f.js,
		jetstreamext.FastPublishFlowControl{Flow: uint16(min(n, 500)), MaxOutstandingAcks: 2},
		jetstreamext.WithFastPublisherErrorHandler(func(err error) {
			mu.Lock()
			flowErr = errors.Join(flowErr, err)
			mu.Unlock()
		}))
	if err != nil {
		return Result{}, fmt.Errorf("fast batch: %w", err)
	}
	for _, m := range txn.Msgs[:n-1] {
		if _, err := fp.AddMsg(m); err != nil {
			return Result{}, fmt.Errorf("fast batch add: %w", err)
		}
	}
	ack, err := fp.CommitMsg(ctx, txn.Msgs[n-1])
	for _, m := range txn.Msgs {
		m.Reply = ""
	}
	if err != nil {
		return Result{}, fmt.Errorf("fast batch commit: %w", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if flowErr != nil {
		return Result{}, fmt.Errorf("fast batch: %w", flowErr)
	}
	if ack.BatchSize != uint64(n) {
		return Result{}, fmt.Errorf("fast batch committed %d of %d events", ack.BatchSize, n)
	}
	return Result{}, nil
}

// AllowBatches lets stream take atomic and fast batches; CreateOrUpdate
// of the stream without these flags (the services' topology) turns them
// off again.
func AllowBatches(ctx context.Context, js jetstream.JetStream, stream string) error {
	s, err := js.Stream(ctx, stream)
	if err != nil {
		return fmt.Errorf("publish: %w", err)
	}
	cfg := s.CachedInfo().Config
	cfg.AllowAtomicPublish, cfg.AllowBatchPublish = true, true
	if _, err := js.UpdateStream(ctx, cfg); err != nil {
		return fmt.Errorf("publish: allow batches on %s: %w", stream, err)
	}
	return nil
}
