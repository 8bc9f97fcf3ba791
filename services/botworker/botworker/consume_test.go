package botworker

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/cactus-comments/appservice/pkg/bus"
)

// Through the consumer: a command published to the event stream is
// answered, and an undecodable message is dead-lettered with its reason
// instead of being retried.
func TestConsume(t *testing.T) {
	e := newEnv(t, nil)
	ctx, cancel := context.WithCancel(e.ctx)
	done := make(chan error, 1)
	go func() { done <- e.bot.Consume(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()

	publish := func(id string, data []byte) {
		m := nats.NewMsg(bus.EventSubject(bus.ClassBot, dmRoom))
		m.Header.Set(bus.HeaderMsgID, id)
		m.Data = data
		if _, err := e.rt.JS.PublishMsg(e.ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	publish("$garbage", []byte("{not json"))
	for _, body := range []string{"help", "sites", "register blog", "sites"} {
		ev := e.text(dmRoom, alice, body)
		raw, _ := json.Marshal(ev)
		publish(ev.EventID, raw)
	}

	// Nothing signals the fake's sends; poll with a deadline.
	deadline := time.Now().Add(20 * time.Second)
	for len(e.hs.messages(dmRoom)) < 4 {
		if time.Now().After(deadline) {
			t.Fatalf("replies so far: %d", len(e.hs.messages(dmRoom)))
		}
		time.Sleep(5 * time.Millisecond)
	}
	msgs := e.hs.messages(dmRoom)
	for i, want := range []string{"register <sitename>", "not registered any", "Done", "1 site"} {
		if !strings.Contains(msgs[i].Body, want) {
			t.Errorf("reply %d = %q, want %q (per-room order)", i, msgs[i].Body, want)
		}
	}

	dlq, err := e.rt.JS.OrderedConsumer(e.ctx, bus.StreamDLQ, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	m, err := dlq.Next(jetstream.FetchMaxWait(10 * time.Second))
	if err != nil {
		t.Fatalf("no dead letter: %v", err)
	}
	dl := bus.ReadDeadLetter(m)
	g := (bus.Topology{}).BotGroup()
	if want := g.Consumer(bus.PartitionOf(dmRoom, g.Partitions)); dl.Source != want {
		t.Errorf("dead letter from %s, want the room's partition consumer %s", dl.Source, want)
	}
	if !strings.Contains(dl.Reason, "malformed") || string(dl.Data) != "{not json" {
		t.Fatalf("dead letter %+v", dl)
	}
}
