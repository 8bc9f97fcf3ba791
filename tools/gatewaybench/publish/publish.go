// Package publish holds the ways a gateway can store one homeserver
// transaction's events in JetStream, side by side so that one benchmark
// measures them against each other on the same server and workload:
//
//   - Async: nats.go's PublishMsgAsync per event, then every PubAck awaited
//     (what the gateway does today, and the floor it is compared with);
//   - Lean: one reply subscription for the whole connection, acks scanned
//     rather than JSON-decoded, one deadline per transaction;
//   - Atomic: a JetStream atomic batch (one commit, one PubAck per
//     transaction), falling back to Async when the batch holds an event
//     already stored;
//   - Fast: a JetStream fast batch (flow-controlled, duplicates skipped,
//     one PubAck at the commit);
//   - Whole: the transaction as a single message, the limit of "fewer
//     messages per event".
//
// Every Publisher keeps the gateway's promise: Publish returns nil only
// when every event of the transaction is in the stream, stored now or
// before (a duplicate).
package publish

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Txn is one homeserver transaction, ready to publish: one message per
// event with its subject and headers (Nats-Msg-Id the event id).
type Txn struct {
	ID   string
	Msgs []*nats.Msg
	// Body is the transaction as received, for Whole.
	Body []byte
}

// Result is what a stored transaction reports.
type Result struct {
	// Duplicates is how many events JetStream already had.
	Duplicates int
	// Fallback is true when a batch design had to publish event by event.
	Fallback bool
}

// Publisher stores transactions. Publish may be called from several
// goroutines at once, one transaction each.
type Publisher interface {
	Publish(ctx context.Context, txn *Txn) (Result, error)
	Close()
}

// Designs names every Publisher New builds.
var Designs = []string{"async", "lean", "atomic", "fast", "whole"}

// New builds the publisher named design on nc. maxPending bounds
// unacknowledged async publishes (the gateway's is 8192).
func New(design string, nc *nats.Conn, maxPending int) (Publisher, error) {
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(maxPending))
	if err != nil {
		return nil, fmt.Errorf("publish: %w", err)
	}
	switch design {
	case "async":
		return &Async{js: js}, nil
	case "lean":
		return NewLean(nc)
	case "atomic":
		return &Atomic{js: js, fallback: &Async{js: js}}, nil
	case "fast":
		return &Fast{js: js}, nil
	case "whole":
		return &Whole{js: js}, nil
	}
	return nil, fmt.Errorf("publish: unknown design %q (want one of %v)", design, Designs)
}

// Async is the gateway's publisher: PublishMsgAsync per event, then the
// acks awaited from the last one (they arrive in order, so that is one
// wake-up per transaction).
type Async struct {
	js jetstream.JetStream
}

func (a *Async) Close() {}

func (a *Async) Publish(ctx context.Context, txn *Txn) (Result, error) {
	futs := make([]jetstream.PubAckFuture, 0, len(txn.Msgs))
	for _, m := range txn.Msgs {
		f, err := a.js.PublishMsgAsync(m)
		if err != nil {
			return Result{}, fmt.Errorf("publish %s: %w", m.Header.Get(jetstream.MsgIDHeader), err)
		}
		futs = append(futs, f)
	}
	return waitAll(ctx, futs)
}

func waitAll(ctx context.Context, futs []jetstream.PubAckFuture) (Result, error) {
	var r Result
	for i := len(futs) - 1; i >= 0; i-- {
		select {
		case ack := <-futs[i].Ok():
			if ack.Duplicate {
				r.Duplicates++
			}
		case err := <-futs[i].Err():
			return r, fmt.Errorf("event %s: %w", futs[i].Msg().Header.Get(jetstream.MsgIDHeader), err)
		case <-ctx.Done():
			return r, fmt.Errorf("acks: %w", context.Cause(ctx))
		}
	}
	return r, nil
}

// Whole publishes the transaction as one message on its own subject,
// deduplicated by a hash of its event ids. Consumers would have to split
// it and would lose per-room subjects: it measures what "fewer messages"
// can gain at most.
type Whole struct {
	js jetstream.JetStream
}

func (w *Whole) Close() {}

func (w *Whole) Publish(ctx context.Context, txn *Txn) (Result, error) {
	h := sha256.New()
	for _, m := range txn.Msgs {
		h.Write([]byte(m.Header.Get(jetstream.MsgIDHeader)))
		h.Write([]byte{0})
	}
	var sum [sha256.Size]byte
	id := hex.EncodeToString(h.Sum(sum[:0]))
	m := &nats.Msg{Subject: "cactus.ev.txn." + id[:16], Data: txn.Body, Header: nats.Header{jetstream.MsgIDHeader: {"txn:" + id}}}
	f, err := w.js.PublishMsgAsync(m)
	if err != nil {
		return Result{}, fmt.Errorf("publish transaction: %w", err)
	}
	return waitAll(ctx, []jetstream.PubAckFuture{f})
}

// errCode is the JetStream error code of err, 0 if it has none.
func errCode(err error) jetstream.ErrorCode {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		return apiErr.ErrorCode
	}
	return 0
}
