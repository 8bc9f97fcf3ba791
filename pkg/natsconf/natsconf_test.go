package natsconf

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/cactus-comments/appservice/pkg/bus"
	"github.com/cactus-comments/appservice/pkg/embednats"
	"github.com/cactus-comments/appservice/pkg/registry"
)

// Server starts an embedded NATS configured with exactly ServerConfig,
// the passwords defined as configuration variables.
func server(t *testing.T) (*embednats.Server, map[bus.Identity]string) {
	t.Helper()
	pw := map[bus.Identity]string{}
	var vars strings.Builder
	for _, id := range bus.Identities() {
		pw[id] = "pw-" + string(id) + "-0123456789"
		fmt.Fprintf(&vars, "%s: %q\n", PasswordVar(id), pw[id])
	}
	srv, err := embednats.Start(embednats.Options{Dir: t.TempDir(), Config: vars.String() + ServerConfig(bus.Topology{})})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
	return srv, pw
}

// violations records the permission violations the server reports to a
// connection: the only signal a denied publish gives.
type violations struct{ ch chan error }

func connect(t *testing.T, srv *embednats.Server, id bus.Identity, password string) (*nats.Conn, jetstream.JetStream, *violations) {
	t.Helper()
	v := &violations{ch: make(chan error, 64)}
	nc, err := nats.Connect(srv.ClientURL(), nats.UserInfo(string(id), password), nats.CustomInboxPrefix(id.InboxPrefix()),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { v.ch <- err }))
	if err != nil {
		t.Fatalf("%s: %v", id, err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return nc, js, v
}

// denied waits for the server to report a violation naming subject.
func (v *violations) denied(t *testing.T, what, subject string) {
	t.Helper()
	timeout := time.After(30 * time.Second)
	for {
		select {
		case err := <-v.ch:
			if errors.Is(err, nats.ErrPermissionViolation) && strings.Contains(err.Error(), subject) {
				return
			}
		case <-timeout:
			t.Fatalf("%s: no permission violation for %s", what, subject)
		}
	}
}

func TestServerConfigEnforces(t *testing.T) {
	srv, pw := server(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	topo := bus.Topology{Replicas: 1}

	if nc, err := nats.Connect(srv.ClientURL(), nats.UserInfo("gateway", "wrong")); err == nil {
		nc.Close()
		t.Fatal("connected with a wrong password")
	} else if !errors.Is(err, nats.ErrAuthorization) {
		t.Fatalf("a wrong password: %v, want an authorization error", err)
	}

	_, opJS, _ := connect(t, srv, bus.Operator, pw[bus.Operator])
	if err := topo.Ensure(ctx, opJS); err != nil {
		t.Fatalf("the operator cannot ensure the topology: %v", err)
	}
	for _, id := range []bus.Identity{bus.Gateway, bus.Provisioner, bus.Botworker} {
		_, js, _ := connect(t, srv, id, pw[id])
		if err := topo.CheckFor(ctx, js, id); err != nil {
			t.Errorf("%s cannot see what it uses: %v", id, err)
		}
	}

	// The gateway stores events and dead letters...
	gwNC, gwJS, gwV := connect(t, srv, bus.Gateway, pw[bus.Gateway])
	m := nats.NewMsg(bus.EventSubject(bus.ClassBot, "!room:example.org"))
	m.Header.Set(bus.HeaderMsgID, "$event")
	m.Data = []byte(`{"event_id":"$event"}`)
	if _, err := gwJS.PublishMsg(ctx, m); err != nil {
		t.Fatalf("the gateway cannot store an event: %v", err)
	}
	if err := bus.PublishDeadLetter(ctx, gwJS, bus.DeadLetter{Source: "gateway", Subject: m.Subject, Reason: "test", Data: m.Data}); err != nil {
		t.Fatalf("the gateway cannot dead-letter: %v", err)
	}

	// ...but cannot read them, however it tries,
	sub, err := gwNC.SubscribeSync(bus.SubjectEventsAll)
	if err != nil {
		t.Fatal(err)
	}
	gwV.denied(t, "subscribe to events", bus.SubjectEventsAll)
	_ = sub.Unsubscribe()
	short, cancelShort := context.WithTimeout(ctx, 2*time.Second)
	if _, err := gwJS.CreateConsumer(short, bus.StreamEvents, jetstream.ConsumerConfig{Name: "spy"}); err == nil {
		t.Fatal("the gateway created a consumer on the event stream")
	}
	cancelShort()
	gwV.denied(t, "create a consumer", "$JS.API.CONSUMER.CREATE."+bus.StreamEvents)
	short, cancelShort = context.WithTimeout(ctx, 2*time.Second)
	if s, err := gwJS.Stream(short, bus.StreamEvents); err == nil {
		if _, err := s.GetMsg(short, 1); err == nil {
			t.Fatal("the gateway read an event by sequence")
		}
		gwV.denied(t, "get a message", "$JS.API.STREAM.MSG.GET."+bus.StreamEvents)
	}
	cancelShort()
	if _, err := gwNC.SubscribeSync(bus.Botworker.InboxPrefix() + ".>"); err != nil {
		t.Fatal(err)
	}
	gwV.denied(t, "read another identity's inbox", bus.Botworker.InboxPrefix())

	// It reads the registry's room index (to tell comments from
	// commands) and cannot write it.
	index, err := registry.OpenIndex(ctx, gwJS)
	if err != nil {
		t.Fatalf("the gateway cannot open the room index: %v", err)
	}
	if _, err := index.Lookup(ctx, "!room:example.org"); !errors.Is(err, registry.ErrNotFound) {
		t.Fatalf("the gateway's lookup in the room index: %v, want not found", err)
	}
	if err := gwNC.Publish("$KV."+bus.BucketIndex+".x", []byte("{}")); err != nil {
		t.Fatal(err)
	}
	gwV.denied(t, "write the room index", "$KV."+bus.BucketIndex)

	// ...and cannot delete a stream.
	short, cancelShort = context.WithTimeout(ctx, 2*time.Second)
	if err := gwJS.DeleteStream(short, bus.StreamEvents); err == nil {
		t.Fatal("the gateway deleted the event stream")
	}
	cancelShort()
	gwV.denied(t, "delete a stream", "$JS.API.STREAM.DELETE."+bus.StreamEvents)
	if s, err := opJS.Stream(ctx, bus.StreamEvents); err != nil || s.CachedInfo().State.Msgs != 1 {
		t.Fatalf("the event stream after the gateway's attempts: %v", err)
	}

	// A worker reads its own consumer only.
	_, bwJS, bwV := connect(t, srv, bus.Botworker, pw[bus.Botworker])
	g := topo.BotGroup()
	c, err := bwJS.Consumer(ctx, bus.StreamEvents, g.Consumer(bus.PartitionOf("!room:example.org", g.Partitions)))
	if err != nil {
		t.Fatal(err)
	}
	batch, err := c.Fetch(1, jetstream.FetchMaxWait(10*time.Second), jetstream.FetchPriorityGroup(g.PriorityGroup))
	if err != nil {
		t.Fatal(err)
	}
	got := 0
	for msg := range batch.Messages() {
		got++
		if err := msg.DoubleAck(ctx); err != nil {
			t.Fatalf("the botworker cannot ack: %v", err)
		}
	}
	if got != 1 {
		t.Fatalf("the botworker pulled %d events, want 1", got)
	}
	short, cancelShort = context.WithTimeout(ctx, 2*time.Second)
	if _, err := bwJS.Consumer(short, bus.StreamEvents, bus.ConsumerModeration); err == nil {
		t.Fatal("the botworker read the provisioner's consumer")
	}
	cancelShort()
	bwV.denied(t, "another consumer", "$JS.API.CONSUMER.INFO."+bus.StreamEvents+"."+bus.ConsumerModeration)
}
