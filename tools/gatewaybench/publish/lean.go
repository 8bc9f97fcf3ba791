package publish

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Lean publishes with core NATS and one reply subscription per connection:
// the reply subject of event i of transaction t is <inbox>.<t>.<i>. An ack
// is scanned for an error or a duplicate, and only decoded when it holds an
// error. A transaction has one deadline, its context's, instead of nats.go's
// timer per message.
type Lean struct {
	nc     *nats.Conn
	sub    *nats.Subscription
	prefix string

	mu   sync.Mutex
	next uint64
	txns map[uint64]*pending
}

type pending struct {
	left, dups int
	err        error
	done       chan struct{}
}

// NewLean subscribes to the connection's reply subjects.
func NewLean(nc *nats.Conn) (*Lean, error) {
	l := &Lean{nc: nc, prefix: nc.NewInbox() + ".", txns: map[uint64]*pending{}}
	sub, err := nc.Subscribe(l.prefix+"*.*", l.onAck)
	if err != nil {
		return nil, fmt.Errorf("publish: reply subscription: %w", err)
	}
	// Acks are small; never drop one for a slow handler.
	if err := sub.SetPendingLimits(-1, -1); err != nil {
		return nil, err
	}
	l.sub = sub
	return l, nil
}

func (l *Lean) Close() { _ = l.sub.Unsubscribe() }

// errNoStream is what an ack without a body means: the server answered
// "no responders", no stream listens on the subject.
var errNoStream = errors.New("no stream took the message (no responders)")

func (l *Lean) Publish(ctx context.Context, txn *Txn) (Result, error) {
	if len(txn.Msgs) == 0 {
		return Result{}, nil
	}
	p := &pending{left: len(txn.Msgs), done: make(chan struct{})}
	l.mu.Lock()
	l.next++
	id := l.next
	l.txns[id] = p
	l.mu.Unlock()
	defer func() {
		l.mu.Lock()
		delete(l.txns, id)
		l.mu.Unlock()
	}()
	reply := strconv.AppendUint([]byte(l.prefix), id, 10)
	reply = append(reply, '.')
	base := len(reply)
	for i, m := range txn.Msgs {
		m.Reply = string(strconv.AppendInt(reply[:base], int64(i), 10))
		if err := l.nc.PublishMsg(m); err != nil {
			return Result{}, fmt.Errorf("publish %s: %w", m.Header.Get(jetstream.MsgIDHeader), err)
		}
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, leanDeadline)
		defer cancel()
	}
	select {
	case <-p.done:
	case <-ctx.Done():
		return Result{}, fmt.Errorf("acks: %w", context.Cause(ctx))
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return Result{Duplicates: p.dups}, p.err
}

func (l *Lean) onAck(m *nats.Msg) {
	rest, ok := strings.CutPrefix(m.Subject, l.prefix)
	if !ok {
		return
	}
	t, i, _ := strings.Cut(rest, ".")
	id, err := strconv.ParseUint(t, 10, 64)
	if err != nil {
		return
	}
	dup, ackErr := scanAck(m)
	l.mu.Lock()
	defer l.mu.Unlock()
	p := l.txns[id]
	if p == nil || p.left == 0 {
		return // a transaction that already failed or gave up
	}
	if ackErr != nil {
		p.err = fmt.Errorf("event %s of the transaction: %w", i, ackErr)
		p.left = 0
		close(p.done)
		return
	}
	if dup {
		p.dups++
	}
	if p.left--; p.left == 0 {
		close(p.done)
	}
}

var (
	keyError     = []byte(`"error"`)
	keyDuplicate = []byte(`"duplicate"`)
	keyStream    = []byte(`"stream"`)
)

// scanAck reads a PubAck without decoding it in the common case: it is
// {"stream":..,"seq":..} with ,"duplicate": true when already stored.
func scanAck(m *nats.Msg) (duplicate bool, err error) {
	if len(m.Data) == 0 {
		if s := m.Header.Get("Status"); s != "" {
			return false, fmt.Errorf("%w: status %s", errNoStream, s)
		}
		return false, errNoStream
	}
	if bytes.Contains(m.Data, keyError) || !bytes.Contains(m.Data, keyStream) {
		var resp struct {
			Error *jetstream.APIError `json:"error"`
		}
		if err := json.Unmarshal(m.Data, &resp); err != nil {
			return false, fmt.Errorf("unreadable PubAck %q: %w", m.Data, err)
		}
		if resp.Error != nil {
			return false, resp.Error
		}
		return false, fmt.Errorf("PubAck without a stream: %q", m.Data)
	}
	return bytes.Contains(m.Data, keyDuplicate), nil
}

// leanDeadline is how long a Lean transaction waits when its context has
// no deadline.
const leanDeadline = 10 * time.Second
