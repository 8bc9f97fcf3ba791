package gateway

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"testing"

	"github.com/cactus-comments/appservice/pkg/config"
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
