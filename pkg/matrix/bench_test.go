package matrix

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync/atomic"
	"testing"
)

// BenchmarkSendParallel measures the client's overhead and connection reuse
// against a local server that answers at once.
func BenchmarkSendParallel(b *testing.B) {
	var conns atomic.Int32
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"event_id":"$e"}`))
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	b.Cleanup(srv.Close)
	c, err := NewClient(Config{HomeserverURL: srv.URL, Token: testToken})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	var worker atomic.Int64
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		prefix := "w" + strconv.FormatInt(worker.Add(1), 10) + "-"
		i := 0
		for pb.Next() {
			i++
			if _, err := c.SendText(ctx, testRoom, prefix+strconv.Itoa(i), "hello"); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(conns.Load()), "conns")
}
