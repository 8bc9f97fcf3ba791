package publish

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/cactus-comments/appservice/pkg/jspub"
)

// Lean publishes with pkg/jspub, the publisher the gateway uses: core
// NATS and one reply subscription per connection, acks scanned rather than
// JSON-decoded, one deadline per transaction instead of nats.go's timer
// per message.
type Lean struct {
	p *jspub.Publisher
}

// NewLean subscribes to the connection's reply subjects.
func NewLean(nc *nats.Conn) (*Lean, error) {
	p, err := jspub.New(nc)
	if err != nil {
		return nil, fmt.Errorf("publish: %w", err)
	}
	return &Lean{p: p}, nil
}

func (l *Lean) Close() { l.p.Close() }

func (l *Lean) Publish(ctx context.Context, txn *Txn) (Result, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, leanDeadline)
		defer cancel()
	}
	b := l.p.Publish(txn.Msgs)
	if err := b.Wait(ctx); err != nil {
		return Result{}, err
	}
	return Result{Duplicates: b.Duplicates()}, nil
}

// leanDeadline is how long a Lean transaction waits when its context has
// no deadline.
const leanDeadline = 10 * time.Second
