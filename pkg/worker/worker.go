// Package worker runs a JetStream durable consumer with the retry rules of
// the service. Every message ends in exactly one of two places: done
// (acknowledged), or the dead-letter stream with the reason.
//
//   - Success acknowledges. A handler that made a visible effect for an
//     event can leave a done marker (CheckDone), so the same event stored
//     again after the stream's duplicate window has no second effect.
//   - A permanent error (Permanent: a 403 or 400 from the homeserver,
//     undecodable input, a panic) dead-letters at once.
//   - Anything else is transient (network, timeouts, 5xx, 429) and is
//     retried with capped exponential backoff and jitter, or after the
//     delay the homeserver asked for (RetryAfter), until the retry horizon
//     has passed since the message was stored in its stream; only then is
//     it dead-lettered. A homeserver outage shorter than the horizon
//     (default 24 h) dead-letters nothing.
//
// JetStream itself never gives up on a message (the consumers have no
// delivery limit): a server-side limit would drop messages without a dead
// letter. A dead letter that cannot be stored keeps its message, to be
// retried like a transient failure.
//
// How a retry waits depends on the message. Messages with an ordering key
// (by default the subject, which names the room) are handled one after
// another per key, so a failed one stays here and is retried in place: its
// key stays blocked, but its lane is released while it waits, so other
// keys go on. Messages without a key (Unordered) go back to JetStream with
// a delay (NakWithDelay), which frees this replica entirely.
//
// A message is handled by at most one replica at a time, so a replica
// pulls only as many messages as it has free lanes: nothing waits here
// unsignalled while another replica could have taken it. Messages queued
// behind a busy key or waiting to be retried are held, and every held
// message is kept alive with a progress signal every Progress, which lets
// the consumers' AckWait be short: the messages of a replica that died
// come back within seconds.
//
// On shutdown (ctx ends) the worker stops pulling, gives running handlers
// a grace period, and then hands every message it still holds back to
// JetStream (Nak) in stream-sequence order before returning, so that whoever
// consumes next sees a key's messages in their order.
package worker

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/cactus-comments/appservice/pkg/bus"
	"github.com/cactus-comments/appservice/pkg/cas"
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

// RetryAfter asks for the next attempt after d, e.g. what a 429 said.
func RetryAfter(err error, d time.Duration) error {
	if err == nil {
		return nil
	}
	return delayError{err, d}
}

// notDue: the message is for later (see NotDue).
type notDue struct{ wait time.Duration }

func (e notDue) Error() string { return fmt.Sprintf("not due for another %s", e.wait) }

// NotDue tells the worker that the message is not to be handled before
// wait has passed: it is handed back for then, without counting or
// logging a failure. For work queued ahead as a safety net, such as a
// check that runs only if whoever queued it did not finish.
func NotDue(wait time.Duration) error { return notDue{wait} }

// Handler processes one message. Its ctx carries the attempt (Attempt,
// LastAttempt, CheckDone); it is not cancelled when the worker is asked to
// stop, only when the shutdown grace period is over.
type Handler func(ctx context.Context, m jetstream.Msg) error

// Options configure Run.
type Options struct {
	Stream, Consumer string
	// Concurrency is the number of lanes: handlers running at once.
	Concurrency int
	// Lanes, if set, are lanes this Run shares with others (Concurrency
	// is then ignored): one limit for every consumer of a replica.
	Lanes *Lanes
	// Horizon is how long after a message was stored it is still retried
	// through transient failures (default 24 h).
	Horizon time.Duration
	// MinBackoff and MaxBackoff bound the wait between attempts, which
	// grows exponentially with jitter (defaults 1 s and 5 min). A
	// RetryAfter delay is honoured even beyond MaxBackoff.
	MinBackoff, MaxBackoff time.Duration
	// OrderKey maps a message to its ordering key; messages with equal
	// keys run one after another, in the order they arrived. The empty key
	// means no order: such messages run as soon as a lane is free and are
	// retried through JetStream. Default: the subject (events: their
	// room). Use Unordered for independent work such as fan-out jobs.
	OrderKey func(jetstream.Msg) string
	// Progress is how often every held message is reported alive
	// (default a third of bus.AckWait).
	Progress time.Duration
	// Grace bounds how long running handlers may finish after ctx ends
	// (default 10 s); their context is cancelled after it.
	Grace time.Duration
	// PullWait bounds one pull request (default 2 s). A stop waits for the
	// pull in flight, whose messages are then handed back in order, so it
	// is also how long a stop may wait before the grace period begins.
	PullWait time.Duration
	// PriorityGroup, if set, pulls through this priority group of the
	// consumer (a pinned or overflow consumer).
	PriorityGroup string
	// Done is the bucket of done markers that CheckDone reads and writes
	// (nil: CheckDone always says not done and records nothing).
	Done *cas.Bucket
	Log  *slog.Logger
	// Metrics, if set, counts outcomes; every consumer of a service
	// shares one.
	Metrics *Metrics
}

// Unordered is an OrderKey for messages that may run in any order.
func Unordered(jetstream.Msg) string { return "" }

// Outcomes counted in cactus_worker_messages_total.
const (
	outcomeOK         = "ok"
	outcomeDuplicate  = "duplicate"
	outcomeRetry      = "retry"
	outcomeDeadLetter = "dead_letter"
)

// Metrics are the worker metrics of every consumer of a service.
type Metrics struct {
	messages *prometheus.CounterVec
	duration *prometheus.HistogramVec
	held     *prometheus.GaugeVec
	waiting  *prometheus.GaugeVec

	mu       sync.Mutex
	nWaiting map[string]int
}

// NewMetrics registers the worker metrics in reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		messages: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cactus_worker_messages_total",
			Help: "Attempts at messages by consumer and outcome (ok; duplicate: done before, by its done marker; retry: failed, will be tried again; dead_letter).",
		}, []string{"consumer", "outcome"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "cactus_worker_handle_duration_seconds",
			Help:    "Time spent in one attempt at a message, by consumer.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}, []string{"consumer"}),
		held: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "cactus_worker_messages_held",
			Help: "Messages this replica holds (running, queued behind their key, or waiting to be retried), by consumer.",
		}, []string{"consumer"}),
		waiting: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "cactus_worker_messages_waiting_retry",
			Help: "Messages this replica holds waiting for their next attempt after a transient failure, by consumer.",
		}, []string{"consumer"}),
		nWaiting: map[string]int{},
	}
	reg.MustRegister(m.messages, m.duration, m.held, m.waiting)
	return m
}

// init creates every series of a consumer at zero, so alerts see them
// before the first message: an increase() alert then sees the first dead
// letter after a restart.
func (m *Metrics) init(consumer string) {
	for _, o := range []string{outcomeOK, outcomeDuplicate, outcomeRetry, outcomeDeadLetter} {
		m.messages.WithLabelValues(consumer, o)
	}
	m.duration.WithLabelValues(consumer)
	m.held.WithLabelValues(consumer)
	m.waiting.WithLabelValues(consumer)
}

// Waiting is how many messages this replica holds waiting to be retried,
// over all its consumers.
func (m *Metrics) Waiting() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := 0
	for _, w := range m.nWaiting {
		n += w
	}
	return n
}

func (m *Metrics) addWaiting(consumer string, d int) {
	m.mu.Lock()
	m.nWaiting[consumer] += d
	m.mu.Unlock()
	m.waiting.WithLabelValues(consumer).Add(float64(d))
}

func (o *Options) defaults() {
	if o.Concurrency <= 0 {
		o.Concurrency = 1
	}
	if o.Lanes == nil {
		o.Lanes = NewLanes(o.Concurrency)
	}
	if o.Horizon <= 0 {
		o.Horizon = 24 * time.Hour
	}
	if o.MinBackoff <= 0 {
		o.MinBackoff = time.Second
	}
	if o.MaxBackoff <= 0 {
		o.MaxBackoff = 5 * time.Minute
	}
	o.MaxBackoff = max(o.MaxBackoff, o.MinBackoff)
	if o.OrderKey == nil {
		o.OrderKey = func(m jetstream.Msg) string { return m.Subject() }
	}
	if o.Progress <= 0 {
		o.Progress = bus.AckWait / 3
	}
	if o.Grace <= 0 {
		o.Grace = 10 * time.Second
	}
	if o.PullWait <= 0 {
		o.PullWait = 2 * time.Second
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
}

// Run consumes until ctx ends, then stops pulling, lets running handlers
// finish within the grace period, hands back every message it still holds
// in stream order, and returns. It returns an error if the consumer or the
// connection goes away while it was not asked to stop.
func Run(ctx context.Context, js jetstream.JetStream, o Options, h Handler) error {
	o.defaults()
	if o.Metrics != nil {
		o.Metrics.init(o.Consumer)
	}
	cons, err := js.Consumer(ctx, o.Stream, o.Consumer)
	if err != nil {
		if ctx.Err() != nil {
			// Asked to stop before consuming anything: a clean stop.
			return nil
		}
		return fmt.Errorf("worker %s: %w", o.Consumer, err)
	}
	hctx, hcancel := context.WithCancel(context.WithoutCancel(ctx))
	defer hcancel()
	r := &runner{
		o: &o, js: js, h: h, hctx: hctx,
		lanes: o.Lanes,
		held:  map[*item]struct{}{},
		keys:  map[string][]*item{},
		stop:  make(chan struct{}),
	}
	r.cond = sync.NewCond(&r.mu)
	stopProgress := r.keepAlive(o.Progress)
	defer stopProgress()

	err = r.pull(ctx, cons)
	r.shutdown(hcancel)
	if ctx.Err() == nil {
		// Not asked to stop: the consumer or the connection went away,
		// and the service must not carry on as if it were still consuming.
		return fmt.Errorf("worker %s: stopped consuming: %w", o.Consumer, err)
	}
	return nil
}

// item is one message this replica holds.
type item struct {
	m         jetstream.Msg
	key       string
	seq       uint64    // stream sequence, for the order of the final Naks
	stored    time.Time // when the stream stored it: the horizon counts from here
	delivered int       // JetStream's delivery count
	attempts  int       // attempts made here

	mu      sync.Mutex
	settled bool
}

func newItem(m jetstream.Msg, key string) *item {
	it := &item{m: m, key: key, stored: time.Now(), delivered: 1}
	if md, err := m.Metadata(); err == nil {
		it.seq, it.stored, it.delivered = md.Sequence.Stream, md.Timestamp, int(md.NumDelivered)
	}
	return it
}

// settle runs fn (an ack, nak or term) unless the message was settled
// already; it reports whether fn ran. A handler that overran the shutdown
// grace finds its message handed back already.
func (it *item) settle(fn func() error) (bool, error) {
	it.mu.Lock()
	defer it.mu.Unlock()
	if it.settled {
		return false, nil
	}
	it.settled = true
	return true, fn()
}

// runner is the state of one Run.
type runner struct {
	o    *Options
	js   jetstream.JetStream
	h    Handler
	hctx context.Context

	lanes *Lanes
	wg    sync.WaitGroup

	mu   sync.Mutex
	cond *sync.Cond // broadcast when running decreases or the worker stops
	// running counts handlers in progress.
	running  int
	held     map[*item]struct{}
	keys     map[string][]*item // keys with a message in progress, and what waits behind it
	stopping bool
	stop     chan struct{} // closed when stopping
}

// pull fetches as many messages as there are free lanes until ctx ends.
// It does not cancel a pull in flight: messages the server sends into a
// pull nobody reads any more would come back only after AckWait, after
// newer messages of their key.
func (r *runner) pull(ctx context.Context, cons jetstream.Consumer) error {
	opts := []jetstream.FetchOpt{jetstream.FetchMaxWait(r.o.PullWait)}
	if r.o.PriorityGroup != "" {
		opts = append(opts, jetstream.FetchPriorityGroup(r.o.PriorityGroup))
	}
	for {
		n := r.lanes.free(ctx)
		if n == 0 {
			return ctx.Err()
		}
		batch, err := cons.Fetch(n, opts...)
		if err == nil {
			for m := range batch.Messages() {
				r.accept(ctx, m)
			}
			err = batch.Error()
		}
		if err == nil || errors.Is(err, nats.ErrTimeout) || errors.Is(err, jetstream.ErrNoMessages) {
			continue
		}
		if gone := r.gone(cons, err); gone != nil {
			return gone
		}
		r.o.Log.Warn("worker: pull failed", "consumer", r.o.Consumer, "err", err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// gone reports a failed pull that will not recover: the connection is
// closed or the consumer deleted.
func (r *runner) gone(cons jetstream.Consumer, err error) error {
	if errors.Is(err, nats.ErrConnectionClosed) || errors.Is(err, jetstream.ErrConsumerDeleted) || errors.Is(err, jetstream.ErrConsumerNotFound) {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, ierr := cons.Info(ctx); errors.Is(ierr, jetstream.ErrConsumerNotFound) || errors.Is(ierr, nats.ErrConnectionClosed) {
		return fmt.Errorf("%w (%w)", ierr, err)
	}
	return nil
}

// accept takes a pulled message: it runs at once, or waits behind its key.
// Messages that arrive once the worker is stopping only wait, to be handed
// back in order.
func (r *runner) accept(ctx context.Context, m jetstream.Msg) {
	it := newItem(m, r.o.OrderKey(m))
	r.mu.Lock()
	defer r.mu.Unlock()
	r.held[it] = struct{}{}
	r.o.addHeld(+1)
	if it.key != "" {
		if q, busy := r.keys[it.key]; busy {
			r.keys[it.key] = append(q, it)
			return
		}
		r.keys[it.key] = nil
	}
	if ctx.Err() != nil {
		return
	}
	r.lanes.add(+1)
	r.wg.Go(func() { r.process(it) })
}

// process handles it, and then whatever waited behind it on its key.
func (r *runner) process(it *item) {
	for it != nil {
		select {
		case r.lanes.run <- struct{}{}:
		case <-r.stop:
			r.leave()
			return
		}
		retry := r.attempt(it)
		<-r.lanes.run
		if retry > 0 {
			if !r.wait(it, retry) {
				return
			}
			continue
		}
		it = r.next(it)
	}
}

// wait holds it, without a lane, until its next attempt; false means the
// worker is stopping and it is left for shutdown to hand back.
func (r *runner) wait(it *item, d time.Duration) bool {
	r.lanes.add(-1)
	r.o.addWaiting(+1)
	defer r.o.addWaiting(-1)
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-r.stop:
		return false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.stopping {
		return false
	}
	r.lanes.add(+1)
	return true
}

// next releases a settled item and returns the message that waited behind
// it on its key, if any and if the worker is not stopping.
func (r *runner) next(it *item) *item {
	r.release(it)
	r.mu.Lock()
	defer r.mu.Unlock()
	if it.key != "" {
		if q := r.keys[it.key]; len(q) > 0 && !r.stopping {
			r.keys[it.key] = q[1:]
			return q[0]
		}
		if len(r.keys[it.key]) == 0 {
			delete(r.keys, it.key)
		}
	}
	r.lanes.add(-1)
	return nil
}

// release forgets a settled message.
func (r *runner) release(it *item) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.held[it]; ok {
		delete(r.held, it)
		r.o.addHeld(-1)
	}
}

// leave gives up a lane slot without handling anything (stopping).
func (r *runner) leave() { r.lanes.add(-1) }

// attempt runs the handler once and settles the message, or returns how
// long to wait before trying it again in place (ordered messages).
func (r *runner) attempt(it *item) (retry time.Duration) {
	o := r.o
	it.attempts++
	n := it.delivered - 1 + it.attempts
	// The wait after a failure of this attempt is chosen now, so that the
	// handler can be told whether it is the last one: every message given
	// up for the horizon was told so on its last attempt.
	delay := o.backoff(n)
	a := &attemptInfo{n: n, last: time.Now().Add(delay).After(it.stored.Add(o.Horizon)), done: o.Done, consumer: o.Consumer}
	if origin, ok := bus.ReplayOrigin(it.m.Headers()); ok {
		a.replay = &origin
	}
	r.mu.Lock()
	r.running++
	r.mu.Unlock()
	// Running until settled (or scheduled for a retry in place): shutdown
	// must not hand back a message whose handler succeeded but which is
	// not acknowledged yet.
	defer func() {
		r.mu.Lock()
		r.running--
		r.cond.Broadcast()
		r.mu.Unlock()
	}()
	start := time.Now()
	herr := safeCall(withAttempt(r.hctx, a), r.h, it.m)
	if herr == nil && a.markerID != "" {
		// The effect happened; the marker is what keeps it from happening
		// again for a copy of the event stored later. Without it, try the
		// whole message again (handlers are idempotent).
		if err := a.writeMarker(r.hctx, it.seq); err != nil {
			herr = fmt.Errorf("done marker: %w", err)
		}
	}
	if o.Metrics != nil {
		o.Metrics.duration.WithLabelValues(o.Consumer).Observe(time.Since(start).Seconds())
	}
	log := o.Log.With("consumer", o.Consumer, "subject", it.m.Subject(), "seq", it.seq, "attempt", n)
	if id := it.m.Headers().Get(bus.HeaderEventID); id != "" {
		log = log.With("event_id", id)
	} else if id := it.m.Headers().Get(bus.HeaderMsgID); id != "" {
		log = log.With("msg_id", id)
	}

	if herr == nil {
		outcome := outcomeOK
		if a.wasDone {
			outcome = outcomeDuplicate
		}
		o.count(outcome)
		if _, err := it.settle(it.m.Ack); err != nil {
			log.Warn("worker: ack failed; the message will be redelivered and must be idempotent", "err", err)
		}
		return 0
	}

	var nd notDue
	if errors.As(herr, &nd) {
		log.Debug("worker: not due yet", "in", nd.wait)
		return r.retryLater(it, max(nd.wait, time.Millisecond), log)
	}
	var reason string
	if IsPermanent(herr) {
		reason = herr.Error()
		log.Error("worker: permanent failure, dead-lettering", "err", herr)
	} else {
		var de delayError
		if errors.As(herr, &de) && de.delay > 0 {
			delay = de.delay
		}
		if a.last {
			reason = fmt.Sprintf("still failing %s after it was stored, %d attempts (retry horizon %s): %v",
				time.Since(it.stored).Round(time.Millisecond), n, o.Horizon, herr)
			log.Error("worker: retry horizon reached, dead-lettering", "err", herr)
		} else {
			o.count(outcomeRetry)
			log.Warn("worker: failed, will retry", "err", herr, "in", delay)
			return r.retryLater(it, delay, log)
		}
	}
	dl := bus.DeadLetter{
		Source: o.Consumer, Stream: o.Stream, Sequence: it.seq, Subject: it.m.Subject(), Reason: reason,
		Delivered: n, Data: it.m.Data(), Header: it.m.Headers(),
		// A Term that is lost redelivers the message; this keeps its
		// second failure from being stored twice.
		ID: o.Stream + ":" + o.Consumer + ":" + strconv.FormatUint(it.seq, 10),
	}
	if err := bus.PublishDeadLetter(r.hctx, r.js, dl); err != nil {
		// Not stored in the dead-letter stream: keep the message.
		o.count(outcomeRetry)
		log.Error("worker: dead-letter publish failed; keeping the message to try again", "err", err)
		return r.retryLater(it, o.backoff(n), log)
	}
	o.count(outcomeDeadLetter)
	_, _ = it.settle(func() error { return it.m.TermWithReason("dead-lettered") })
	return 0
}

// retryLater schedules the next attempt: in place for ordered messages,
// through JetStream for the others.
func (r *runner) retryLater(it *item, delay time.Duration, log *slog.Logger) time.Duration {
	if it.key != "" {
		return max(delay, time.Millisecond)
	}
	if _, err := it.settle(func() error { return it.m.NakWithDelay(delay) }); err != nil {
		log.Warn("worker: nak failed; the message comes back after AckWait", "err", err)
	}
	return 0
}

// shutdown lets running handlers finish within the grace period, cancels
// the rest, and hands every message still held back to JetStream in
// stream order.
func (r *runner) shutdown(cancelHandlers context.CancelFunc) {
	r.mu.Lock()
	r.stopping = true
	close(r.stop)
	r.cond.Broadcast()
	r.mu.Unlock()

	grace := time.AfterFunc(r.o.Grace, func() {
		r.mu.Lock()
		r.cond.Broadcast()
		r.mu.Unlock()
	})
	deadline := time.Now().Add(r.o.Grace)
	r.mu.Lock()
	for r.running > 0 && time.Now().Before(deadline) {
		r.cond.Wait()
	}
	overran := r.running
	left := make([]*item, 0, len(r.held))
	for it := range r.held {
		left = append(left, it)
	}
	r.mu.Unlock()
	grace.Stop()
	if overran > 0 {
		r.o.Log.Warn("worker: handlers still running after the shutdown grace period; their messages are handed back", "consumer", r.o.Consumer, "running", overran)
	}
	cancelHandlers()

	slices.SortFunc(left, func(a, b *item) int { return cmp.Compare(a.seq, b.seq) })
	for _, it := range left {
		ok, err := it.settle(it.m.Nak)
		if ok {
			r.release(it)
		}
		if ok && err != nil {
			r.o.Log.Warn("worker: handing a message back failed; it comes back after AckWait", "consumer", r.o.Consumer, "seq", it.seq, "err", err)
		}
	}
	if overran == 0 {
		r.wg.Wait()
	}
}

// keepAlive signals progress on every held message every interval until
// the returned function is called.
func (r *runner) keepAlive(every time.Duration) (stop func()) {
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
				r.mu.Lock()
				items := make([]*item, 0, len(r.held))
				for it := range r.held {
					items = append(items, it)
				}
				r.mu.Unlock()
				for _, it := range items {
					it.mu.Lock()
					if !it.settled {
						_ = it.m.InProgress()
					}
					it.mu.Unlock()
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

func (o *Options) addHeld(d int) {
	if o.Metrics != nil {
		o.Metrics.held.WithLabelValues(o.Consumer).Add(float64(d))
	}
}

func (o *Options) addWaiting(d int) {
	if o.Metrics != nil {
		o.Metrics.addWaiting(o.Consumer, d)
	}
}

func (o *Options) count(outcome string) {
	if o.Metrics != nil {
		o.Metrics.messages.WithLabelValues(o.Consumer, outcome).Inc()
	}
}

// backoff is the wait after the attempt-th failed attempt: exponential,
// capped, with jitter so that replicas retrying together do not hit the
// homeserver together.
func (o *Options) backoff(attempt int) time.Duration {
	d := o.ceiling(attempt)
	return d/2 + rand.N(d/2+1)
}

// backoffFloor is the shortest wait backoff can give.
func (o *Options) backoffFloor(attempt int) time.Duration { return o.ceiling(attempt) / 2 }

func (o *Options) ceiling(attempt int) time.Duration {
	d := o.MinBackoff << min(max(attempt-1, 0), 30)
	if d > o.MaxBackoff || d <= 0 {
		d = o.MaxBackoff
	}
	return d
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
