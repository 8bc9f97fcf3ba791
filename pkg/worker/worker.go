// Package worker runs a JetStream durable consumer with the retry rules of
// the architecture (invariant 6): success acks; a permanent error or the
// last allowed delivery dead-letters with the reason; anything else is
// redelivered after a backoff, or after the delay the homeserver asked for.
// Long handlers keep their message with progress signals, and messages with
// the same ordering key (by default the subject, which names the room) are
// handled one after another.
package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/cactus-comments/appservice/pkg/bus"
)

type permanentError struct{ err error }

func (e permanentError) Error() string { return e.err.Error() }
func (e permanentError) Unwrap() error { return e.err }

// Permanent marks err as one that retrying cannot fix: the message goes to
// the dead-letter stream at once.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return permanentError{err}
}

// IsPermanent reports whether err was marked Permanent.
func IsPermanent(err error) bool {
	var p permanentError
	return errors.As(err, &p)
}

type delayError struct {
	err   error
	delay time.Duration
}

func (e delayError) Error() string { return e.err.Error() }
func (e delayError) Unwrap() error { return e.err }

// RetryAfter asks for redelivery after d, e.g. what a 429 said.
func RetryAfter(err error, d time.Duration) error {
	if err == nil {
		return nil
	}
	return delayError{err, d}
}

// Handler processes one message. ctx is not cancelled by shutdown: a
// handler that has started is allowed to finish (within the service's
// shutdown timeout).
type Handler func(ctx context.Context, m jetstream.Msg) error

// Options configure Run.
type Options struct {
	Stream, Consumer string
	// Concurrency is the number of lanes: messages in flight at once.
	Concurrency int
	// MaxDeliver: deliveries before a failing message is dead-lettered.
	MaxDeliver int
	// MinBackoff and MaxBackoff bound the redelivery delay of failures,
	// which grows exponentially with jitter.
	MinBackoff, MaxBackoff time.Duration
	// OrderKey maps a message to its ordering key; messages with equal
	// keys run one after another, in the order they arrived, in this
	// replica. The empty key means no order: such messages run as soon as
	// a slot is free. Default: the subject (events: their room). Use
	// Unordered for independent work such as fan-out jobs.
	OrderKey func(jetstream.Msg) string
	// Progress is how often a running handler tells JetStream it is alive.
	Progress time.Duration
	Log      *slog.Logger
	Metrics  *Metrics
}

// Metrics are the counters of every consumer of a service.
type Metrics struct {
	messages *prometheus.CounterVec
	duration *prometheus.HistogramVec
}

// NewMetrics registers the worker metrics in reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		messages: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cactus_worker_messages_total",
			Help: "Messages handled by consumer and outcome (ok, retry, dead_letter).",
		}, []string{"consumer", "outcome"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "cactus_worker_handle_duration_seconds",
			Help:    "Time spent handling one message, by consumer.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}, []string{"consumer"}),
	}
	reg.MustRegister(m.messages, m.duration)
	return m
}

func (o *Options) defaults() {
	if o.Concurrency <= 0 {
		o.Concurrency = 1
	}
	if o.MaxDeliver <= 0 {
		o.MaxDeliver = 5
	}
	if o.MinBackoff <= 0 {
		o.MinBackoff = 500 * time.Millisecond
	}
	if o.MaxBackoff <= 0 {
		o.MaxBackoff = time.Minute
	}
	if o.OrderKey == nil {
		o.OrderKey = func(m jetstream.Msg) string { return m.Subject() }
	}
	if o.Progress <= 0 {
		o.Progress = bus.AckWait / 4
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
}

// Run consumes until ctx ends, then stops fetching, returns unstarted
// messages for redelivery, waits for running handlers and returns.
func Run(ctx context.Context, js jetstream.JetStream, o Options, h Handler) error {
	o.defaults()
	if o.Metrics != nil {
		// Every outcome exists at 0 from the start: an increase() alert
		// then sees the first dead letter after a restart.
		for _, outcome := range []string{"ok", "retry", "dead_letter"} {
			o.Metrics.messages.WithLabelValues(o.Consumer, outcome)
		}
		o.Metrics.duration.WithLabelValues(o.Consumer)
	}
	cons, err := js.Consumer(ctx, o.Stream, o.Consumer)
	if err != nil {
		if ctx.Err() != nil {
			// Asked to stop before consuming anything: a clean stop.
			return nil
		}
		return fmt.Errorf("worker %s: %w", o.Consumer, err)
	}
	// Short pull requests: a pull request the server forgot about (seen
	// once under heavy load on the MaxAckPending=1 moderation consumer)
	// stalls the consumer until it expires, 30 s by default.
	it, err := cons.Messages(jetstream.PullMaxMessages(2*o.Concurrency), jetstream.PullExpiry(5*time.Second))
	if err != nil {
		return fmt.Errorf("worker %s: %w", o.Consumer, err)
	}
	var wg sync.WaitGroup
	hctx := context.WithoutCancel(ctx)
	held := newHeld()
	stopProgress := held.keepAlive(o.Progress)
	defer stopProgress()
	d := dispatcher{
		sem:    make(chan struct{}, o.Concurrency),
		queues: map[string][]jetstream.Msg{},
		run: func(m jetstream.Msg) {
			if ctx.Err() != nil {
				// Shutting down: hand it back at once for another replica.
				_ = m.Nak()
			} else {
				o.handle(hctx, js, m, h)
			}
			held.remove(m)
		},
		wg: &wg,
	}
	stop := context.AfterFunc(ctx, it.Drain)
	defer stop()
	var lastErr error
	for {
		m, err := it.Next()
		if err != nil {
			if errors.Is(err, jetstream.ErrMsgIteratorClosed) {
				if lastErr == nil {
					lastErr = err
				}
				break
			}
			// A deleted consumer or a closed connection ends the iterator
			// with this error first; the next call reports it closed.
			lastErr = err
			o.Log.Warn("worker: fetch failed", "consumer", o.Consumer, "err", err)
			continue
		}
		held.add(m)
		d.dispatch(o.OrderKey(m), m)
	}
	wg.Wait()
	if ctx.Err() == nil {
		// Not asked to stop: the consumer or the connection went away, and
		// the service must not carry on as if it were still consuming.
		return fmt.Errorf("worker %s: stopped consuming: %w", o.Consumer, lastErr)
	}
	return nil
}

func (o *Options) handle(ctx context.Context, js jetstream.JetStream, m jetstream.Msg, h Handler) {
	md, err := m.Metadata()
	delivered := 1
	if err == nil {
		delivered = int(md.NumDelivered)
	}
	start := time.Now()
	herr := safeCall(ctx, h, m)
	if o.Metrics != nil {
		o.Metrics.duration.WithLabelValues(o.Consumer).Observe(time.Since(start).Seconds())
	}
	log := o.Log.With("consumer", o.Consumer, "subject", m.Subject(), "delivered", delivered)
	if id := m.Headers().Get(bus.HeaderMsgID); id != "" {
		log = log.With("event_id", id)
	}
	switch {
	case herr == nil:
		o.count("ok")
		if err := m.Ack(); err != nil {
			log.Warn("worker: ack failed; the message will be redelivered and must be idempotent", "err", err)
		}
	case IsPermanent(herr) || delivered >= o.MaxDeliver:
		o.count("dead_letter")
		log.Error("worker: giving up, dead-lettering", "err", herr)
		dl := bus.DeadLetter{Source: o.Consumer, Stream: o.Stream, Subject: m.Subject(), Reason: herr.Error(), Delivered: delivered, Data: m.Data(), Header: m.Headers()}
		if md != nil {
			// A lost Term redelivers the message; this keeps its second
			// failure from being stored twice.
			dl.ID = fmt.Sprintf("%s:%s:%d", o.Stream, o.Consumer, md.Sequence.Stream)
		}
		if err := bus.PublishDeadLetter(ctx, js, dl); err != nil {
			// Not stored in the dead-letter stream: keep the message.
			log.Error("worker: dead-letter publish failed; retrying later", "err", err)
			_ = m.NakWithDelay(o.MaxBackoff)
			return
		}
		_ = m.Term()
	default:
		o.count("retry")
		delay := o.backoff(delivered)
		var de delayError
		if errors.As(herr, &de) && de.delay > 0 {
			delay = de.delay
		}
		log.Warn("worker: failed, will retry", "err", herr, "in", delay)
		_ = m.NakWithDelay(delay)
	}
}

// held is every message this worker has taken from the consumer and not
// yet settled: running, or queued in a lane behind a message of the same
// key. All of them are reported in progress, because a message that waits
// in a lane behind a slow one longer than AckWait would otherwise be
// redelivered to another replica while still queued here, and handled
// twice and out of order.
type held struct {
	mu   sync.Mutex
	msgs map[jetstream.Msg]struct{}
}

func newHeld() *held { return &held{msgs: map[jetstream.Msg]struct{}{}} }

// Unordered is an OrderKey for messages that may run in any order.
func Unordered(jetstream.Msg) string { return "" }

// dispatcher runs at most cap(sem) handlers at once. A message whose key
// already has a runner waits in that key's queue instead of taking a slot,
// so a slow key delays only its own messages; the fetch loop blocks only
// when every slot is busy. Queues cannot grow without bound: the consumer's
// MaxAckPending caps what this replica holds.
type dispatcher struct {
	sem    chan struct{}
	mu     sync.Mutex
	queues map[string][]jetstream.Msg // keys with a runner, and what waits behind it
	run    func(jetstream.Msg)
	wg     *sync.WaitGroup
}

func (d *dispatcher) dispatch(key string, m jetstream.Msg) {
	if key != "" {
		d.mu.Lock()
		if q, busy := d.queues[key]; busy {
			d.queues[key] = append(q, m)
			d.mu.Unlock()
			return
		}
		d.queues[key] = nil
		d.mu.Unlock()
	}
	d.sem <- struct{}{}
	d.wg.Go(func() {
		defer func() { <-d.sem }()
		for {
			d.run(m)
			if key == "" {
				return
			}
			d.mu.Lock()
			q := d.queues[key]
			if len(q) == 0 {
				delete(d.queues, key)
				d.mu.Unlock()
				return
			}
			m, d.queues[key] = q[0], q[1:]
			d.mu.Unlock()
		}
	})
}

func (h *held) add(m jetstream.Msg) {
	h.mu.Lock()
	h.msgs[m] = struct{}{}
	h.mu.Unlock()
}

func (h *held) remove(m jetstream.Msg) {
	h.mu.Lock()
	delete(h.msgs, m)
	h.mu.Unlock()
}

// keepAlive signals progress on every held message every interval until
// the returned function is called.
func (h *held) keepAlive(every time.Duration) (stop func()) {
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				h.mu.Lock()
				msgs := make([]jetstream.Msg, 0, len(h.msgs))
				for m := range h.msgs {
					msgs = append(msgs, m)
				}
				h.mu.Unlock()
				for _, m := range msgs {
					_ = m.InProgress()
				}
			}
		}
	}()
	var once sync.Once
	return func() {
		once.Do(func() {
			close(done)
			<-finished
		})
	}
}

func (o *Options) count(outcome string) {
	if o.Metrics != nil {
		o.Metrics.messages.WithLabelValues(o.Consumer, outcome).Inc()
	}
}

// backoff grows exponentially with the delivery count, with jitter so that
// replicas retrying together do not hit the homeserver together.
func (o *Options) backoff(delivered int) time.Duration {
	d := o.MinBackoff << min(delivered-1, 20)
	if d > o.MaxBackoff || d <= 0 {
		d = o.MaxBackoff
	}
	return d/2 + rand.N(d/2+1)
}

// safeCall turns a handler panic into a permanent error so one poisoned
// message cannot crash every replica in turn.
func safeCall(ctx context.Context, h Handler, m jetstream.Msg) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = Permanent(fmt.Errorf("handler panic: %v", r))
		}
	}()
	return h(ctx, m)
}
