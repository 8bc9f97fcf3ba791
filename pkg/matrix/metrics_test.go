package matrix

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// The homeserver counts as unreachable from the first call it does not
// answer until the next one it does, whatever that answer says.
func TestMetricsFollowReachability(t *testing.T) {
	m := NewMetrics(prometheus.NewRegistry())
	if _, _, down := m.Unreachable(); down || testutil.ToFloat64(m.unreachable) != 0 {
		t.Fatal("unreachable before any call")
	}
	// Nothing listens here: connection refused.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	c, err := NewClient(Config{HomeserverURL: "http://" + addr, Token: "t", MaxAttempts: 1, Observe: m.Observe})
	if err != nil {
		t.Fatal(err)
	}
	before := time.Now()
	if _, err := c.Whoami(context.Background()); err == nil || !IsTransient(err) {
		t.Fatalf("whoami on a closed port: %v", err)
	}
	since, status, down := m.Unreachable()
	if !down || status != 0 || since.Before(before) || testutil.ToFloat64(m.unreachable) != 1 {
		t.Fatalf("after a refused connection: down %v since %v status %d", down, since, status)
	}
	// Still down: the start of the outage stays.
	m.Observe("send", http.StatusBadGateway, time.Millisecond)
	if s2, status, down := m.Unreachable(); !down || !s2.Equal(since) || status != http.StatusBadGateway {
		t.Fatalf("after a 502: down %v since %v (was %v) status %d", down, s2, since, status)
	}
	// An answer to a request sent before the outage began, arriving late,
	// does not mean it is back.
	m.Observe("ban", http.StatusOK, time.Hour)
	if _, _, down := m.Unreachable(); !down {
		t.Fatal("a late answer to an old request cleared the outage")
	}
	// Any answer to a later request, even a refusal, means it is back.
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusForbidden)
		_, _ = w.Write([]byte(`{"errcode":"M_FORBIDDEN","error":"no"}`))
	}))
	defer srv.Close()
	c, err = NewClient(Config{HomeserverURL: srv.URL, Token: "t", MaxAttempts: 1, Observe: m.Observe})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Whoami(context.Background()); !IsForbidden(err) {
		t.Fatalf("whoami: %v", err)
	}
	if _, _, down := m.Unreachable(); down || testutil.ToFloat64(m.unreachable) != 0 {
		t.Fatal("still unreachable after an answer")
	}
}
