package bus

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/cactus-comments/appservice/pkg/embednats"
)

// TestEnsureChangesOnlyWhatDiffers: once the topology is in place, Ensure
// from another replica sends no update at all (an update racing a
// consumer's creation is a data race inside nats-server), and a
// declaration that changed is applied.
func TestEnsureChangesOnlyWhatDiffers(t *testing.T) {
	srv := embednats.StartTest(t)
	nc, js := connect(t, srv)
	ctx := testCtx(t)
	topo := Topology{Replicas: 1}
	if err := topo.Ensure(ctx, js); err != nil {
		t.Fatal(err)
	}
	var writes atomic.Int64
	for _, subj := range []string{"$JS.API.STREAM.CREATE.>", "$JS.API.STREAM.UPDATE.>", "$JS.API.CONSUMER.CREATE.>", "$JS.API.CONSUMER.DURABLE.CREATE.>"} {
		sub, err := nc.Subscribe(subj, func(*nats.Msg) { writes.Add(1) })
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = sub.Unsubscribe() })
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	_, js2 := connect(t, srv)
	if err := topo.Ensure(ctx, js2); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	if n := writes.Load(); n != 0 {
		t.Fatalf("a second Ensure of an unchanged topology sent %d creates or updates", n)
	}

	changed := Topology{Replicas: 1, Duplicates: 3 * time.Minute}
	if err := changed.Ensure(ctx, js2); err != nil {
		t.Fatal(err)
	}
	s, err := js2.Stream(ctx, StreamEvents)
	if err != nil {
		t.Fatal(err)
	}
	if got := s.CachedInfo().Config.Duplicates; got != 3*time.Minute {
		t.Fatalf("duplicate window after a changed declaration: %v", got)
	}
	if writes.Load() == 0 {
		t.Fatal("the changed declaration was applied without an update")
	}
}

func TestDeclared(t *testing.T) {
	type cfg struct {
		Name  string   `json:"name"`
		Max   int      `json:"max"`
		Flag  bool     `json:"flag,omitempty"`
		Subjs []string `json:"subjects,omitempty"`
	}
	for _, tc := range []struct {
		want, cur cfg
		same      bool
	}{
		{cfg{Name: "a"}, cfg{Name: "a", Max: -1}, true},
		{cfg{Name: "a"}, cfg{Name: "a", Max: 0}, true},
		{cfg{Name: "a"}, cfg{Name: "a", Max: 5}, false},
		{cfg{Name: "a", Max: 5}, cfg{Name: "a", Max: 5}, true},
		{cfg{Name: "a", Max: 5}, cfg{Name: "a", Max: 6}, false},
		{cfg{Name: "a", Flag: true}, cfg{Name: "a"}, false},
		{cfg{Name: "a"}, cfg{Name: "a", Flag: true}, false},
		{cfg{Name: "a", Subjs: []string{"x"}}, cfg{Name: "a", Subjs: []string{"x"}}, true},
		{cfg{Name: "a", Subjs: []string{"x"}}, cfg{Name: "a", Subjs: []string{"x", "y"}}, false},
		{cfg{Name: "a"}, cfg{Name: "a", Subjs: []string{"x"}}, false},
	} {
		if got, err := declared(tc.want, tc.cur); err != nil || got != tc.same {
			t.Errorf("declared(%+v, %+v) = %v, %v; want %v", tc.want, tc.cur, got, err, tc.same)
		}
	}
}

// A deployment whose streams were created with a longer duplicate window
// (20 minutes, as earlier versions declared) gets today's window from
// Ensure, on the event stream and the transaction stream alike, without
// losing what they hold.
func TestEnsureShortensAnExistingDuplicateWindow(t *testing.T) {
	srv := embednats.StartTest(t)
	_, js := connect(t, srv)
	ctx := testCtx(t)
	if err := (Topology{Replicas: 1, Duplicates: 20 * time.Minute}).Ensure(ctx, js); err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(ctx, EventSubject(ClassOther, "!r:x"), []byte("{}")); err != nil {
		t.Fatal(err)
	}
	if err := (Topology{Replicas: 1}).Ensure(ctx, js); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{StreamEvents, StreamTxns} {
		s, err := js.Stream(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		if got := s.CachedInfo().Config.Duplicates; got != DuplicateWindow {
			t.Errorf("%s: duplicate window %v after Ensure, want %v", name, got, DuplicateWindow)
		}
	}
	s, err := js.Stream(ctx, StreamEvents)
	if err != nil {
		t.Fatal(err)
	}
	if n := s.CachedInfo().State.Msgs; n != 1 {
		t.Errorf("event stream holds %d messages after the update, want 1", n)
	}
}
