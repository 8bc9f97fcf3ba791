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
		var finish func()
		results[0], finish = g.do("k", func() flightResult {
			calls.Add(1)
			close(entered)
			<-release
			return flightResult{outcome: "created"}
		})
		finish()
	})
	<-entered
	for i := 1; i < len(results); i++ {
		wg.Go(func() {
			var finish func()
			results[i], finish = g.do("k", func() flightResult {
				calls.Add(1)
				return flightResult{outcome: "second call"}
			})
			finish()
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
	r, finish := g.do("k", func() flightResult { return flightResult{outcome: "fresh"} })
	finish()
	if r.outcome != "fresh" {
		t.Errorf("after the flight: %q", r.outcome)
	}
	if g.m["k"] != nil {
		t.Error("finished flight still registered")
	}
}

// The leader answers before its follow-up work (then) runs; a query for
// the same key meanwhile gets the answer without a second call, and the
// key is free once the leader's finish returns.
func TestFlightGroupAnswersBeforeFollowUp(t *testing.T) {
	var g flightGroup
	inThen, endThen := make(chan struct{}), make(chan struct{})
	thenRan := false
	res, finish := g.do("k", func() flightResult {
		return flightResult{outcome: "created", then: func() {
			close(inThen)
			<-endThen
			thenRan = true
		}}
	})
	if res.outcome != "created" {
		t.Fatalf("leader got %q", res.outcome)
	}
	done := make(chan struct{})
	go func() { finish(); close(done) }()
	<-inThen
	second, secondFinish := g.do("k", func() flightResult {
		t.Error("a second call ran while the first one's follow-up was running")
		return flightResult{}
	})
	secondFinish()
	if second.outcome != "created" || second.then == nil {
		t.Errorf("query during the follow-up got %+v, want the leader's answer", second)
	}
	close(endThen)
	<-done
	if !thenRan {
		t.Error("finish returned before the follow-up ran")
	}
	finish() // a second call does nothing
	if g.m["k"] != nil {
		t.Error("finished flight still registered")
	}
	third, thirdFinish := g.do("k", func() flightResult { return flightResult{outcome: "fresh"} })
	thirdFinish()
	if third.outcome != "fresh" {
		t.Errorf("after the follow-up: %q", third.outcome)
	}
}
