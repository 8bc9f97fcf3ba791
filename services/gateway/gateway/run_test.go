package gateway

import (
	"context"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/cactus-comments/appservice/pkg/bus"
	"github.com/cactus-comments/appservice/pkg/embednats"
)

// TestRunGracefulShutdown runs the whole service and stops it while a
// transaction is half received: readiness goes false, the transaction
// still completes with 200 and its events are stored, then Run returns;
// what the stopped gateway did not split, the next one does.
func TestRunGracefulShutdown(t *testing.T) {
	ns := embednats.StartTest(t)
	cfg := testConfig(t)
	cfg.NATSURL = ns.ClientURL()
	logs := &syncBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	type addrs struct{ api, admin net.Addr }
	listening := make(chan addrs, 1)
	done := make(chan error, 1)
	go func() {
		done <- RunWith(ctx, cfg, RunOptions{
			Logger:   testLogger(cfg, logs),
			OnListen: func(api, admin net.Addr) { listening <- addrs{api, admin} },
		})
	}()
	var a addrs
	select {
	case a = <-listening:
	case err := <-done:
		t.Fatalf("Run returned early: %v", err)
	}
	api, admin := "http://"+a.api.String(), "http://"+a.admin.String()
	get := func(url string) (int, string) {
		resp, err := http.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get(admin + "/readyz"); code != 200 {
		t.Fatalf("readyz %d %s", code, body)
	}

	// A transaction whose body arrives in two parts.
	body := txnBody(message("$inflight1", "!r:example.org"), message("$inflight2", "!r:example.org"))
	pr, pw := io.Pipe()
	req, err := http.NewRequest(http.MethodPut, api+"/_matrix/app/v1/transactions/1", pr)
	if err != nil {
		t.Fatal(err)
	}
	req.ContentLength = int64(len(body))
	req.Header.Set("Authorization", "Bearer "+testHSToken)
	type result struct {
		status int
		err    error
	}
	res := make(chan result, 1)
	go func() {
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			res <- result{err: err}
			return
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		res <- result{status: resp.StatusCode}
	}()
	if _, err := pw.Write(body[:len(body)/2]); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the transaction to be in flight", func() bool {
		_, m := get(admin + "/metrics")
		return metricValue(m, "cactus_gateway_transactions_in_flight") == 1
	})

	cancel()
	waitFor(t, "readiness to go false", func() bool {
		code, _ := get(admin + "/readyz")
		return code == http.StatusServiceUnavailable
	})
	if _, err := pw.Write(body[len(body)/2:]); err != nil {
		t.Fatal(err)
	}
	_ = pw.Close()
	if r := <-res; r.err != nil || r.status != 200 {
		t.Fatalf("in-flight transaction: status %d, err %v", r.status, r.err)
	}
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	if !strings.Contains(logs.String(), "nats drained") {
		t.Error("no log line says NATS was drained")
	}
	if _, err := net.Dial("tcp", a.api.String()); err == nil {
		t.Error("the API still listens after Run returned")
	}

	// The transaction is stored: split already, or waiting in the
	// transaction stream for the next gateway, which splits it.
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	bg := context.Background()
	count := func(stream string) uint64 {
		s, err := js.Stream(bg, stream)
		if err != nil {
			t.Fatal(err)
		}
		info, err := s.Info(bg)
		if err != nil {
			t.Fatal(err)
		}
		return info.State.Msgs
	}
	if events, txns := count(bus.StreamEvents), count(bus.StreamTxns); events != 2 && txns != 1 {
		t.Fatalf("after the shutdown: %d events and %d transactions stored", events, txns)
	}
	ctx2, cancel2 := context.WithCancel(context.Background())
	defer cancel2()
	done2 := make(chan error, 1)
	listening2 := make(chan struct{})
	go func() {
		done2 <- RunWith(ctx2, cfg, RunOptions{Logger: testLogger(cfg, logs), OnListen: func(net.Addr, net.Addr) { close(listening2) }})
	}()
	select {
	case <-listening2:
	case err := <-done2:
		t.Fatalf("second Run returned early: %v", err)
	}
	waitFor(t, "the next gateway to split what is left", func() bool { return count(bus.StreamTxns) == 0 })
	cancel2()
	if err := <-done2; err != nil {
		t.Fatalf("second Run: %v", err)
	}
	s, err := js.Stream(bg, bus.StreamEvents)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for seq := uint64(1); seq <= 2; seq++ {
		m, err := s.GetMsg(bg, seq)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, m.Header.Get(bus.HeaderEventID))
	}
	if !slices.Equal(ids, []string{"$inflight1", "$inflight2"}) {
		t.Fatalf("stored %v", ids)
	}
}

// metricValue reads an unlabelled sample from the Prometheus text format;
// -1 if absent.
func metricValue(text, name string) float64 {
	for line := range strings.Lines(text) {
		if rest, ok := strings.CutPrefix(line, name+" "); ok {
			v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
			if err == nil {
				return v
			}
		}
	}
	return -1
}
