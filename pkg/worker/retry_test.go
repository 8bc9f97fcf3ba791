package worker

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/cactus-comments/appservice/pkg/bus"
	"github.com/cactus-comments/appservice/pkg/cas"
)

// An outage longer than any fixed delivery count (the worker used to give
// up after 5) dead-letters nothing: retries are bounded by time.
func TestTransientFailuresOutlastCounts(t *testing.T) {
	for _, tc := range []struct {
		name string
		key  func(jetstream.Msg) string
	}{{"ordered", nil}, {"unordered", Unordered}} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			var rec recorder
			e.publish("!r:x", "$flaky")
			o := e.options(2)
			o.OrderKey = tc.key
			e.run(o, func(_ context.Context, m jetstream.Msg) error {
				if _, n := rec.record(m); n <= 12 {
					return errors.New("dial tcp: connection refused")
				}
				return nil
			})
			e.settled()
			if n := len(rec.get("$flaky")); n != 13 || e.dlqCount() != 0 {
				t.Fatalf("%d attempts, %d dead letters; want 13 and none", n, e.dlqCount())
			}
		})
	}
}

// A message being retried keeps its key blocked (the next message of the
// room runs only after it succeeded) but not its lane: with one lane,
// another room's message runs while it waits.
func TestOrderKeptAcrossRetry(t *testing.T) {
	e := newEnv(t)
	e.publish("!a:x", "a1")
	e.publish("!a:x", "a2")
	e.publish("!b:x", "b1")
	var mu sync.Mutex
	var order []string
	fails := 0
	e.run(e.options(1), func(_ context.Context, m jetstream.Msg) error {
		mu.Lock()
		defer mu.Unlock()
		id := string(m.Data())
		order = append(order, id)
		if id == "a1" && fails < 3 {
			fails++
			return RetryAfter(errors.New("429 M_LIMIT_EXCEEDED"), 100*time.Millisecond)
		}
		return nil
	})
	e.settled()
	mu.Lock()
	defer mu.Unlock()
	if want := "[a1 b1 a1 a1 a1 a2]"; fmt.Sprint(order) != want {
		t.Fatalf("order %v, want %s: b1 while a1 waits, a2 only after a1", order, want)
	}
	if ci := e.consumerInfo(); ci.NumRedelivered != 0 {
		t.Fatalf("%d redelivered: a retry in place must not go back to JetStream", ci.NumRedelivered)
	}
}

// Unordered messages are retried through JetStream (a new delivery), so a
// failing one holds nothing in this replica.
func TestUnorderedRetryGoesBackToJetStream(t *testing.T) {
	e := newEnv(t)
	var rec recorder
	e.publish("!r:x", "$job")
	o := e.options(1)
	o.OrderKey = Unordered
	e.run(o, func(_ context.Context, m jetstream.Msg) error {
		if _, n := rec.record(m); n <= 2 {
			return errors.New("502")
		}
		return nil
	})
	e.settled()
	if got := rec.get("$job"); fmt.Sprint(got) != "[1 2 3]" {
		t.Fatalf("deliveries %v, want [1 2 3]", got)
	}
}

// A message that is not due yet comes back when it is, and that is no
// failure: nothing counted as a retry, nothing dead-lettered.
func TestNotDueComesBackWithoutAFailure(t *testing.T) {
	e := newEnv(t)
	var rec recorder
	e.publish("!r:x", "$later")
	o := e.options(1)
	o.OrderKey = Unordered
	e.run(o, func(_ context.Context, m jetstream.Msg) error {
		if _, n := rec.record(m); n == 1 {
			return NotDue(50 * time.Millisecond)
		}
		return nil
	})
	e.settled()
	if got := rec.get("$later"); fmt.Sprint(got) != "[1 2]" {
		t.Fatalf("deliveries %v, want [1 2]", got)
	}
	if n := e.counter(outcomeRetry); n != 0 {
		t.Fatalf("%v retries counted for a message that was only not due", n)
	}
	if n := e.counter(outcomeOK); n != 1 {
		t.Fatalf("%v successes counted, want 1", n)
	}
	if e.dlqCount() != 0 {
		t.Fatal("dead-lettered")
	}
}

// No more messages are pulled than there are free lanes: with both lanes
// busy, nothing else of the backlog is taken by this replica (another one
// could run it).
func TestNoPrefetchBeyondFreeLanes(t *testing.T) {
	e := newEnv(t)
	for i := range 10 {
		e.publish(fmt.Sprintf("!r%d:x", i), fmt.Sprintf("$e%d", i))
	}
	release := make(chan struct{})
	started := make(chan struct{}, 10)
	e.run(e.options(2), func(_ context.Context, m jetstream.Msg) error {
		started <- struct{}{}
		<-release
		return nil
	})
	<-started
	<-started
	// Elapsed time is the point: a worker that prefetches does so within
	// a pull or two.
	deadline := time.Now().Add(time.Second)
	for time.Now().Before(deadline) {
		if n := e.consumerInfo().NumAckPending; n > 2 {
			close(release)
			t.Fatalf("%d messages taken with 2 lanes busy", n)
		}
		time.Sleep(50 * time.Millisecond)
	}
	close(release)
	e.settled()
}

// A permanent failure whose dead letter cannot be stored is not lost: the
// message is kept and tried again until the dead letter is stored.
func TestDeadLetterPublishFailureKeepsMessage(t *testing.T) {
	e := newEnv(t)
	s, err := e.js.Stream(e.ctx, bus.StreamDLQ)
	if err != nil {
		t.Fatal(err)
	}
	dlq := s.CachedInfo().Config
	if err := e.js.DeleteStream(e.ctx, bus.StreamDLQ); err != nil {
		t.Fatal(err)
	}
	var calls atomic.Int32
	tried := make(chan struct{})
	e.publish("!r:x", "$bad")
	o := e.options(1)
	o.OrderKey = Unordered
	e.run(o, func(context.Context, jetstream.Msg) error {
		if calls.Add(1) == 8 {
			close(tried)
		}
		return Permanent(errors.New("403 M_FORBIDDEN"))
	})
	select {
	case <-tried:
	case <-time.After(waitFor):
		t.Fatalf("message tried %d times while the dead-letter stream was missing", calls.Load())
	}
	if _, err := e.js.CreateStream(e.ctx, dlq); err != nil {
		t.Fatal(err)
	}
	dl := e.deadLetters(1)[0]
	if !strings.Contains(dl.Reason, "M_FORBIDDEN") {
		t.Fatalf("dead letter %+v", dl)
	}
	e.settled()
}

// On shutdown every message still held goes back in stream order: a
// handler that overruns the grace period is cancelled and its message
// handed back first, then what waited behind it.
func TestShutdownHandsBackInStreamOrder(t *testing.T) {
	e := newEnv(t)
	for i := range 5 {
		e.publish("!r:x", fmt.Sprintf("$e%d", i))
	}
	e.publish("!other:x", "$o")
	started := make(chan struct{})
	cancelled := make(chan struct{})
	o := e.options(2)
	o.Grace = 200 * time.Millisecond
	cancel, wait := e.run(o, func(ctx context.Context, m jetstream.Msg) error {
		if string(m.Data()) != "$e0" {
			return nil
		}
		close(started)
		<-ctx.Done() // overruns the grace period
		close(cancelled)
		return ctx.Err()
	})
	<-started
	e.poll("the other room handled", func() bool { return e.counter("ok") == 1 })
	cancel()
	if err := wait(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-cancelled:
	case <-time.After(waitFor):
		t.Fatal("the overrunning handler's context was not cancelled")
	}
	var mu sync.Mutex
	var order []string
	e.run(e.options(1), func(_ context.Context, m jetstream.Msg) error {
		mu.Lock()
		order = append(order, string(m.Data()))
		mu.Unlock()
		return nil
	})
	e.settled()
	mu.Lock()
	defer mu.Unlock()
	if want := "[$e0 $e1 $e2 $e3 $e4]"; fmt.Sprint(order) != want {
		t.Fatalf("after the hand-back: %v, want %s", order, want)
	}
}

// A consumer with a priority group serves only pulls that name it.
func TestPriorityGroup(t *testing.T) {
	e := newEnv(t)
	cfg := jetstream.ConsumerConfig{
		Durable: "pinned", FilterSubject: bus.EventFilter(bus.ClassBot), AckPolicy: jetstream.AckExplicitPolicy,
		AckWait: bus.AckWait, MaxDeliver: -1,
		PriorityPolicy: jetstream.PriorityPolicyPinned, PinnedTTL: 2 * bus.AckWait, PriorityGroups: []string{"owners"},
	}
	if _, err := e.js.CreateOrUpdateConsumer(e.ctx, bus.StreamEvents, cfg); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		e.publish("!r:x", fmt.Sprintf("$e%d", i))
	}
	var handled atomic.Int32
	o := e.options(2)
	o.Consumer, o.PriorityGroup = "pinned", "owners"
	e.run(o, func(context.Context, jetstream.Msg) error {
		handled.Add(1)
		return nil
	})
	e.poll("all three handled through the group", func() bool { return handled.Load() == 3 })
}

// The attempt number counts every try; the last one before the horizon is
// announced, so a handler can tell its user instead of going silent.
func TestAttemptAndLastAttempt(t *testing.T) {
	e := newEnv(t)
	e.publish("!r:x", "$e")
	var mu sync.Mutex
	var seen []string
	o := e.options(1)
	o.Horizon = 400 * time.Millisecond
	o.MinBackoff, o.MaxBackoff = 50*time.Millisecond, 100*time.Millisecond
	e.run(o, func(ctx context.Context, _ jetstream.Msg) error {
		mu.Lock()
		seen = append(seen, fmt.Sprintf("%d/%v", Attempt(ctx), LastAttempt(ctx)))
		mu.Unlock()
		return errors.New("timeout")
	})
	e.deadLetters(1)
	mu.Lock()
	defer mu.Unlock()
	if len(seen) < 2 || seen[0] != "1/false" || !strings.HasSuffix(seen[len(seen)-1], "/true") {
		t.Fatalf("attempts seen %v: want 1/false first and a last attempt announced", seen)
	}
	for i, s := range seen[:len(seen)-1] {
		if !strings.HasPrefix(s, fmt.Sprintf("%d/", i+1)) {
			t.Fatalf("attempts seen %v", seen)
		}
	}
}

// A message waiting for its next attempt longer than AckWait is kept alive
// by progress signals: not redelivered elsewhere meanwhile.
func TestWaitingRetryKeptInProgress(t *testing.T) {
	e := newEnv(t)
	// Long enough that a loaded machine still signals many times per
	// AckWait: only a worker that does not signal at all fails.
	const ackWait = time.Second
	e.setAckWait(ackWait)
	e.publish("!r:x", "$e")
	var rec recorder
	o := e.options(1)
	o.Progress = ackWait / 10
	e.run(o, func(_ context.Context, m jetstream.Msg) error {
		if _, n := rec.record(m); n == 1 {
			return RetryAfter(errors.New("429"), 3*ackWait)
		}
		return nil
	})
	e.settled()
	if got := rec.get("$e"); fmt.Sprint(got) != "[1 1]" {
		t.Fatalf("deliveries %v, want [1 1]", got)
	}
	if ci := e.consumerInfo(); ci.NumRedelivered != 0 {
		t.Fatalf("%d redelivered while waiting to retry", ci.NumRedelivered)
	}
}

// Done markers: an event stored again after the duplicate window is
// recognised and has no second effect; a replay is a forced re-run.
func TestDoneMarkers(t *testing.T) {
	e := newEnvWith(t, bus.Topology{Memory: true, Duplicates: 200 * time.Millisecond})
	done, err := cas.Open(e.ctx, e.js, bus.BucketDone)
	if err != nil {
		t.Fatal(err)
	}
	var effects atomic.Int32
	o := e.options(2)
	o.Done = done
	e.run(o, func(ctx context.Context, m jetstream.Msg) error {
		if d, err := CheckDone(ctx, "$event"); err != nil || d {
			return err
		}
		effects.Add(1)
		return nil
	})
	e.publish("!r:x", "$event")
	e.settled()
	// Stored again once the stream has forgotten the id, as a homeserver
	// retrying after a long outage would.
	e.poll("the duplicate window over", func() bool {
		m := nats.NewMsg(bus.EventSubject(bus.ClassBot, "!r:x"))
		m.Header.Set(bus.HeaderMsgID, "$event")
		m.Data = []byte("$event")
		ack, err := e.js.PublishMsg(e.ctx, m)
		if err != nil {
			t.Fatal(err)
		}
		return !ack.Duplicate
	})
	e.settled()
	if n := effects.Load(); n != 1 || e.counter("duplicate") != 1 {
		t.Fatalf("%d effects, %v duplicates; want 1 and 1", n, e.counter("duplicate"))
	}
	replay := nats.NewMsg(bus.EventSubject(bus.ClassBot, "!r:x"))
	replay.Header.Set(bus.HeaderMsgID, "cactus-dlq-replay-1")
	bus.SetReplayOrigin(replay.Header, bus.Origin{Stream: bus.StreamEvents, Sequence: 1, Consumer: testConsumer})
	replay.Data = []byte("$event")
	if _, err := e.js.PublishMsg(e.ctx, replay); err != nil {
		t.Fatal(err)
	}
	e.settled()
	if n := effects.Load(); n != 2 {
		t.Fatalf("a replay had %d effects in all, want 2: a replay re-runs", n)
	}
	keys, err := done.KV().ListKeys(e.ctx)
	if err != nil {
		t.Fatal(err)
	}
	var all []string
	for k := range keys.Keys() {
		all = append(all, k)
	}
	if !slices.Equal(all, []string{markerKey(testConsumer, "$event")}) {
		t.Fatalf("markers %v", all)
	}
}
