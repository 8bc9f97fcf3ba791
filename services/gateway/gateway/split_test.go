package gateway

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
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
	"github.com/cactus-comments/appservice/pkg/config"
	"github.com/cactus-comments/appservice/pkg/partition"
	"github.com/cactus-comments/appservice/pkg/service"
)

// Timings of the splitter group in these tests: a dead splitter is
// replaced within seconds, as the package partition's own tests do.
const (
	testSplitAckWait = 2 * time.Second
	testSplitGrace   = time.Second
	testSplitLease   = testSplitAckWait + testSplitGrace + 2*time.Second
)

// shortenSplitter gives the splitter group of the env's server the test
// timings. Splitters started afterwards use them.
func (e *env) shortenSplitter() {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	topo := service.Topology(e.cfg)
	kc := topo.SplitterBucket()
	kc.TTL, kc.LimitMarkerTTL = testSplitLease, time.Second
	if _, err := e.rt.JS.CreateOrUpdateKeyValue(ctx, kc); err != nil {
		e.t.Fatal(err)
	}
	cs := topo.SplitterConsumer()
	cs.Config.AckWait, cs.Config.PinnedTTL = testSplitAckWait, testSplitAckWait+time.Second
	if _, err := e.rt.JS.CreateOrUpdateConsumer(ctx, cs.Stream, cs.Config); err != nil {
		e.t.Fatal(err)
	}
}

// killable dials NATS connections that a test can cut: all at once (a
// killed process), or after some more bytes (a process killed while it
// was writing).
type killable struct {
	mu    sync.Mutex
	conns []*cutConn
}

func (k *killable) Dial(network, address string) (net.Conn, error) {
	c, err := net.Dial(network, address)
	if err != nil {
		return nil, err
	}
	cc := &cutConn{Conn: c, left: -1}
	k.mu.Lock()
	k.conns = append(k.conns, cc)
	k.mu.Unlock()
	return cc, nil
}

// cutAfter makes every connection die once n more bytes are written.
func (k *killable) cutAfter(n int) {
	k.mu.Lock()
	defer k.mu.Unlock()
	for _, c := range k.conns {
		c.mu.Lock()
		c.left = n
		c.mu.Unlock()
	}
}

func (k *killable) kill() { k.cutAfter(0) }

// dead reports whether every connection has been cut.
func (k *killable) dead() bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	for _, c := range k.conns {
		c.mu.Lock()
		cut := c.cut
		c.mu.Unlock()
		if !cut {
			return false
		}
	}
	return true
}

type cutConn struct {
	net.Conn
	mu   sync.Mutex
	left int // bytes still let through; -1: no limit
	cut  bool
}

func (c *cutConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	if c.left < 0 {
		c.mu.Unlock()
		return c.Conn.Write(p)
	}
	n := min(c.left, len(p))
	c.left -= n
	done := c.left == 0
	c.mu.Unlock()
	if n > 0 {
		if _, err := c.Conn.Write(p[:n]); err != nil {
			return 0, err
		}
	}
	if done {
		c.mu.Lock()
		c.cut = true
		c.mu.Unlock()
		_ = c.Conn.Close()
		return n, net.ErrClosed
	}
	return n, nil
}

// replica is one more gateway process on the env's NATS server: its own
// connections (which a kill cuts, without reconnecting), API and
// splitter.
type replica struct {
	name string
	gw   *Gateway
	srv  *httptest.Server
	// api is the handler's connection, split the splitter's.
	api, split *killable
	stop       func()
}

func (e *env) replica(name string) *replica {
	e.t.Helper()
	r := &replica{name: name, api: &killable{}, split: &killable{}}
	connect := func(k *killable) *nats.Conn {
		nc, err := nats.Connect(e.ns.ClientURL(), nats.Name(name), nats.NoReconnect(), nats.SetCustomDialer(k))
		if err != nil {
			e.t.Fatal(err)
		}
		e.t.Cleanup(nc.Close)
		return nc
	}
	nc := connect(r.api)
	js, err := jetstream.New(nc)
	if err != nil {
		e.t.Fatal(err)
	}
	rt := &service.Runtime{Name: Name, Config: e.cfg, Log: testLogger(e.cfg, e.logs).With("replica", name), Metrics: prometheus.NewRegistry(), NC: nc, JS: js}
	r.gw, err = New(rt, WithSplitterConn(connect(r.split)), WithSplitter(partition.Options{Instance: name, Grace: testSplitGrace}))
	if err != nil {
		e.t.Fatal(err)
	}
	r.srv = httptest.NewServer(r.gw.Handler())
	e.t.Cleanup(r.srv.Close)
	r.stop = e.startSplit(r.gw)
	return r
}

// active reports whether this replica splits now.
func (r *replica) active() bool {
	return counter(r.gw.metrics.splitState.WithLabelValues(splitActive)) == 1
}

// kill is a crash: every connection drops at once and nothing more goes
// out; the splitter, which can tell nobody, is then stopped.
func (r *replica) kill() {
	r.api.kill()
	r.split.kill()
	r.srv.CloseClientConnections()
	r.stop()
}

// numbered is an event of room r with number n, in that room's order.
func numbered(r, n int) string {
	return message(fmt.Sprintf("$ev-%d-%d", r, n), fmt.Sprintf("!room%d:example.org", r))
}

// checkRooms checks the event stream: every event of want in it, and each
// room's events first stored in their numbers' order. Events stored again
// (a transaction split again after NATS failed under the splitter) are
// allowed: the workers' done markers recognise them.
func (e *env) checkRooms(want map[string]bool) {
	e.t.Helper()
	last := map[string]int{}
	seen := map[string]bool{}
	again := 0
	for _, m := range e.stored(bus.StreamEvents) {
		id := m.Header.Get(bus.HeaderEventID)
		if seen[id] {
			again++
			continue
		}
		seen[id] = true
		parts := strings.Split(strings.TrimPrefix(id, "$ev-"), "-")
		if len(parts) != 2 {
			continue
		}
		n, _ := strconv.Atoi(parts[1])
		if prev, ok := last[parts[0]]; ok && n <= prev {
			e.t.Errorf("room %s: event %d stored after event %d", parts[0], n, prev)
		}
		last[parts[0]] = n
	}
	for id := range want {
		if !seen[id] {
			e.t.Errorf("%s acknowledged to the homeserver but not in the event stream", id)
		}
	}
	e.t.Logf("%d events, %d of them stored again", len(seen), again)
}

// homeserver sends transactions one at a time, as Synapse does, each
// until it is acknowledged, to whichever gateway URL pick gives, and
// records what was acknowledged.
type homeserver struct {
	e     *env
	pick  func(k, attempt int) string
	acked map[string]bool
	sent  atomic.Int64
	// refused counts the attempts not acknowledged.
	refused atomic.Int64
	// enough ends the sending after the transaction being sent.
	enough chan struct{}
	stop   chan struct{}
	done   chan struct{}
}

// transaction k holds per events, rooms taking turns, numbered per room.
func (e *env) homeserver(txns, per, rooms int, pick func(k, attempt int) string) *homeserver {
	hs := &homeserver{e: e, pick: pick, acked: map[string]bool{}, enough: make(chan struct{}), stop: make(chan struct{}), done: make(chan struct{})}
	next := make([]int, rooms)
	go func() {
		defer close(hs.done)
		client := &http.Client{Timeout: 30 * time.Second}
		for k := range txns {
			select {
			case <-hs.enough:
				return
			default:
			}
			var events, ids []string
			for i := range per {
				r := (k*per + i) % rooms
				events = append(events, numbered(r, next[r]))
				ids = append(ids, fmt.Sprintf("$ev-%d-%d", r, next[r]))
				next[r]++
			}
			body := txnBody(events...)
			for attempt := 0; ; attempt++ {
				select {
				case <-hs.stop:
					return
				default:
				}
				req, _ := http.NewRequest(http.MethodPut, hs.pick(k, attempt)+"/_matrix/app/v1/transactions/"+strconv.Itoa(k), bytes.NewReader(body))
				req.Header.Set("Authorization", "Bearer "+testHSToken)
				resp, err := client.Do(req)
				if err == nil {
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode == 200 {
						break
					}
				}
				hs.refused.Add(1)
				time.Sleep(20 * time.Millisecond) // the homeserver's backoff, shortened
			}
			for _, id := range ids {
				hs.acked[id] = true
			}
			hs.sent.Add(1)
		}
	}()
	e.t.Cleanup(func() {
		select {
		case <-hs.stop:
		default:
			close(hs.stop)
		}
		<-hs.done
	})
	return hs
}

// finish lets the transaction being sent be acknowledged and sends no
// more.
func (hs *homeserver) finish() map[string]bool {
	close(hs.enough)
	return hs.wait()
}

func (hs *homeserver) wait() map[string]bool {
	hs.e.t.Helper()
	select {
	case <-hs.done:
	case <-time.After(3 * time.Minute):
		hs.e.t.Fatalf("the homeserver got %d transactions acknowledged in 3 minutes", hs.sent.Load())
	}
	return hs.acked
}

// TestSplitNATSStoppedBeforeSplit: transactions acknowledged while no
// splitter runs are on disk; NATS stops and starts again; the splitter
// then moves them to the event stream, each event once and in order.
func TestSplitNATSStoppedBeforeSplit(t *testing.T) {
	e := newEnv(t, withoutSplitter())
	var want []string
	for k := range 5 {
		var events []string
		for i := range 20 {
			events = append(events, numbered(i%3, k*20+i))
			want = append(want, fmt.Sprintf("$ev-%d-%d", i%3, k*20+i))
		}
		if status, body := e.do(http.MethodPut, "/_matrix/app/v1/transactions/"+strconv.Itoa(k), txnBody(events...)); status != 200 {
			t.Fatalf("status %d body %s", status, body)
		}
	}
	if n := e.streamLen(bus.StreamTxns); n != 5 {
		t.Fatalf("%d transaction messages stored, want 5", n)
	}
	if n := e.streamLen(bus.StreamEvents); n != 0 {
		t.Fatalf("%d events stored before any split", n)
	}
	e.ns.Stop()
	ns, err := e.ns.Restart()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ns.Shutdown)
	e.ns = ns
	waitFor(t, "the gateway to reconnect", e.rt.NC.IsConnected)
	e.startSplit(e.gw)
	got := e.eventIDs()
	if !slices.Equal(got, want) {
		t.Fatalf("event stream holds %v, want %v", got, want)
	}
}

// TestSplitNATSStoppedWhileSplitting: NATS stops while a homeserver
// keeps sending and the splitter keeps splitting; once it is back, every
// acknowledged event is in the event stream once, each room in order.
func TestSplitNATSStoppedWhileSplitting(t *testing.T) {
	e := newEnv(t, withConfig(func(c *config.Config) { c.PublishTimeout = 2 * time.Second }))
	hs := e.homeserver(1_000_000, 30, 4, func(int, int) string { return e.srv.URL })
	waitFor(t, "some transactions", func() bool { return hs.sent.Load() >= 20 })
	e.ns.Stop()
	waitFor(t, "the homeserver to be refused", func() bool { return hs.refused.Load() >= 3 })
	ns, err := e.ns.Restart()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ns.Shutdown)
	e.ns = ns
	after := hs.sent.Load() + 20
	waitFor(t, "transactions after the outage", func() bool { return hs.sent.Load() >= after })
	acked := hs.finish()
	waitFor(t, "the gateway to reconnect", e.rt.NC.IsConnected)
	e.checkRooms(acked)
}

// TestSplitterKilledMidTransaction: the active splitter dies while it is
// writing a transaction's events, part of them stored; the standby
// replica takes over and splits the transaction again: every event is in
// the event stream, in order, after the part the dead one stored (which
// the workers' done markers recognise as stored twice).
func TestSplitterKilledMidTransaction(t *testing.T) {
	e := newEnv(t, withoutSplitter())
	e.shortenSplitter()
	a, b := e.replicas()
	const n = 800
	var events, want []string
	for i := range n {
		events = append(events, numbered(i%5, i))
		want = append(want, fmt.Sprintf("$ev-%d-%d", i%5, i))
	}
	// The events, a few hundred bytes each with their headers, go out in
	// writes of up to 32 KiB: the connection dies part of the way through.
	a.split.cutAfter(n * 200 / 3)
	if status, body := e.do(http.MethodPut, "/_matrix/app/v1/transactions/big", txnBody(events...)); status != 200 {
		t.Fatalf("status %d body %s", status, body)
	}
	waitFor(t, "the active splitter's connection to die", a.split.dead)
	a.stop()
	waitFor(t, "the events it sent to be stored", func() bool { return e.streamLen(bus.StreamEvents) > 0 })
	before := int(e.streamLen(bus.StreamEvents))
	if before >= n {
		t.Fatalf("%d of %d events stored when the splitter died: the test wants it dead mid-transaction", before, n)
	}
	t.Logf("%d of %d events stored when the splitter died", before, n)
	if b.active() {
		t.Fatal("the standby split before the dead splitter's lease expired")
	}
	waitFor(t, "the standby to take over", b.active)
	waitFor(t, "the transaction split again", func() bool { return int(e.streamLen(bus.StreamEvents)) >= before+n })
	got := e.eventIDs()
	if len(got) != before+n || !slices.Equal(got[:before], want[:before]) || !slices.Equal(got[before:], want) {
		t.Fatalf("event stream holds %d events, want the dead splitter's %d and then all %d in order", len(got), before, n)
	}
	// Another replica stored the transaction: read from the stream.
	if got := counter(b.gw.metrics.splitReads.WithLabelValues("stream")); got != 1 {
		t.Errorf("the standby read %v transaction messages from the stream, want 1", got)
	}
}

// replicas starts two replicas and returns the one that splits first.
func (e *env) replicas() (active, standby *replica) {
	e.t.Helper()
	x, y := e.replica("x"), e.replica("y")
	if partition.Assign(1, []string{"x", "y"})[0] == "y" {
		x, y = y, x
	}
	waitFor(e.t.(*testing.T), "one replica to split", func() bool { return x.active() && !y.active() })
	return x, y
}

// TestActiveReplicaKilled: two gateways, the homeserver sending to both
// in turn; the one that splits is killed, HTTP and NATS at once. The
// homeserver's retries go to the other, which takes the splitting over:
// nothing acknowledged is lost, nothing stored twice, every room in order.
func TestActiveReplicaKilled(t *testing.T) {
	e := newEnv(t, withoutSplitter())
	e.shortenSplitter()
	a, b := e.replicas()
	var killed atomic.Bool
	hs := e.homeserver(1_000_000, 25, 6, func(k, attempt int) string {
		if killed.Load() || (k+attempt)%2 == 1 {
			return b.srv.URL
		}
		return a.srv.URL
	})
	waitFor(t, "some transactions", func() bool { return hs.sent.Load() >= 40 })
	killed.Store(true)
	a.kill()
	waitFor(t, "the other replica to take over", b.active)
	after := hs.sent.Load() + 20
	waitFor(t, "transactions after the takeover", func() bool { return hs.sent.Load() >= after })
	e.checkRooms(hs.finish())
}

// TestTransactionLargerThanOneMessage: a transaction whose events do not
// fit in one message is stored as several, in order; its identical retry
// stores none.
func TestTransactionLargerThanOneMessage(t *testing.T) {
	e := newEnv(t, withConfig(func(c *config.Config) { c.MaxBodyBytes = 8 << 20 }))
	pad := strings.Repeat("p", 60<<10)
	var events, want []string
	for i := range 40 { // about 2.4 MiB
		events = append(events, hostileEvent(fmt.Sprintf("$big%02d", i), `content={"msgtype":"m.text","body":"`+pad+`"}`))
		want = append(want, fmt.Sprintf("$big%02d", i))
	}
	body := txnBody(events...)
	for range 2 {
		if status, out := e.do(http.MethodPut, "/_matrix/app/v1/transactions/large", body); status != 200 {
			t.Fatalf("status %d body %.200s", status, out)
		}
	}
	stored, dups := counter(e.gw.metrics.txnMessagesStored), counter(e.gw.metrics.txnMessagesDuplicate)
	if stored < 3 || dups != stored {
		t.Errorf("%v transaction messages stored, %v duplicates: want at least 3, all duplicated by the retry", stored, dups)
	}
	if got := e.eventIDs(); !slices.Equal(got, want) {
		t.Fatalf("event stream holds %v", got)
	}
}

// TestSplitterCannotStore: the event stream is gone. Transactions are
// still acknowledged (they are stored), the splitter holds them and says
// so in readiness; once the stream is back, everything is split.
func TestSplitterCannotStore(t *testing.T) {
	e := newEnv(t)
	e.rt.SetReady(true)
	ctx := context.Background()
	if err := e.rt.JS.DeleteStream(ctx, bus.StreamEvents); err != nil {
		t.Fatal(err)
	}
	if status, body := e.do(http.MethodPut, "/_matrix/app/v1/transactions/1", txnBody(message("$held", "!r:example.org"))); status != 200 {
		t.Fatalf("status %d body %s", status, body)
	}
	waitFor(t, "readiness to name the splitter", func() bool {
		err := e.rt.Ready()
		return err != nil && strings.Contains(err.Error(), "splitter cannot store events")
	})
	if got := counter(e.gw.metrics.splitState.WithLabelValues(splitFailing)); got != 1 {
		t.Errorf("splitter_state{failing} = %v", got)
	}
	if err := service.Topology(e.cfg).Ensure(ctx, e.rt.JS); err != nil {
		t.Fatal(err)
	}
	if got := e.eventIDs(); !slices.Equal(got, []string{"$held"}) {
		t.Fatalf("event stream holds %v", got)
	}
	waitFor(t, "readiness to come back", func() bool { return e.rt.Ready() == nil })
}

// TestSplitterRecoversLostDelivery: a transaction message was delivered
// and lost on the way (here: to a pull request whose client vanished), so
// JetStream would deliver it again only after AckWait, behind newer ones.
// The splitter reads it from the stream in its place: the homeserver's
// order holds.
func TestSplitterRecoversLostDelivery(t *testing.T) {
	e := newEnv(t, withoutSplitter())
	var want []string
	for k := range 3 {
		var events []string
		for i := range 4 {
			events = append(events, numbered(0, k*4+i))
			want = append(want, fmt.Sprintf("$ev-0-%d", k*4+i))
		}
		if status, body := e.do(http.MethodPut, "/_matrix/app/v1/transactions/"+strconv.Itoa(k), txnBody(events...)); status != 200 {
			t.Fatalf("status %d body %s", status, body)
		}
	}
	g := service.Topology(e.cfg).SplitterGroup()
	c, err := e.rt.JS.Consumer(context.Background(), g.Stream, g.Consumer(0))
	if err != nil {
		t.Fatal(err)
	}
	lost, err := c.Fetch(1, jetstream.FetchMaxWait(5*time.Second), jetstream.FetchPriorityGroup(g.PriorityGroup))
	if err != nil {
		t.Fatal(err)
	}
	for range lost.Messages() {
		// Received and never acknowledged: JetStream holds it for AckWait.
	}
	e.startSplit(e.gw)
	if got := e.eventIDs(); !slices.Equal(got, want) {
		t.Fatalf("event stream holds %v, want %v", got, want)
	}
	if !strings.Contains(e.logs.String(), "lost on the way") {
		t.Error("the lost delivery is not logged")
	}
}

// TestSplitterRefusedWithoutAck: the splitter sends the events between a
// transaction's first and last without asking for acks. JetStream refusing
// one of them says nothing; the gap between the first and last events'
// sequences shows it, and the splitter sends the events between them
// again with acks: the refused one, refused again, is dead-lettered, and
// every other event is in the event stream, in order, those between the
// first and last twice (the workers' done markers recognise them).
func TestSplitterRefusedWithoutAck(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	e.limitEvents(ctx, 2048)
	room := "!r:example.org"
	big := hostileEvent("$big", `content={"msgtype":"m.text","body":"`+strings.Repeat("b", 3000)+`"}`)
	body := txnBody(message("$1", room), message("$2", room), big, message("$3", room), message("$4", room))
	if status, body := e.do(http.MethodPut, "/_matrix/app/v1/transactions/t1", body); status != 200 {
		t.Fatalf("status %d body %s", status, body)
	}
	e.splitDone()
	if got, want := e.eventIDs(), []string{"$1", "$2", "$3", "$4", "$2", "$3"}; !slices.Equal(got, want) {
		t.Fatalf("event stream holds %q, want %q", got, want)
	}
	if got := counter(e.gw.metrics.splitUnconfirmed); got != 3 {
		t.Errorf("unconfirmed events sent again: %v, want the 3 between the first and the last", got)
	}
	letters := e.stored(bus.StreamDLQ)
	if len(letters) != 1 {
		t.Fatalf("%d dead letters, want the refused event's", len(letters))
	}
	if r := letters[0].Header.Get(bus.HeaderReason); !strings.Contains(r, "refused for good") || !strings.Contains(string(letters[0].Data), "$big") {
		t.Errorf("dead letter %q: %s", r, letters[0].Data)
	}
}

// TestModerationEventStoredOnce: a second copy of a ban (a retried
// transaction, its bytes changed by the homeserver) stored after the
// unban that followed it would look newer to the moderation consumer,
// which keeps the decision of the highest stream sequence. Moderation
// events keep their event id as Nats-Msg-Id and always ask for an ack:
// the copy is dropped and takes no sequence, so the events around it
// still check out. Other events are stored again.
func TestModerationEventStoredOnce(t *testing.T) {
	e := newEnv(t)
	room := "!mod:example.org"
	ban := member("$ban", room, "@owner:example.org", "@spam:example.org", "ban")
	unban := member("$unban", room, "@owner:example.org", "@spam:example.org", "leave")
	for i, body := range [][]byte{
		txnBody(ban, message("$m1", room)),
		txnBody(unban),
		txnBody(message("$m2", room), ban, message("$m3", room), message("$m1", room)),
	} {
		if status, b := e.do(http.MethodPut, "/_matrix/app/v1/transactions/"+strconv.Itoa(i), body); status != 200 {
			t.Fatalf("transaction %d: status %d body %s", i, status, b)
		}
	}
	if got, want := e.eventIDs(), []string{"$ban", "$m1", "$unban", "$m2", "$m3", "$m1"}; !slices.Equal(got, want) {
		t.Fatalf("event stream holds %q, want %q", got, want)
	}
}

// A moderation event JetStream already has (a retry within its
// duplicate window) at either end of a transaction takes no sequence; the
// check that the events sent without an ack are stored must not take it
// for a gap and send them all again.
func TestDuplicateModerationEventAtTheEndsIsNoGap(t *testing.T) {
	e := newEnv(t)
	room := "!mod:example.org"
	ban := member("$ban", room, "@owner:example.org", "@spam:example.org", "ban")
	for i, body := range [][]byte{
		txnBody(ban, message("$m1", room)),
		txnBody(ban, message("$m2", room), message("$m3", room), message("$m4", room)),
		txnBody(message("$m5", room), message("$m6", room), message("$m7", room), ban),
	} {
		if status, b := e.do(http.MethodPut, "/_matrix/app/v1/transactions/"+strconv.Itoa(i), body); status != 200 {
			t.Fatalf("transaction %d: status %d body %s", i, status, b)
		}
	}
	if got, want := e.eventIDs(), []string{"$ban", "$m1", "$m2", "$m3", "$m4", "$m5", "$m6", "$m7"}; !slices.Equal(got, want) {
		t.Fatalf("event stream holds %q, want %q", got, want)
	}
	if n := testutil.ToFloat64(e.gw.metrics.splitUnconfirmed); n != 0 {
		t.Errorf("split_unconfirmed_total = %v: events were sent again although none was lost", n)
	}
	if n := testutil.ToFloat64(e.gw.metrics.eventsPublished[bus.ClassModeration]); n != 1 {
		t.Errorf("events_published_total{class=mod} = %v, want 1: the copies JetStream dropped were not stored", n)
	}
}

func TestSplitRejoinBackoff(t *testing.T) {
	steps := []struct {
		prev, ran, want time.Duration
	}{
		{0, 0, time.Second},
		{time.Second, time.Second, 2 * time.Second},
		{2 * time.Second, 5 * time.Second, 4 * time.Second},
		{4 * time.Second, 5 * time.Second, 5 * time.Second},
		{5 * time.Second, 5 * time.Second, 5 * time.Second}, // NATS away for long: still every 5 s
		{5 * time.Second, time.Hour, time.Second},           // it ran for an hour, then failed
	}
	for _, s := range steps {
		if got := splitRejoinBackoff(s.prev, s.ran); got != s.want {
			t.Errorf("splitRejoinBackoff(%v, %v) = %v, want %v", s.prev, s.ran, got, s.want)
		}
	}
}
