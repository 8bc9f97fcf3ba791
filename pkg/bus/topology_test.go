package bus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/cactus-comments/appservice/pkg/embednats"
)

func connect(t *testing.T, srv *embednats.Server) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return nc, js
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestEnsureIdempotentAndCheck(t *testing.T) {
	srv := embednats.StartTest(t)
	_, js := connect(t, srv)
	ctx := testCtx(t)
	topo := Topology{Replicas: 1}

	err := topo.Check(ctx, js)
	if err == nil {
		t.Fatal("Check passed on an empty server")
	}
	for _, name := range []string{StreamEvents, StreamJobs, StreamDLQ, ConsumerModeration, ConsumerJobs, BucketSites, BucketRooms, BucketIndex, BucketLimit, BucketDone, BucketStatus, BucketPartitions, "botworker-p00", "botworker-p15", StreamTxns, "gateway-splitter-p00", BucketSplitter} {
		if !strings.Contains(err.Error(), name) {
			t.Errorf("Check error does not name %s: %v", name, err)
		}
	}

	for i := range 2 {
		if err := topo.Ensure(ctx, js); err != nil {
			t.Fatalf("Ensure #%d: %v", i+1, err)
		}
	}
	if err := topo.Check(ctx, js); err != nil {
		t.Fatalf("Check after Ensure: %v", err)
	}
	streams := 0
	for range js.StreamNames(ctx).Name() {
		streams++
	}
	// Streams and buckets (KV_*), no duplicates from the second run.
	if want := len(topo.Streams()) + len(topo.Buckets()); streams != want {
		t.Errorf("%d streams after two Ensures, want %d", streams, want)
	}
	c, err := js.Consumer(ctx, StreamEvents, ConsumerModeration)
	if err != nil {
		t.Fatal(err)
	}
	ci := c.CachedInfo()
	// Not serialised; never given up on by JetStream; a dead replica's
	// messages back within seconds.
	if ci.Config.MaxAckPending <= 1 || ci.Config.MaxDeliver != -1 || ci.Config.AckWait > 30*time.Second ||
		ci.Config.FilterSubject != EventFilter(ClassModeration) {
		t.Errorf("moderation consumer config = %+v", ci.Config)
	}
	done, err := js.KeyValue(ctx, BucketDone)
	if err != nil {
		t.Fatal(err)
	}
	if st, err := done.Status(ctx); err != nil || st.TTL() < 7*24*time.Hour {
		t.Errorf("done markers kept %v (%v); want far longer than a homeserver outage", st.TTL(), err)
	}
	s, err := js.Stream(ctx, StreamEvents)
	if err != nil {
		t.Fatal(err)
	}
	if d := s.CachedInfo().Config.Duplicates; d != DuplicateWindow {
		t.Errorf("duplicate window %v, want %v", d, DuplicateWindow)
	}

	// The transaction stream keeps what is not split yet, whatever its age,
	// and refuses more rather than dropping any.
	ts, err := js.Stream(ctx, StreamTxns)
	if err != nil {
		t.Fatal(err)
	}
	if tc := ts.CachedInfo().Config; tc.Retention != jetstream.WorkQueuePolicy || tc.MaxAge != 0 || tc.Discard != jetstream.DiscardNew || tc.Duplicates != DuplicateWindow {
		t.Errorf("transaction stream config = %+v", tc)
	}
	sc, err := js.Consumer(ctx, StreamTxns, topo.SplitterGroup().Consumer(0))
	if err != nil {
		t.Fatal(err)
	}
	if cc := sc.CachedInfo().Config; cc.MaxDeliver != -1 || cc.PriorityPolicy != jetstream.PriorityPolicyPinned || cc.AckWait > cc.PinnedTTL {
		t.Errorf("splitter consumer config = %+v", cc)
	}

	// A changed setting is applied by the next Ensure.
	if err := (Topology{Replicas: 1, Duplicates: time.Minute}).Ensure(ctx, js); err != nil {
		t.Fatal(err)
	}
	if s, err = js.Stream(ctx, StreamEvents); err != nil || s.CachedInfo().Config.Duplicates != time.Minute {
		t.Fatalf("duplicate window not updated: %v", err)
	}

	// Check names exactly what went missing.
	if err := js.DeleteConsumer(ctx, StreamJobs, ConsumerJobs); err != nil {
		t.Fatal(err)
	}
	if err := js.DeleteKeyValue(ctx, BucketIndex); err != nil {
		t.Fatal(err)
	}
	err = topo.Check(ctx, js)
	if err == nil || !strings.Contains(err.Error(), ConsumerJobs) || !strings.Contains(err.Error(), BucketIndex) ||
		strings.Contains(err.Error(), ConsumerModeration) || strings.Contains(err.Error(), BucketSites) {
		t.Fatalf("Check after deletions = %v", err)
	}
}

func TestEnsureConcurrent(t *testing.T) {
	srv := embednats.StartTest(t)
	ctx := testCtx(t)
	topo := Topology{Replicas: 1}
	const n = 6
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		_, js := connect(t, srv)
		wg.Go(func() { errs[i] = topo.Ensure(ctx, js) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("replica %d: %v", i, err)
		}
	}
	_, js := connect(t, srv)
	if err := topo.Check(ctx, js); err != nil {
		t.Fatal(err)
	}
}

func TestDeduplicationByMsgID(t *testing.T) {
	srv := embednats.StartTest(t)
	_, js := connect(t, srv)
	ctx := testCtx(t)
	if err := (Topology{}).Ensure(ctx, js); err != nil {
		t.Fatal(err)
	}
	subj := EventSubject(ClassBot, "!r:example.org")
	publish := func(id, body string) *jetstream.PubAck {
		m := nats.NewMsg(subj)
		m.Header.Set(HeaderMsgID, id)
		m.Data = []byte(body)
		ack, err := js.PublishMsg(ctx, m)
		if err != nil {
			t.Fatal(err)
		}
		return ack
	}
	a1 := publish("$e1", "first")
	a2 := publish("$e1", "retry of the same event")
	a3 := publish("$e2", "another event")
	if a1.Duplicate || !a2.Duplicate || a3.Duplicate || a2.Sequence != a1.Sequence {
		t.Fatalf("acks = %+v %+v %+v", a1, a2, a3)
	}
	s, err := js.Stream(ctx, StreamEvents)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 2 {
		t.Fatalf("stream holds %d messages, want 2", info.State.Msgs)
	}
	m, err := s.GetMsg(ctx, a1.Sequence)
	if err != nil || string(m.Data) != "first" {
		t.Fatalf("stored %q, %v; want the first publish", m.Data, err)
	}
}

func TestDeadLetterRoundTrip(t *testing.T) {
	srv := embednats.StartTest(t)
	_, js := connect(t, srv)
	ctx := testCtx(t)
	if err := (Topology{}).Ensure(ctx, js); err != nil {
		t.Fatal(err)
	}
	h := nats.Header{}
	h.Set(HeaderMsgID, "$e1")
	h.Set("Nats-Expected-Stream", "SOMETHING_ELSE") // would make the publish fail if copied
	h.Set(HeaderTxnID, "txn-7")
	h.Add("X-Multi", "a")
	h.Add("X-Multi", "b")
	reason := "homeserver said 403 M_FORBIDDEN:\n{\"errcode\":\"M_FORBIDDEN\"}\r\n" + strings.Repeat("x", 5000)
	in := DeadLetter{
		Source: "botworker-p03", Stream: StreamEvents, Sequence: 17, Subject: EventSubject(ClassBot, "!r:x"),
		Reason: reason, Delivered: 8, Data: []byte(`{"event_id":"$e1"}`), Header: h,
	}
	for range 2 {
		// Twice: dead letters are not deduplicated (no message id).
		if err := PublishDeadLetter(ctx, js, in); err != nil {
			t.Fatal(err)
		}
	}
	s, err := js.Stream(ctx, StreamDLQ)
	if err != nil {
		t.Fatal(err)
	}
	c, err := s.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		m, err := c.Next(jetstream.FetchMaxWait(5 * time.Second))
		if err != nil {
			t.Fatalf("dead letter %d: %v", i, err)
		}
		if m.Subject() != DLQSubject("botworker-p03") {
			t.Errorf("subject %q", m.Subject())
		}
		out := ReadDeadLetter(m)
		if out.Source != in.Source || out.Stream != in.Stream || out.Sequence != 17 || out.Subject != in.Subject || out.Delivered != 8 || string(out.Data) != string(in.Data) {
			t.Errorf("read back %+v", out)
		}
		if !strings.HasPrefix(out.Reason, "homeserver said 403 M_FORBIDDEN: {") || strings.ContainsAny(out.Reason, "\r\n") || len(out.Reason) > 2100 {
			t.Errorf("reason %q", out.Reason)
		}
		if out.Header.Get(HeaderMsgID) != "" || out.Header.Get("Nats-Expected-Stream") != "" {
			t.Errorf("Nats-* headers kept: %v", out.Header)
		}
		if out.Header.Get(HeaderTxnID) != "txn-7" || len(out.Header.Values("X-Multi")) != 2 {
			t.Errorf("original headers lost: %v", out.Header)
		}
		if _, err := time.Parse(time.RFC3339Nano, out.Header.Get(HeaderFailedAt)); err != nil {
			t.Errorf("failure time: %v", err)
		}
	}
	// The caller's header is not modified.
	if h.Get(HeaderMsgID) != "$e1" || h.Get(HeaderReason) != "" {
		t.Errorf("PublishDeadLetter changed the caller's header: %v", h)
	}
}

func TestConnect(t *testing.T) {
	srv := embednats.StartTest(t)
	log := slog.New(slog.DiscardHandler)
	nc, err := Connect(testCtx(t), ConnOptions{URL: srv.ClientURL(), Name: "test"}, log)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if !nc.IsConnected() {
		t.Fatal("not connected")
	}

	// Nothing listens: Connect keeps trying until ctx ends, then says so.
	dead := embednats.StartTest(t)
	url := dead.ClientURL()
	dead.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if _, err := Connect(ctx, ConnOptions{URL: url, User: "u", Password: "hunter2-password"}, log); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Connect to a dead server = %v, want DeadlineExceeded", err)
	} else if strings.Contains(err.Error(), "hunter2") {
		t.Fatalf("error reveals the password: %v", err)
	}
}

// The event stream stores each bot event under its room's partition, as
// PartitionOf computes it, deduplicates by message id as before, and each
// partition consumer sees exactly its partition.
func TestBotPartitions(t *testing.T) {
	srv := embednats.StartTest(t)
	_, js := connect(t, srv)
	ctx := testCtx(t)
	topo := Topology{Memory: true, BotPartitions: 7}
	if err := topo.Ensure(ctx, js); err != nil {
		t.Fatal(err)
	}
	g := topo.BotGroup()
	publish := func(c Class, room, id string) *jetstream.PubAck {
		t.Helper()
		m := nats.NewMsg(EventSubject(c, room))
		m.Header.Set(HeaderMsgID, id)
		m.Data = []byte(room)
		ack, err := js.PublishMsg(ctx, m)
		if err != nil {
			t.Fatal(err)
		}
		return ack
	}
	perPartition := make([]uint64, g.Partitions)
	rooms := append([]string{}, hostile...)
	for i := range 200 {
		rooms = append(rooms, fmt.Sprintf("!room%d:example.org", i))
	}
	stored := map[uint64]string{} // sequence -> room
	for i, room := range rooms {
		ack := publish(ClassBot, room, fmt.Sprintf("$e%d", i))
		if ack.Duplicate {
			t.Fatalf("event %d taken for a duplicate", i)
		}
		stored[ack.Sequence] = room
		perPartition[PartitionOf(room, g.Partitions)]++
	}
	if again := publish(ClassBot, rooms[3], "$e3"); !again.Duplicate {
		t.Errorf("a retried bot event was stored twice: %+v", again)
	}
	modAck := publish(ClassModeration, "!mod:example.org", "$mod")

	s, err := js.Stream(ctx, StreamEvents)
	if err != nil {
		t.Fatal(err)
	}
	for seq, room := range stored {
		m, err := s.GetMsg(ctx, seq)
		if err != nil {
			t.Fatal(err)
		}
		if want := topo.StoredSubject(ClassBot, room); m.Subject != want {
			t.Fatalf("%q stored under %s, want %s", room, m.Subject, want)
		}
		if got, err := RoomFromEventSubject(m.Subject); err != nil || got != room {
			t.Fatalf("RoomFromEventSubject(%s) = %q, %v; want %q", m.Subject, got, err, room)
		}
	}
	if m, err := s.GetMsg(ctx, modAck.Sequence); err != nil || m.Subject != EventSubject(ClassModeration, "!mod:example.org") {
		t.Errorf("moderation event stored under %v (%v), want its subject unchanged", m, err)
	}
	if info, err := s.Info(ctx); err != nil || info.State.Msgs != uint64(len(rooms)+1) {
		t.Errorf("stream holds %v messages (%v), want %d", info, err, len(rooms)+1)
	}
	for p := range g.Partitions {
		c, err := js.Consumer(ctx, StreamEvents, g.Consumer(p))
		if err != nil {
			t.Fatal(err)
		}
		ci := c.CachedInfo()
		if ci.NumPending != perPartition[p] {
			t.Errorf("%s has %d pending, want %d", g.Consumer(p), ci.NumPending, perPartition[p])
		}
		cfg := ci.Config
		if cfg.PriorityPolicy != jetstream.PriorityPolicyPinned || !slices.Equal(cfg.PriorityGroups, []string{PartitionPriorityGroup}) ||
			cfg.PinnedTTL < cfg.AckWait || cfg.AckPolicy != jetstream.AckExplicitPolicy || cfg.FilterSubject != g.Filter(p) {
			t.Errorf("%s config = %+v", g.Consumer(p), cfg)
		}
	}
	kv, err := js.KeyValue(ctx, BucketPartitions)
	if err != nil {
		t.Fatal(err)
	}
	st, err := kv.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.TTL() < AckWait+PartitionGrace || st.LimitMarkerTTL() <= 0 {
		t.Errorf("partition bucket TTL %v, markers %v: want a lease above AckWait and grace, and expiry markers", st.TTL(), st.LimitMarkerTTL())
	}
}

// An installation from before partitions: Ensure adds the transform to the
// existing event stream, a retried event is still a duplicate, and events
// stored before keep their subject (the partition consumers never see
// them: the old consumer must drain them).
func TestBotPartitionsUpgrade(t *testing.T) {
	srv := embednats.StartTest(t)
	_, js := connect(t, srv)
	ctx := testCtx(t)
	topo := Topology{Memory: true}
	old := topo.Streams()[0]
	old.SubjectTransform = nil
	if _, err := js.CreateStream(ctx, old); err != nil {
		t.Fatal(err)
	}
	publish := func() *jetstream.PubAck {
		t.Helper()
		m := nats.NewMsg(EventSubject(ClassBot, "!a:x"))
		m.Header.Set(HeaderMsgID, "$1")
		ack, err := js.PublishMsg(ctx, m)
		if err != nil {
			t.Fatal(err)
		}
		return ack
	}
	first := publish()
	if err := topo.Ensure(ctx, js); err != nil {
		t.Fatal(err)
	}
	if again := publish(); !again.Duplicate || again.Sequence != first.Sequence {
		t.Errorf("the event retried after the upgrade was stored again: %+v", again)
	}
	s, err := js.Stream(ctx, StreamEvents)
	if err != nil {
		t.Fatal(err)
	}
	if m, err := s.GetMsg(ctx, first.Sequence); err != nil || m.Subject != EventSubject(ClassBot, "!a:x") {
		t.Errorf("event stored before the upgrade: %v, %v", m, err)
	}
}
