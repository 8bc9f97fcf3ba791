package provisioner

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cactus-comments/appservice/pkg/bus"
	"github.com/cactus-comments/appservice/pkg/matrix"
	"github.com/cactus-comments/appservice/pkg/registry"
	"github.com/cactus-comments/appservice/pkg/worker"
)

func TestJobMessage(t *testing.T) {
	j := Job{Kind: KindMember, Site: "blog.example.org", Room: "!abc:example.org", User: "@u:example.org", Cause: "$ev"}
	m, err := j.Msg()
	if err != nil {
		t.Fatal(err)
	}
	if want := bus.JobSubject(KindMember, j.Site, j.Room); m.Subject != want {
		t.Errorf("subject = %q, want %q", m.Subject, want)
	}
	// The same cause and room give the same id (deduplicated); any other
	// field changes it.
	same, _ := j.Msg()
	if m.Header.Get(bus.HeaderMsgID) != same.Header.Get(bus.HeaderMsgID) {
		t.Error("the same job got two message ids")
	}
	for _, other := range []Job{
		{Kind: KindMember, Site: j.Site, Room: "!other:example.org", User: j.User, Cause: j.Cause},
		{Kind: KindMember, Site: j.Site, Room: j.Room, User: "@v:example.org", Cause: j.Cause},
		{Kind: KindMember, Site: j.Site, Room: j.Room, User: j.User, Cause: "$ev2"},
		{Kind: KindPower, Site: j.Site, Room: j.Room, Cause: j.Cause},
		{Kind: KindMember, Site: j.Site, Room: j.Room, User: j.User, Cause: j.Cause + "/replay/7"},
	} {
		if other.MsgID() == j.MsgID() {
			t.Errorf("%+v shares the message id of %+v", other, j)
		}
	}
	// A resolve job has no room id yet: its alias names it.
	r := Job{Kind: KindResolve, Site: j.Site, Alias: "#comments_blog.example.org_a:example.org", Section: "a", Cause: "create:x"}
	rm, err := r.Msg()
	if err != nil {
		t.Fatal(err)
	}
	if want := bus.JobSubject(KindResolve, r.Site, r.Alias); rm.Subject != want {
		t.Errorf("resolve subject = %q, want %q", rm.Subject, want)
	}
	r2 := r
	r2.Alias = "#comments_blog.example.org_b:example.org"
	if r.MsgID() == r2.MsgID() {
		t.Error("resolve jobs of two aliases share a message id")
	}
}

func TestClassify(t *testing.T) {
	tests := []struct {
		name      string
		err       error
		permanent bool
		delay     bool
	}{
		{"rate limited", &matrix.Error{Status: 429, ErrCode: matrix.CodeLimitExceeded, RetryAfter: 3 * time.Second}, false, true},
		{"server error", &matrix.Error{Status: 502}, false, false},
		{"forbidden", &matrix.Error{Status: 403, ErrCode: matrix.CodeForbidden}, true, false},
		{"bad request", &matrix.Error{Status: 400, ErrCode: "M_BAD_JSON"}, true, false},
		{"site gone", fmt.Errorf("x: %w", registry.ErrNotFound), true, false},
		{"network", errors.New("connection refused"), false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := classify(fmt.Errorf("job: %w", tt.err))
			if worker.IsPermanent(got) != tt.permanent {
				t.Errorf("permanent = %v, want %v", worker.IsPermanent(got), tt.permanent)
			}
			if !errors.Is(got, tt.err) {
				t.Error("classification lost the cause")
			}
			if tt.delay && got.Error() == "" {
				t.Error("empty message")
			}
		})
	}
}

func TestFlightGroupSharesOneCall(t *testing.T) {
	var g flightGroup
	var calls atomic.Int32
	release := make(chan struct{})
	entered := make(chan struct{})
	var wg sync.WaitGroup
	results := make([]flightResult, 20)
	wg.Go(func() {
		results[0] = g.do("k", func() flightResult {
			calls.Add(1)
			close(entered)
			<-release
			return flightResult{outcome: "created"}
		})
	})
	<-entered
	for i := 1; i < len(results); i++ {
		wg.Go(func() {
			results[i] = g.do("k", func() flightResult {
				calls.Add(1)
				return flightResult{outcome: "second call"}
			})
		})
	}
	waiting := func() int {
		g.mu.Lock()
		defer g.mu.Unlock()
		return g.m["k"].waiters
	}
	for waiting() < len(results)-1 {
		time.Sleep(time.Millisecond) // nothing signals a goroutine blocking on a channel
	}
	close(release)
	wg.Wait()
	if n := calls.Load(); n != 1 {
		t.Errorf("%d calls, want 1", n)
	}
	for i, r := range results {
		if r.outcome != "created" {
			t.Errorf("caller %d got %q, want the leader's answer", i, r.outcome)
		}
	}
	// After the flight, a new call runs again.
	if r := g.do("k", func() flightResult { return flightResult{outcome: "fresh"} }); r.outcome != "fresh" {
		t.Errorf("after the flight: %q", r.outcome)
	}
	if g.m["k"] != nil {
		t.Error("finished flight still registered")
	}
}
