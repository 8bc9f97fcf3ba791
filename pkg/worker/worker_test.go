package worker

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/cactus-comments/appservice/pkg/bus"
	"github.com/cactus-comments/appservice/pkg/embednats"
)

// testConsumer consumes every bot event in the tests.
const testConsumer = "worker-test"

// waitFor is the failure deadline of conditions that have no signal. It is
// never a pass condition.
const waitFor = 15 * time.Second

type env struct {
	t   *testing.T
	ctx context.Context
	js  jetstream.JetStream
	reg *prometheus.Registry
	met *Metrics
}

func newEnv(t *testing.T) *env {
	t.Helper()
	return newEnvWith(t, bus.Topology{Memory: true})
}

func newEnvWith(t *testing.T, topo bus.Topology) *env {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	_, _, js := embednats.JetStreamTest(t)
	if err := topo.Ensure(ctx, js); err != nil {
		t.Fatal(err)
	}
	// A consumer of the bot's events in every partition, as the workers'
	// consumers are configured.
	if _, err := js.CreateConsumer(ctx, bus.StreamEvents, jetstream.ConsumerConfig{
		Durable: testConsumer, FilterSubject: bus.EventFilter(bus.ClassBot), AckPolicy: jetstream.AckExplicitPolicy,
		AckWait: bus.AckWait, MaxDeliver: -1, MaxAckPending: 512,
	}); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	return &env{t: t, ctx: ctx, js: js, reg: reg, met: NewMetrics(reg)}
}

func (e *env) options(concurrency int) Options {
	return Options{
		Stream: bus.StreamEvents, Consumer: testConsumer,
		Concurrency: concurrency,
		MinBackoff:  time.Millisecond, MaxBackoff: 5 * time.Millisecond,
		// Short pulls: tests stop workers often.
		PullWait: 200 * time.Millisecond,
		Metrics:  e.met,
	}
}

// publish stores one event for room with id as its message id.
func (e *env) publish(room, id string) {
	e.t.Helper()
	m := nats.NewMsg(bus.EventSubject(bus.ClassBot, room))
	m.Header.Set(bus.HeaderMsgID, id)
	m.Header.Set(bus.HeaderTxnID, "txn-"+id)
	m.Data = []byte(id)
	if _, err := e.js.PublishMsg(e.ctx, m); err != nil {
		e.t.Fatal(err)
	}
}

// run starts Run in the background. cancel asks it to stop; wait returns
// its error once it has returned.
func (e *env) run(o Options, h Handler) (cancel context.CancelFunc, wait func() error) {
	ctx, cancel := context.WithCancel(e.ctx)
	done := make(chan error, 1)
	go func() { done <- Run(ctx, e.js, o, h) }()
	var once sync.Once
	var err error
	wait = func() error {
		once.Do(func() {
			select {
			case err = <-done:
			case <-time.After(waitFor):
				err = errors.New("Run did not return")
			}
		})
		return err
	}
	e.t.Cleanup(func() { cancel(); _ = wait() })
	return cancel, wait
}

// poll waits until cond holds; failing after the deadline.
func (e *env) poll(what string, cond func() bool) {
	e.t.Helper()
	deadline := time.Now().Add(waitFor)
	for !cond() {
		if time.Now().After(deadline) {
			e.t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// setAckWait changes the bot consumer's AckWait.
func (e *env) setAckWait(d time.Duration) {
	e.t.Helper()
	c, err := e.js.Consumer(e.ctx, bus.StreamEvents, testConsumer)
	if err != nil {
		e.t.Fatal(err)
	}
	cfg := c.CachedInfo().Config
	cfg.AckWait = d
	if _, err := e.js.CreateOrUpdateConsumer(e.ctx, bus.StreamEvents, cfg); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) consumerInfo() *jetstream.ConsumerInfo {
	e.t.Helper()
	c, err := e.js.Consumer(e.ctx, bus.StreamEvents, testConsumer)
	if err != nil {
		e.t.Fatal(err)
	}
	ci, err := c.Info(e.ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	return ci
}

// settled waits until the consumer has acknowledged (or terminated) every
// message in the stream. Pending counts alone are not enough: both read 0
// while a Nak'd message waits out its delay, and for a moment after a
// publish before the consumer has counted it.
func (e *env) settled() {
	e.t.Helper()
	s, err := e.js.Stream(e.ctx, bus.StreamEvents)
	if err != nil {
		e.t.Fatal(err)
	}
	e.poll("all messages acknowledged", func() bool {
		si, err := s.Info(e.ctx)
		if err != nil {
			e.t.Fatal(err)
		}
		ci := e.consumerInfo()
		return ci.NumAckPending == 0 && ci.NumPending == 0 && ci.AckFloor.Stream >= si.State.LastSeq
	})
}

// deadLetters waits for n dead letters and returns them.
func (e *env) deadLetters(n int) []bus.DeadLetter {
	e.t.Helper()
	s, err := e.js.Stream(e.ctx, bus.StreamDLQ)
	if err != nil {
		e.t.Fatal(err)
	}
	c, err := s.OrderedConsumer(e.ctx, jetstream.OrderedConsumerConfig{})
	if err != nil {
		e.t.Fatal(err)
	}
	var out []bus.DeadLetter
	for range n {
		m, err := c.Next(jetstream.FetchMaxWait(waitFor))
		if err != nil {
			e.t.Fatalf("dead letter %d of %d: %v", len(out)+1, n, err)
		}
		out = append(out, bus.ReadDeadLetter(m))
	}
	return out
}

func (e *env) dlqCount() uint64 {
	s, err := e.js.Stream(e.ctx, bus.StreamDLQ)
	if err != nil {
		e.t.Fatal(err)
	}
	info, err := s.Info(e.ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	return info.State.Msgs
}

func (e *env) counter(outcome string) float64 {
	e.t.Helper()
	mfs, err := e.reg.Gather()
	if err != nil {
		e.t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "cactus_worker_messages_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "outcome" && l.GetValue() == outcome {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

func delivered(m jetstream.Msg) int {
	md, err := m.Metadata()
	if err != nil {
		return 0
	}
	return int(md.NumDelivered)
}

// recorder counts handler calls per message id.
type recorder struct {
	mu    sync.Mutex
	calls map[string][]int // message id -> delivery counts seen
}

func (r *recorder) record(m jetstream.Msg) (id string, n int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.calls == nil {
		r.calls = map[string][]int{}
	}
	id = string(m.Data())
	r.calls[id] = append(r.calls[id], delivered(m))
	return id, len(r.calls[id])
}

func (r *recorder) get(id string) []int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]int(nil), r.calls[id]...)
}

func (r *recorder) total() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, c := range r.calls {
		n += len(c)
	}
	return n
}

func TestSuccessAcks(t *testing.T) {
	e := newEnv(t)
	var rec recorder
	for i := range 10 {
		e.publish(fmt.Sprintf("!r%d:x", i%3), fmt.Sprintf("$e%d", i))
	}
	e.run(e.options(4), func(_ context.Context, m jetstream.Msg) error {
		rec.record(m)
		return nil
	})
	e.settled()
	for i := range 10 {
		if got := rec.get(fmt.Sprintf("$e%d", i)); len(got) != 1 || got[0] != 1 {
			t.Errorf("$e%d handled with deliveries %v, want [1]", i, got)
		}
	}
	if ci := e.consumerInfo(); ci.NumRedelivered != 0 {
		t.Errorf("%d redelivered", ci.NumRedelivered)
	}
	if e.counter("ok") != 10 || e.counter("retry") != 0 || e.counter("dead_letter") != 0 {
		t.Errorf("metrics ok=%v retry=%v dead_letter=%v", e.counter("ok"), e.counter("retry"), e.counter("dead_letter"))
	}
}

// An ordered message that fails is retried in place: the same delivery,
// a new attempt.
func TestFailuresAreRetriedInPlace(t *testing.T) {
	e := newEnv(t)
	var rec recorder
	var mu sync.Mutex
	var attempts []int
	e.publish("!r:x", "$flaky")
	e.run(e.options(2), func(ctx context.Context, m jetstream.Msg) error {
		mu.Lock()
		attempts = append(attempts, Attempt(ctx))
		mu.Unlock()
		if _, n := rec.record(m); n <= 2 {
			return errors.New("homeserver said 502")
		}
		return nil
	})
	e.settled()
	if got := rec.get("$flaky"); fmt.Sprint(got) != "[1 1 1]" {
		t.Fatalf("deliveries %v, want [1 1 1]", got)
	}
	mu.Lock()
	if fmt.Sprint(attempts) != "[1 2 3]" {
		t.Errorf("attempts %v, want [1 2 3]", attempts)
	}
	mu.Unlock()
	if ci := e.consumerInfo(); ci.NumRedelivered != 0 {
		t.Errorf("%d redelivered", ci.NumRedelivered)
	}
	if e.dlqCount() != 0 {
		t.Fatal("a message that succeeded was dead-lettered")
	}
	if e.counter("retry") != 2 || e.counter("ok") != 1 {
		t.Errorf("metrics retry=%v ok=%v", e.counter("retry"), e.counter("ok"))
	}
}

func TestPermanentErrorDeadLetters(t *testing.T) {
	e := newEnv(t)
	var rec recorder
	e.publish("!r:x", "$bad")
	e.run(e.options(2), func(_ context.Context, m jetstream.Msg) error {
		id, _ := rec.record(m)
		if id == "$bad" {
			return fmt.Errorf("create room: %w", Permanent(errors.New("403 M_FORBIDDEN")))
		}
		return nil
	})
	dl := e.deadLetters(1)[0]
	if dl.Reason != "create room: 403 M_FORBIDDEN" || dl.Source != testConsumer || dl.Stream != bus.StreamEvents ||
		dl.Subject != (bus.Topology{}).StoredSubject(bus.ClassBot, "!r:x") || dl.Delivered != 1 || string(dl.Data) != "$bad" {
		t.Fatalf("dead letter %+v", dl)
	}
	if dl.Header.Get(bus.HeaderConsumer) != testConsumer || dl.Header.Get(bus.HeaderTxnID) != "txn-$bad" ||
		// Its own id (stream and sequence), never the original's, which
		// would make a replay a duplicate.
		dl.Header.Get(bus.HeaderMsgID) != "dlq:"+bus.StreamEvents+":"+testConsumer+":1" {
		t.Fatalf("dead letter headers %v", dl.Header)
	}
	// A later message of the same room is handled after it (same lane), and
	// by then the bad one is settled and was never delivered again.
	e.publish("!r:x", "$next")
	e.settled()
	if got := rec.get("$bad"); len(got) != 1 {
		t.Fatalf("permanent failure handled %d times", len(got))
	}
	if ci := e.consumerInfo(); ci.NumRedelivered != 0 {
		t.Fatalf("%d messages redelivered", ci.NumRedelivered)
	}
	if e.dlqCount() != 1 || e.counter("dead_letter") != 1 {
		t.Fatalf("dlq %d, metric %v", e.dlqCount(), e.counter("dead_letter"))
	}
}

// Transient failures are retried by time: past the horizon, counted from
// when the message was stored, it is dead-lettered with the last error.
func TestHorizonDeadLetters(t *testing.T) {
	e := newEnv(t)
	var rec recorder
	e.publish("!r:x", "$doomed")
	o := e.options(1)
	o.Horizon = 300 * time.Millisecond
	o.MinBackoff, o.MaxBackoff = 20*time.Millisecond, 50*time.Millisecond
	e.run(o, func(_ context.Context, m jetstream.Msg) error {
		if id, _ := rec.record(m); id == "$doomed" {
			return errors.New("still 500")
		}
		return nil
	})
	dl := e.deadLetters(1)[0]
	n := len(rec.get("$doomed"))
	if !strings.Contains(dl.Reason, "retry horizon") || !strings.HasSuffix(dl.Reason, ": still 500") || dl.Delivered != n || n < 2 {
		t.Fatalf("dead letter %+v after %d attempts", dl, n)
	}
	if dl.Sequence != 1 || dl.Stream != bus.StreamEvents {
		t.Fatalf("dead letter does not record where the message was: %+v", dl)
	}
	e.publish("!r:x", "$next")
	e.settled()
	if got := rec.get("$next"); len(got) != 1 {
		t.Fatalf("$next handled %v", got)
	}
	if e.counter("retry") != float64(n-1) || e.counter("dead_letter") != 1 {
		t.Errorf("metrics retry=%v dead_letter=%v after %d attempts", e.counter("retry"), e.counter("dead_letter"), n)
	}
}

func TestPanicDeadLetters(t *testing.T) {
	e := newEnv(t)
	var rec recorder
	e.publish("!r:x", "$poison")
	e.run(e.options(2), func(_ context.Context, m jetstream.Msg) error {
		if id, _ := rec.record(m); id == "$poison" {
			var nilMap map[string]int
			nilMap["boom"]++
		}
		return nil
	})
	dl := e.deadLetters(1)[0]
	if !strings.Contains(dl.Reason, "panic") || dl.Delivered != 1 {
		t.Fatalf("dead letter %+v", dl)
	}
	e.publish("!r:x", "$next")
	e.settled()
	if len(rec.get("$poison")) != 1 || len(rec.get("$next")) != 1 {
		t.Fatalf("calls: poison %v next %v", rec.get("$poison"), rec.get("$next"))
	}
}

func TestRetryAfterHonoured(t *testing.T) {
	e := newEnv(t)
	const delay = 300 * time.Millisecond
	var mu sync.Mutex
	var times []time.Time
	e.publish("!r:x", "$limited")
	e.run(e.options(1), func(_ context.Context, m jetstream.Msg) error {
		mu.Lock()
		times = append(times, time.Now())
		n := len(times)
		mu.Unlock()
		if n == 1 {
			return RetryAfter(errors.New("429 M_LIMIT_EXCEEDED"), delay)
		}
		return nil
	})
	e.settled()
	mu.Lock()
	defer mu.Unlock()
	if len(times) != 2 {
		t.Fatalf("%d calls, want 2", len(times))
	}
	if gap := times[1].Sub(times[0]); gap < delay {
		t.Fatalf("redelivered after %v, want at least %v", gap, delay)
	}
}

func TestOrderingPerSubjectConcurrencyAcross(t *testing.T) {
	e := newEnv(t)
	const rooms, perRoom = 6, 15
	for i := range perRoom {
		for r := range rooms {
			e.publish(fmt.Sprintf("!room%d:x", r), fmt.Sprintf("%d/%d", r, i))
		}
	}
	var (
		mu         sync.Mutex
		order      = map[string][]int{}
		inRoom     = map[string]int{}
		inFlight   int
		violations []string
		overlap    = make(chan struct{})
		overlapped sync.Once
	)
	e.run(e.options(4), func(_ context.Context, m jetstream.Msg) error {
		room, seq, _ := strings.Cut(string(m.Data()), "/")
		n, _ := strconv.Atoi(seq)
		mu.Lock()
		inRoom[room]++
		inFlight++
		if inRoom[room] > 1 {
			violations = append(violations, "room "+room+" handled concurrently")
		}
		if inFlight > 1 {
			overlapped.Do(func() { close(overlap) })
		}
		order[room] = append(order[room], n)
		mu.Unlock()

		// Hold every handler until two ran at once, so that a worker that
		// serialises everything fails here instead of passing by luck.
		select {
		case <-overlap:
		case <-time.After(waitFor):
		}

		mu.Lock()
		inRoom[room]--
		inFlight--
		mu.Unlock()
		return nil
	})
	e.settled()
	select {
	case <-overlap:
	default:
		t.Fatal("messages of different rooms never ran concurrently")
	}
	mu.Lock()
	defer mu.Unlock()
	for _, v := range violations {
		t.Error(v)
	}
	for r := range rooms {
		got := order[strconv.Itoa(r)]
		if len(got) != perRoom {
			t.Errorf("room %d: %d messages handled, want %d", r, len(got), perRoom)
		}
		for i, n := range got {
			if n != i {
				t.Errorf("room %d handled out of order: %v", r, got)
				break
			}
		}
	}
}

func TestShutdownFinishesRunningAndReturnsTheRest(t *testing.T) {
	e := newEnv(t)
	for i := range 6 {
		e.publish("!r:x", fmt.Sprintf("$e%d", i))
	}
	started := make(chan struct{})
	release := make(chan struct{})
	var finished atomic.Bool
	var first recorder
	cancel, wait := e.run(e.options(1), func(_ context.Context, m jetstream.Msg) error {
		id, _ := first.record(m)
		if id == "$e0" {
			close(started)
			<-release
			finished.Store(true)
		}
		return nil
	})
	<-started
	cancel()
	// The running handler finishes only after shutdown has begun.
	close(release)
	if err := wait(); err != nil {
		t.Fatal(err)
	}
	if !finished.Load() {
		t.Fatal("Run returned before the running handler finished")
	}
	if got := first.get("$e0"); len(got) != 1 {
		t.Fatalf("$e0 handled %v", got)
	}

	// A second worker gets everything the first did not finish, and not
	// the finished message again.
	var second recorder
	e.run(e.options(1), func(_ context.Context, m jetstream.Msg) error {
		second.record(m)
		return nil
	})
	e.settled()
	if got := second.get("$e0"); len(got) != 0 {
		t.Fatalf("finished message redelivered: %v", got)
	}
	for i := 1; i < 6; i++ {
		id := fmt.Sprintf("$e%d", i)
		// Cancelled before $e0 finished: nothing else may start in the
		// first run, and the second handles each exactly once.
		if len(first.get(id)) != 0 || len(second.get(id)) != 1 {
			t.Errorf("%s: first run %v, second run %v", id, first.get(id), second.get(id))
		}
	}
}

func TestRunStopsWhenConsumerDisappears(t *testing.T) {
	e := newEnv(t)
	if err := Run(e.ctx, e.js, Options{Stream: bus.StreamEvents, Consumer: "no-such-consumer"}, nil); err == nil {
		t.Fatal("Run on a missing consumer returned nil")
	}
	handled := make(chan struct{}, 1)
	e.publish("!r:x", "$e")
	done := make(chan error, 1)
	go func() {
		done <- Run(e.ctx, e.js, e.options(1), func(context.Context, jetstream.Msg) error {
			handled <- struct{}{}
			return nil
		})
	}()
	<-handled
	if err := e.js.DeleteConsumer(e.ctx, bus.StreamEvents, testConsumer); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("Run returned nil after its consumer was deleted")
		}
	case <-time.After(waitFor):
		t.Fatal("Run kept going after its consumer was deleted")
	}
}

func TestErrorMarkers(t *testing.T) {
	if Permanent(nil) != nil || RetryAfter(nil, time.Second) != nil {
		t.Fatal("wrapping nil must give nil")
	}
	base := errors.New("x")
	p := fmt.Errorf("ctx: %w", Permanent(base))
	if !IsPermanent(p) || !errors.Is(p, base) || p.Error() != "ctx: x" {
		t.Fatalf("Permanent: %v", p)
	}
	if IsPermanent(base) || IsPermanent(RetryAfter(base, time.Second)) {
		t.Fatal("IsPermanent of a plain error")
	}
	r := RetryAfter(base, time.Second)
	if !errors.Is(r, base) || r.Error() != "x" {
		t.Fatalf("RetryAfter: %v", r)
	}
}

func TestBackoffBounds(t *testing.T) {
	o := Options{MinBackoff: 100 * time.Millisecond, MaxBackoff: time.Second}
	for attempt := 1; attempt <= 40; attempt++ {
		base := min(o.MinBackoff<<min(attempt-1, 20), o.MaxBackoff)
		for range 50 {
			d := o.backoff(attempt)
			if d < base/2 || d > base || d < o.backoffFloor(attempt) {
				t.Fatalf("backoff(%d) = %v, want within [%v, %v]", attempt, d, base/2, base)
			}
		}
	}
	huge := Options{MinBackoff: time.Hour, MaxBackoff: 2 * time.Hour}
	if d := huge.backoff(80); d <= 0 || d > 2*time.Hour {
		t.Fatalf("backoff overflowed: %v", d)
	}
	// The production defaults: a second, doubling, capped at five minutes.
	var def Options
	def.defaults()
	if def.ceiling(1) != time.Second || def.ceiling(4) != 8*time.Second || def.ceiling(100) != 5*time.Minute || def.Horizon != 24*time.Hour {
		t.Fatalf("defaults: ceilings %v %v %v, horizon %v", def.ceiling(1), def.ceiling(4), def.ceiling(100), def.Horizon)
	}
}

// TestQueuedMessagesKeptInProgress: messages waiting in a lane behind a
// slow one outlive the consumer's AckWait without being redelivered.
func TestQueuedMessagesKeptInProgress(t *testing.T) {
	e := newEnv(t)
	// Long enough that a loaded machine still signals many times per
	// AckWait: only a worker that does not signal at all fails.
	const ackWait = time.Second
	e.setAckWait(ackWait)
	for i := range 4 {
		e.publish("!r:x", fmt.Sprintf("$e%d", i))
	}
	var rec recorder
	o := e.options(1)
	o.Progress = ackWait / 10
	e.run(o, func(_ context.Context, m jetstream.Msg) error {
		if id, _ := rec.record(m); id == "$e0" {
			// Elapsed time is the point here: there is no signal for
			// "AckWait has passed".
			time.Sleep(3 * ackWait)
		}
		return nil
	})
	e.settled()
	for i := range 4 {
		if got := rec.get(fmt.Sprintf("$e%d", i)); len(got) != 1 {
			t.Errorf("$e%d handled with deliveries %v, want once", i, got)
		}
	}
	if ci := e.consumerInfo(); ci.NumRedelivered != 0 {
		t.Errorf("%d messages redelivered", ci.NumRedelivered)
	}
}

// A room whose handler is stuck must delay only its own messages: with
// fixed lanes, its queued messages filled the lane and then blocked the
// fetch loop for every other room.
func TestSlowKeyDelaysOnlyItself(t *testing.T) {
	e := newEnv(t)
	const stuckMsgs, others = 10, 20
	for i := range stuckMsgs {
		e.publish("!stuck:x", fmt.Sprintf("stuck/%d", i))
	}
	for i := range others {
		e.publish(fmt.Sprintf("!other%d:x", i), fmt.Sprintf("other/%d", i))
	}
	release := make(chan struct{})
	var othersDone, stuckDone atomic.Int32
	allOthers := make(chan struct{})
	e.run(e.options(2), func(_ context.Context, m jetstream.Msg) error {
		if strings.HasPrefix(string(m.Data()), "stuck/") {
			<-release
			stuckDone.Add(1)
			return nil
		}
		if othersDone.Add(1) == others {
			close(allOthers)
		}
		return nil
	})
	select {
	case <-allOthers:
	case <-time.After(waitFor):
		t.Fatalf("only %d of %d other rooms handled while one room was stuck", othersDone.Load(), others)
	}
	if n := stuckDone.Load(); n != 0 {
		t.Fatalf("%d stuck messages finished before release", n)
	}
	close(release)
	e.poll("stuck room drained", func() bool { return stuckDone.Load() == stuckMsgs })
}

// Unordered messages of one subject run concurrently.
func TestUnorderedRunsConcurrently(t *testing.T) {
	e := newEnv(t)
	for i := range 8 {
		e.publish("!one:x", fmt.Sprintf("m/%d", i))
	}
	var inFlight atomic.Int32
	overlap := make(chan struct{})
	var once sync.Once
	var handled atomic.Int32
	o := e.options(4)
	o.OrderKey = Unordered
	e.run(o, func(_ context.Context, _ jetstream.Msg) error {
		if inFlight.Add(1) > 1 {
			once.Do(func() { close(overlap) })
		}
		select {
		case <-overlap:
		case <-time.After(waitFor):
		}
		inFlight.Add(-1)
		handled.Add(1)
		return nil
	})
	e.poll("all handled", func() bool { return handled.Load() == 8 })
	select {
	case <-overlap:
	default:
		t.Fatal("unordered messages of one subject never ran concurrently")
	}
}

// A service stopped between becoming ready and starting to consume stops
// cleanly: Run with an already cancelled context returns nil.
func TestRunWithCancelledContextIsACleanStop(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithCancel(e.ctx)
	cancel()
	if err := Run(ctx, e.js, e.options(2), func(context.Context, jetstream.Msg) error { return nil }); err != nil {
		t.Fatalf("Run after cancel: %v", err)
	}
}
