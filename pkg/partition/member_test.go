package partition

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/cactus-comments/appservice/pkg/bus"
	"github.com/cactus-comments/appservice/pkg/embednats"
)

// Timings of the test groups: short, so that a killed member's partitions
// are taken over in seconds.
const (
	testAckWait = 2 * time.Second
	testGrace   = time.Second
	testLease   = testAckWait + testGrace + 2*time.Second
)

// env is an embedded server with the event stream of the topology (its
// subject transform included) and a bot group of short timings.
type env struct {
	t   *testing.T
	ctx context.Context
	srv *embednats.Server
	js  jetstream.JetStream
	g   bus.PartitionGroup
	rec *record
}

func newEnv(t *testing.T, partitions int, pinnedTTL time.Duration) *env {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	srv, _, js := embednats.JetStreamTest(t)
	topo := bus.Topology{Memory: true, BotPartitions: partitions}
	for _, sc := range topo.Streams() {
		if _, err := js.CreateOrUpdateStream(ctx, sc); err != nil {
			t.Fatal(err)
		}
	}
	g := topo.BotGroup()
	g.AckWait, g.PinnedTTL = testAckWait, pinnedTTL
	for _, cs := range g.ConsumerSpecs() {
		if _, err := js.CreateOrUpdateConsumer(ctx, cs.Stream, cs.Config); err != nil {
			t.Fatal(err)
		}
	}
	kc := topo.PartitionBucket()
	kc.TTL, kc.LimitMarkerTTL = testLease, time.Second
	if _, err := js.CreateOrUpdateKeyValue(ctx, kc); err != nil {
		t.Fatal(err)
	}
	return &env{t: t, ctx: ctx, srv: srv, js: js, g: g, rec: newRecord()}
}

// record is what every member did, shared by the test's members the way
// the homeserver sees every replica's effects.
type record struct {
	mu      sync.Mutex
	dead    map[string]bool
	keys    map[string]string // key -> member handling it now
	parts   map[int]string    // partition -> member consuming it now
	last    map[string]int    // key -> number of its last handled message
	done    int
	lastBy  map[int]handled // partition -> its last handled message
	flaws   []string
	changed chan struct{}
}

type handled struct {
	member string
	at     time.Time
}

func newRecord() *record {
	return &record{
		dead: map[string]bool{}, keys: map[string]string{}, parts: map[int]string{},
		last: map[string]int{}, lastBy: map[int]handled{}, changed: make(chan struct{}, 1),
	}
}

func (r *record) flaw(format string, args ...any) {
	r.flaws = append(r.flaws, fmt.Sprintf(format, args...))
}

func (r *record) notify() {
	select {
	case r.changed <- struct{}{}:
	default:
	}
}

// claim records that member starts working on what; another live member
// working on it is a violation. A dead member holds nothing.
func claimIn[K comparable](r *record, m map[K]string, what K, member string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if other, busy := m[what]; busy && other != member && !r.dead[other] {
		r.flaw("%v: %s started while %s was still at it", what, member, other)
	}
	m[what] = member
}

func releaseIn[K comparable](r *record, m map[K]string, what K, member string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if m[what] == member {
		delete(m, what)
	}
}

// complete records that message n of key, in partition p, was handled and
// acknowledged: it must be the key's next one.
func (r *record) complete(key string, n, p int, member string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if want := r.last[key] + 1; n != want {
		r.flaw("%s handled message %d of %s, want %d (duplicate or out of order)", member, n, key, want)
	}
	r.last[key] = max(r.last[key], n)
	r.done++
	r.lastBy[p] = handled{member, time.Now()}
	r.notify()
}

func (r *record) failures() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.flaws)
}

// waitFor polls cond until it holds, or fails the test after a generous
// deadline (the machine is shared: no timing is asserted).
func (e *env) waitFor(what string, cond func() bool) {
	e.t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			e.t.Fatalf("timed out waiting for %s; record flaws: %v", what, e.rec.failures())
		}
		select {
		case <-e.rec.changed:
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// member is one replica: its own connection (which a kill cuts), its
// Member, and a consume that handles one message at a time.
type member struct {
	e      *env
	name   string
	nc     *nats.Conn
	js     jetstream.JetStream
	conns  []net.Conn
	connMu sync.Mutex
	m      *Member
	cancel context.CancelFunc
	done   chan error
	// killMu makes a kill atomic with respect to acknowledgements: a
	// message is acknowledged and recorded, or neither.
	killMu   sync.RWMutex
	dead     bool
	killed   chan struct{}
	work     func(key string) time.Duration
	consumes atomic.Int32
}

func (d *member) Dial(network, address string) (net.Conn, error) {
	c, err := net.Dial(network, address)
	if err == nil {
		d.connMu.Lock()
		d.conns = append(d.conns, c)
		d.connMu.Unlock()
	}
	return c, err
}

func (e *env) member(name string) *member {
	e.t.Helper()
	d := &member{e: e, name: name, killed: make(chan struct{}), done: make(chan error, 1),
		work: func(key string) time.Duration { return time.Duration(1+len(key)%5) * time.Millisecond }}
	var err error
	d.nc, err = nats.Connect(e.srv.ClientURL(), nats.Name(name), nats.NoReconnect(), nats.SetCustomDialer(d))
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(d.nc.Close)
	if d.js, err = jetstream.New(d.nc); err != nil {
		e.t.Fatal(err)
	}
	if d.m, err = New(d.js, e.g, d.consume, Options{Instance: name, Grace: testGrace}); err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(e.ctx)
	d.cancel = cancel
	go func() { d.done <- d.m.Run(ctx) }()
	e.t.Cleanup(func() { cancel(); <-d.done })
	return d
}

// leave stops the member the clean way and checks it said nothing wrong.
func (d *member) leave() {
	d.e.t.Helper()
	d.cancel()
	if err := <-d.done; err != nil {
		d.e.t.Fatalf("%s: Run = %v", d.name, err)
	}
	d.done <- nil
}

// kill is a crash: the connection drops without a goodbye, nothing more is
// acknowledged, heartbeats stop. The Member is then stopped; with its
// connection gone it can tell nobody.
func (d *member) kill() {
	d.killMu.Lock()
	d.dead = true
	close(d.killed)
	d.connMu.Lock()
	for _, c := range d.conns {
		_ = c.Close()
	}
	d.connMu.Unlock()
	d.e.rec.mu.Lock()
	d.e.rec.dead[d.name] = true
	d.e.rec.mu.Unlock()
	d.killMu.Unlock()
	d.cancel()
	<-d.done
	d.done <- nil
}

// consume follows the package's rules: one message at a time, in the
// order received; on cancellation it lets the Fetch in flight end and
// Naks what it holds, in stream order.
func (d *member) consume(ctx context.Context, consumer string) error {
	p, err := strconv.Atoi(consumer[strings.LastIndex(consumer, "-p")+2:])
	if err != nil {
		return err
	}
	claimIn(d.e.rec, d.e.rec.parts, p, d.name)
	defer releaseIn(d.e.rec, d.e.rec.parts, p, d.name)
	d.consumes.Add(1)
	c, err := d.js.Consumer(ctx, d.e.g.Stream, consumer)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	var held []jetstream.Msg
	defer func() {
		slices.SortFunc(held, func(a, b jetstream.Msg) int { return int(seq(a)) - int(seq(b)) })
		for _, m := range held {
			_ = m.Nak()
		}
	}()
	for ctx.Err() == nil {
		batch, err := c.Fetch(4, jetstream.FetchMaxWait(200*time.Millisecond), jetstream.FetchPriorityGroup(d.e.g.PriorityGroup))
		if err != nil {
			return err
		}
		for m := range batch.Messages() {
			held = append(held, m)
		}
		for len(held) > 0 && ctx.Err() == nil {
			d.handle(held[0], p)
			held = held[1:]
		}
	}
	return nil
}

func seq(m jetstream.Msg) uint64 {
	md, err := m.Metadata()
	if err != nil {
		return 0
	}
	return md.Sequence.Stream
}

// handle works on one message for a while and acknowledges it, unless the
// member is killed first.
func (d *member) handle(m jetstream.Msg, p int) {
	key, nstr, _ := strings.Cut(string(m.Data()), "|")
	n, _ := strconv.Atoi(nstr)
	if bus.PartitionOf(key, d.e.g.Partitions) != p {
		d.e.rec.mu.Lock()
		d.e.rec.flaw("%s received %s in partition %d, want %d", d.name, key, p, bus.PartitionOf(key, d.e.g.Partitions))
		d.e.rec.mu.Unlock()
	}
	claimIn(d.e.rec, d.e.rec.keys, key, d.name)
	defer releaseIn(d.e.rec, d.e.rec.keys, key, d.name)
	select {
	case <-time.After(d.work(key)):
	case <-d.killed:
		return
	}
	d.killMu.RLock()
	defer d.killMu.RUnlock()
	if d.dead {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := m.DoubleAck(ctx); err != nil {
		d.e.t.Errorf("%s: ack of %s %d: %v", d.name, key, n, err)
		return
	}
	d.e.rec.complete(key, n, p, d.name)
}

// publisher stores messages for keys round the clock, numbered per key,
// through the subject the gateway publishes to.
type publisher struct {
	stop  chan struct{}
	done  chan struct{}
	count map[string]int
	total atomic.Int64
}

func testKey(i int) string { return fmt.Sprintf("!room%d:example.org", i) }

func (e *env) publish(keys int, every time.Duration) *publisher {
	e.t.Helper()
	parts := map[int]bool{}
	for i := range keys {
		parts[bus.PartitionOf(testKey(i), e.g.Partitions)] = true
	}
	if len(parts) != e.g.Partitions {
		e.t.Fatalf("%d keys fall in %d of %d partitions; the test needs work in every one", keys, len(parts), e.g.Partitions)
	}
	pub := &publisher{stop: make(chan struct{}), done: make(chan struct{}), count: map[string]int{}}
	go func() {
		defer close(pub.done)
		t := time.NewTicker(every)
		defer t.Stop()
		for i := 0; ; i++ {
			select {
			case <-pub.stop:
				return
			case <-t.C:
			}
			key := testKey((i * 7) % keys)
			pub.count[key]++
			m := nats.NewMsg(bus.EventSubject(bus.ClassBot, key))
			m.Header.Set(bus.HeaderMsgID, fmt.Sprintf("$%s-%d", key, pub.count[key]))
			m.Data = []byte(fmt.Sprintf("%s|%d", key, pub.count[key]))
			if _, err := e.js.PublishMsg(e.ctx, m); err != nil {
				e.t.Errorf("publish: %v", err)
				return
			}
			pub.total.Add(1)
		}
	}()
	e.t.Cleanup(func() { pub.halt() })
	return pub
}

func (pub *publisher) halt() {
	select {
	case <-pub.stop:
	default:
		close(pub.stop)
	}
	<-pub.done
}

func (e *env) handled() int {
	e.rec.mu.Lock()
	defer e.rec.mu.Unlock()
	return e.rec.done
}

// covered: the members hold every partition between them, each once.
func (e *env) covered(ms ...*member) bool {
	seen := map[int]bool{}
	for _, d := range ms {
		for _, p := range d.m.Held() {
			if seen[p] {
				return false
			}
			seen[p] = true
		}
	}
	return len(seen) == e.g.Partitions
}

func (e *env) check() {
	e.t.Helper()
	for _, f := range e.rec.failures() {
		e.t.Error(f)
	}
}

// Members join, leave cleanly and are killed while keys are published
// without pause: every message is handled once, in order per key, and no
// key nor partition is ever worked on by two live members at once.
func TestGroupOrderThroughJoinsLeavesAndKills(t *testing.T) {
	e := newEnv(t, 8, testAckWait+time.Second)
	pub := e.publish(40, 5*time.Millisecond)
	a, b, c := e.member("a"), e.member("b"), e.member("c")
	e.waitFor("a, b and c to share the partitions", func() bool {
		return e.covered(a, b, c) && len(a.m.Held()) > 0 && len(b.m.Held()) > 0 && len(c.m.Held()) > 0
	})
	progress := func(what string, more int) {
		t.Helper()
		target := e.handled() + more
		e.waitFor(what, func() bool { return e.handled() >= target })
	}
	progress("work with three members", 200)

	d := e.member("d")
	e.waitFor("d to take its share", func() bool { return e.covered(a, b, c, d) && len(d.m.Held()) > 0 })
	progress("work after d joined", 200)

	b.leave()
	e.waitFor("b's partitions to be taken over", func() bool { return e.covered(a, c, d) })
	progress("work after b left", 200)

	// Kill c while it works: what it held comes back after AckWait, and
	// its partitions once its claims expire.
	e.waitFor("c to be handling", func() bool {
		e.rec.mu.Lock()
		defer e.rec.mu.Unlock()
		for _, m := range e.rec.keys {
			if m == "c" {
				return true
			}
		}
		return false
	})
	orphans := c.m.Held()
	killed := time.Now()
	c.kill()
	e.waitFor("c's partitions to be taken over", func() bool { return e.covered(a, d) })
	tookOver := time.Since(killed)
	e.waitFor("c's partitions to be handled again", func() bool {
		e.rec.mu.Lock()
		defer e.rec.mu.Unlock()
		for _, p := range orphans {
			if h := e.rec.lastBy[p]; h.member == "c" || h.at.Before(killed) {
				return false
			}
		}
		return true
	})
	t.Logf("c held partitions %v; a and d claimed them %v after the kill, and handled their messages again %v after it (lease %v, AckWait %v)",
		orphans, tookOver.Round(time.Millisecond), time.Since(killed).Round(time.Millisecond), testLease, testAckWait)

	pub.halt()
	total := int(pub.total.Load())
	e.waitFor("every message to be handled", func() bool { return e.handled() >= total })
	a.leave()
	d.leave()

	e.check()
	e.rec.mu.Lock()
	defer e.rec.mu.Unlock()
	for key, n := range pub.count {
		if e.rec.last[key] != n {
			t.Errorf("%s: last handled %d, published %d", key, e.rec.last[key], n)
		}
	}
	if e.rec.done != total {
		t.Errorf("%d messages handled, %d published", e.rec.done, total)
	}
	t.Logf("%d messages over %d keys handled once each, in order", total, len(pub.count))
}

// The next owner does not wait for PinnedTTL: a member that leaves
// unpins the partition, and one that takes over from a member that died
// pinned unpins it.
func TestHandoverDoesNotWaitForThePin(t *testing.T) {
	e := newEnv(t, 1, 10*time.Minute) // a pin left standing would stall the test
	pinned := func() string {
		t.Helper()
		c, err := e.js.Consumer(e.ctx, e.g.Stream, e.g.Consumer(0))
		if err != nil {
			t.Fatal(err)
		}
		info, err := c.Info(e.ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, pg := range info.PriorityGroups {
			if pg.Group == e.g.PriorityGroup {
				return pg.PinnedClientID
			}
		}
		return ""
	}
	handledBy := func(name string, after time.Time) func() bool {
		return func() bool {
			e.rec.mu.Lock()
			defer e.rec.mu.Unlock()
			h := e.rec.lastBy[0]
			return h.member == name && h.at.After(after)
		}
	}
	pub := e.publish(3, 10*time.Millisecond)
	a := e.member("a")
	e.waitFor("a to consume", handledBy("a", time.Time{}))
	if pinned() == "" {
		t.Fatal("a consumes but nobody is pinned")
	}
	a.leave()
	if id := pinned(); id != "" {
		t.Fatalf("a left and %s is still pinned", id)
	}

	b := e.member("b")
	e.waitFor("b to consume", handledBy("b", time.Time{}))
	// A standby: a member the assignment gives nothing while b lives.
	standby := "c"
	for i := 0; Assign(1, []string{"b", standby})[0] != "b"; i++ {
		standby = fmt.Sprintf("c%d", i)
	}
	c := e.member(standby)
	kv, err := e.js.KeyValue(e.ctx, e.g.Bucket)
	if err != nil {
		t.Fatal(err)
	}
	e.waitFor(standby+" to join", func() bool {
		_, err := kv.Get(e.ctx, e.g.Name+".members."+bus.Token(standby))
		return err == nil
	})
	killed := time.Now()
	b.kill()
	e.waitFor(standby+" to handle messages after b died pinned", handledBy(standby, killed))
	t.Logf("%s took over %v after b was killed (PinnedTTL 10m)", standby, time.Since(killed).Round(time.Millisecond))
	if c.consumes.Load() == 0 {
		t.Error("the standby handled messages without consuming")
	}
	pub.halt()
	total := int(pub.total.Load())
	e.waitFor("every message to be handled", func() bool { return e.handled() >= total })
	e.check()
}

// A member whose claim is taken stops consuming at once and leaves the
// other claim alone; it consumes again once the partition is free.
func TestLostClaimStopsConsuming(t *testing.T) {
	e := newEnv(t, 2, testAckWait+time.Second)
	a := e.member("a")
	e.waitFor("a to hold both partitions", func() bool { return len(a.m.Held()) == 2 })
	kv, err := e.js.KeyValue(e.ctx, e.g.Bucket)
	if err != nil {
		t.Fatal(err)
	}
	key := e.g.Name + ".claims.1"
	if _, err := kv.Put(e.ctx, key, []byte("intruder")); err != nil {
		t.Fatal(err)
	}
	e.waitFor("a to stop consuming partition 1", func() bool {
		if !slices.Equal(a.m.Held(), []int{0}) {
			return false
		}
		e.rec.mu.Lock()
		defer e.rec.mu.Unlock()
		_, busy := e.rec.parts[1]
		return !busy
	})
	if en, err := kv.Get(e.ctx, key); err != nil || string(en.Value()) != "intruder" {
		t.Fatalf("the intruder's claim is %v, %v: a released what was not its own", en, err)
	}
	if err := kv.Delete(e.ctx, key); err != nil {
		t.Fatal(err)
	}
	e.waitFor("a to claim partition 1 again", func() bool { return len(a.m.Held()) == 2 })
	e.check()
}

// A consume that fails is started again while the member owns the
// partition.
func TestConsumeRestarted(t *testing.T) {
	e := newEnv(t, 1, testAckWait+time.Second)
	var calls atomic.Int32
	restarted := make(chan struct{})
	reg := prometheus.NewRegistry()
	met := NewMetrics(reg)
	m, err := New(e.js, e.g, func(ctx context.Context, consumer string) error {
		if calls.Add(1) == 1 {
			return errors.New("consumer went away")
		}
		close(restarted)
		<-ctx.Done()
		return nil
	}, Options{Instance: "solo", Grace: testGrace, Metrics: met})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(e.ctx)
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	select {
	case <-restarted:
	case err := <-done:
		t.Fatalf("Run = %v", err)
	case <-time.After(60 * time.Second):
		t.Fatal("consume was not started again")
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if held := m.Held(); len(held) != 0 {
		t.Errorf("after leaving, Held = %v", held)
	}
	for event, want := range map[string]float64{"acquired": 1, "released": 1, "consume_restarted": 1, "lost": 0, "fenced": 0, "overrun": 0} {
		if got := testutil.ToFloat64(met.events.WithLabelValues(e.g.Name, event)); got != want {
			t.Errorf("cactus_partition_events_total{event=%q} = %v, want %v", event, got, want)
		}
	}
	if got := testutil.ToFloat64(met.owned.WithLabelValues(e.g.Name)); got != 0 {
		t.Errorf("cactus_partition_owned = %v after leaving", got)
	}
	if n, err := testutil.GatherAndCount(reg); err != nil || n != 6+2+1 {
		// Every event series from the start, owned, members, and the histogram.
		t.Errorf("%d series registered (%v)", n, err)
	}
}

// Run refuses a group the order argument does not hold for, and a second
// member with the same name.
func TestRunRefuses(t *testing.T) {
	e := newEnv(t, 2, testAckWait+time.Second)
	run := func(g bus.PartitionGroup, o Options) error {
		t.Helper()
		o.Grace = max(o.Grace, testGrace)
		m, err := New(e.js, g, func(ctx context.Context, _ string) error { <-ctx.Done(); return nil }, o)
		if err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(e.ctx, 20*time.Second)
		defer cancel()
		done := make(chan error, 1)
		go func() { done <- m.Run(ctx) }()
		select {
		case err := <-done:
			return err
		case <-time.After(2 * time.Second):
			cancel()
			<-done
			return nil
		}
	}
	if err := run(e.g, Options{Instance: "x", Grace: 10 * time.Second}); err == nil || !strings.Contains(err.Error(), "lease") {
		t.Errorf("a grace the lease does not cover: %v", err)
	}
	unpinned := e.g.ConsumerSpecs()[1]
	unpinned.Config.PriorityPolicy, unpinned.Config.PriorityGroups, unpinned.Config.PinnedTTL = jetstream.PriorityPolicyNone, nil, 0
	if err := e.js.DeleteConsumer(e.ctx, unpinned.Stream, unpinned.Config.Durable); err != nil {
		t.Fatal(err)
	}
	if _, err := e.js.CreateConsumer(e.ctx, unpinned.Stream, unpinned.Config); err != nil {
		t.Fatal(err)
	}
	if err := run(e.g, Options{Instance: "y"}); err == nil || !strings.Contains(err.Error(), e.g.Consumer(1)) {
		t.Errorf("a consumer that pins nobody: %v", err)
	}
	if err := e.js.DeleteConsumer(e.ctx, e.g.Stream, e.g.Consumer(1)); err != nil {
		t.Fatal(err)
	}
	if _, err := e.js.CreateConsumer(e.ctx, e.g.Stream, e.g.ConsumerSpecs()[1].Config); err != nil {
		t.Fatal(err)
	}
	kv, err := e.js.KeyValue(e.ctx, e.g.Bucket)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Create(e.ctx, e.g.Name+".members."+bus.Token("twin"), []byte("twin")); err != nil {
		t.Fatal(err)
	}
	if err := run(e.g, Options{Instance: "twin"}); err == nil || !strings.Contains(err.Error(), "already a member") {
		t.Errorf("a second member named twin: %v", err)
	}
	if err := run(e.g, Options{Instance: "fine"}); err != nil {
		t.Errorf("a valid group: %v", err)
	}
	if _, err := New(e.js, bus.PartitionGroup{Name: "a.b", Partitions: 1, Stream: "s", Bucket: "b", PriorityGroup: "g"}, func(context.Context, string) error { return nil }, Options{}); err == nil {
		t.Error("New accepted a group name with a dot")
	}
}
