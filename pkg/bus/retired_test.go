package bus

import (
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/cactus-comments/appservice/pkg/embednats"
)

// An installation of the version before the partitions: the event stream
// without the subject transform, the single bot consumer, per-room order
// records. After the upgrade's Ensure and MigrateRetired, the events the
// old consumer had not finished wait in their partitions in their order,
// the finished one is not moved, and the consumer and records are gone.
func TestMigrateRetired(t *testing.T) {
	srv := embednats.StartTest(t)
	_, js := connect(t, srv)
	ctx := testCtx(t)
	topo := Topology{Replicas: 1}
	if err := topo.Ensure(ctx, js); err != nil {
		t.Fatal(err)
	}
	events, err := js.Stream(ctx, StreamEvents)
	if err != nil {
		t.Fatal(err)
	}
	old := events.CachedInfo().Config
	old.SubjectTransform = nil
	if _, err := js.UpdateStream(ctx, old); err != nil {
		t.Fatal(err)
	}
	retired, err := js.CreateConsumer(ctx, StreamEvents, jetstream.ConsumerConfig{
		Durable: RetiredConsumerBot, FilterSubject: EventFilter(ClassBot), AckPolicy: jetstream.AckExplicitPolicy,
		AckWait: time.Minute, MaxDeliver: -1,
	})
	if err != nil {
		t.Fatal(err)
	}
	publish := func(room, id string) {
		m := nats.NewMsg(EventSubject(ClassBot, room))
		m.Header.Set(HeaderMsgID, id)
		m.Data = []byte(id)
		if _, err := js.PublishMsg(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	publish("!a:x", "$a1")
	publish("!b:x", "$b1")
	publish("!a:x", "$a2")
	publish("!a:x", "$a3")
	// The old botworker finished the first event.
	b, err := retired.Fetch(1, jetstream.FetchMaxWait(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	for m := range b.Messages() {
		if err := m.DoubleAck(ctx); err != nil {
			t.Fatal(err)
		}
	}
	state, err := js.KeyValue(ctx, BucketLimit)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := state.Put(ctx, "turn.IWE6eA", []byte("3")); err != nil {
		t.Fatal(err)
	}
	if _, err := state.Put(ctx, "user.keep", []byte("{}")); err != nil {
		t.Fatal(err)
	}

	if _, err := topo.MigrateRetired(ctx, js, nil); err == nil {
		t.Fatal("migrated before the stream had its partitions")
	}
	if err := topo.Ensure(ctx, js); err != nil {
		t.Fatal(err)
	}
	var said []string
	got, err := topo.MigrateRetired(ctx, js, func(s string) { said = append(said, s) })
	if err != nil {
		t.Fatal(err)
	}
	if got.Moved != 3 || !got.ConsumerDeleted || got.TurnsPurged != 1 || len(said) == 0 {
		t.Fatalf("migration %+v, said %q", got, said)
	}
	if _, err := js.Consumer(ctx, StreamEvents, RetiredConsumerBot); err == nil {
		t.Fatal("retired consumer still there")
	}
	if _, err := state.Get(ctx, "turn.IWE6eA"); err == nil {
		t.Fatal("order record still there")
	}
	if _, err := state.Get(ctx, "user.keep"); err != nil {
		t.Fatalf("other bot state purged: %v", err)
	}
	g := topo.BotGroup()
	inPartition := func(room string) []string {
		c, err := js.OrderedConsumer(ctx, StreamEvents, jetstream.OrderedConsumerConfig{FilterSubjects: []string{topo.StoredSubject(ClassBot, room)}})
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for {
			m, err := c.Next(jetstream.FetchMaxWait(500 * time.Millisecond))
			if err != nil {
				return ids
			}
			ids = append(ids, string(m.Data()))
		}
	}
	if a := inPartition("!a:x"); !slices.Equal(a, []string{"$a2", "$a3"}) {
		t.Errorf("room a in partition %d: %q", PartitionOf("!a:x", g.Partitions), a)
	}
	if b := inPartition("!b:x"); !slices.Equal(b, []string{"$b1"}) {
		t.Errorf("room b: %q", b)
	}

	again, err := topo.MigrateRetired(ctx, js, nil)
	if err != nil || again != (Migration{}) {
		t.Fatalf("second migration %+v, %v", again, err)
	}
}
