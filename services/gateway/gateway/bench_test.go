package gateway

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/cactus-comments/appservice/pkg/config"
	"github.com/cactus-comments/appservice/pkg/logging"
	"github.com/cactus-comments/appservice/services/gateway/loadgen"
)

// BenchmarkTransaction pushes 100-event transactions of ~1 KiB events
// through the handler over HTTP into an embedded JetStream with file
// storage, one at a time, with the splitter moving them to the event
// stream meanwhile, and without (what the handler costs alone). The load
// tool in tools/gatewaybench measures the same against its floors; this
// is for profiles and allocation counts.
func BenchmarkTransaction(b *testing.B) {
	b.Run("split", func(b *testing.B) { benchmarkTransaction(b) })
	b.Run("store-only", func(b *testing.B) { benchmarkTransaction(b, withoutSplitter()) })
}

func benchmarkTransaction(b *testing.B, opts ...envOption) {
	e := newEnv(b, append(opts, withConfig(func(c *config.Config) { c.LogLevel = "info"; c.MaxBodyBytes = 32 << 20 }))...)
	const events = 100
	bodies := make([][]byte, 0, 256)
	b.ReportAllocs()
	b.SetBytes(int64(len(loadgen.Transaction("size", 0, events, 1024))))
	n := 0
	for b.Loop() {
		if len(bodies) == 0 {
			b.StopTimer()
			for i := range cap(bodies) {
				bodies = append(bodies, loadgen.Transaction(fmt.Sprintf("b%d", n), i, events, 1024))
			}
			n++
			b.StartTimer()
		}
		body := bodies[len(bodies)-1]
		bodies = bodies[:len(bodies)-1]
		req, _ := http.NewRequest(http.MethodPut, e.srv.URL+"/_matrix/app/v1/transactions/1", bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+testHSToken)
		resp, err := e.srv.Client().Do(req)
		if err != nil {
			b.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			b.Fatal(resp.Status)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*events)/1000, "µs/event")
}

// BenchmarkSplitterRoute is the gateway's CPU for a 100-event transaction
// between the handler's decoding and the splitter's publishing: the
// splitter decoding and judging a transaction message itself (one read
// from the stream), or taking the routes the handler handed over (one
// this replica stored), and the handler working those out.
func BenchmarkSplitterRoute(b *testing.B) {
	g, err := newGateway(testConfig(b), logging.Discard(), prometheus.NewRegistry(), nil, nil, options{})
	if err != nil {
		b.Fatal(err)
	}
	const events = 100
	st := &txnState{}
	st.events, err = decodeTransaction(loadgen.Transaction("bench", 0, events, 1024), nil)
	if err != nil {
		b.Fatal(err)
	}
	if n, _ := g.prepare("t1", st); n != 1 {
		b.Fatalf("%d transaction messages, want 1", n)
	}
	h := newHandoff().offer("id", st.msgs[0].Data)
	st.handed = append(st.handed[:0], h)
	g.handRoutes(st)
	s := &splitter{g: g}
	split := func(b *testing.B, routes []route) {
		b.ReportAllocs()
		for b.Loop() {
			it := &splitItem{}
			s.route(context.Background(), it, h.data, routes, "t1")
			if len(it.msgs) != events {
				b.Fatalf("%d messages", len(it.msgs))
			}
			s.blocks.put(it.block)
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*events), "ns/event")
	}
	b.Run("stream", func(b *testing.B) { split(b, nil) })
	b.Run("handoff", func(b *testing.B) { split(b, h.routes) })
	b.Run("handRoutes", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			h.ready = make(chan struct{})
			g.handRoutes(st)
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*events), "ns/event")
	})
}
