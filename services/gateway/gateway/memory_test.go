package gateway

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	runtimemetrics "runtime/metrics"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cactus-comments/appservice/pkg/config"
)

// trickle opens a raw connection to the gateway, sends a request whose
// body never arrives at a decent rate, and reports when the gateway closes
// the connection. auth says whether the request carries the token.
func trickle(t *testing.T, addr string, auth bool) <-chan string {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	head := "PUT /_matrix/app/v1/transactions/slow HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n"
	if auth {
		head += "Authorization: Bearer " + testHSToken + "\r\n"
	}
	if _, err := io.WriteString(conn, head+"\r\n{"); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	t.Cleanup(func() { close(stop) })
	go func() {
		// One byte every 100 ms: 10 bytes/s, far below the minimum rate.
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				if _, err := conn.Write([]byte(" ")); err != nil {
					return
				}
			}
		}
	}()
	closed := make(chan string, 1)
	go func() {
		// What the gateway answers before closing, if anything.
		b, _ := io.ReadAll(bufio.NewReader(conn))
		first, _, _ := strings.Cut(string(b), "\r\n")
		closed <- first
	}()
	return closed
}

// TestSlowBodyClosed: a client that sends its body byte by byte is cut
// off once it falls below the minimum rate, whether or not it carries the
// homeserver's token, instead of holding a connection and a buffer for
// ever.
func TestSlowBodyClosed(t *testing.T) {
	e := newEnv(t, withConfig(func(c *config.Config) { c.BodyReadTimeout = 20 * time.Second; c.MinBodyRate = 1024 }))
	addr := strings.TrimPrefix(e.srv.URL, "http://")
	for _, auth := range []bool{true, false} {
		t.Run(fmt.Sprintf("authenticated=%v", auth), func(t *testing.T) {
			closed := trickle(t, addr, auth)
			select {
			case status := <-closed:
				t.Logf("closed after answering %q", status)
			case <-time.After(60 * time.Second):
				t.Fatal("the gateway kept a trickling connection open for a minute")
			}
		})
	}
}

// gatedBody is a valid transaction of about size bytes, generated as it
// is read (the test must not hold the burst itself), whose reader stops
// after half of it until gate is closed, and signals on reached when it
// gets there.
func gatedBody(i, size int, gate <-chan struct{}, reached chan<- struct{}) (io.Reader, int64) {
	prefix := fmt.Sprintf(`{"events":[{"event_id":"$burst%d","type":"m.room.message","room_id":"!r:example.org","sender":"@a:example.org","content":{"body":"`, i)
	const suffix = `"}}]}`
	half := int64(size / 2)
	var once sync.Once
	return io.MultiReader(strings.NewReader(prefix), io.LimitReader(xs{}, half), readerFunc(func(p []byte) (int, error) {
		once.Do(func() { reached <- struct{}{}; <-gate })
		return 0, io.EOF
	}), io.LimitReader(xs{}, int64(size)-half), strings.NewReader(suffix)), int64(len(prefix) + size + len(suffix))
}

// xs reads as endless 'x'.
type xs struct{}

func (xs) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = 'x'
	}
	return len(p), nil
}

type readerFunc func([]byte) (int, error)

func (f readerFunc) Read(p []byte) (int, error) { return f(p) }

// TestBurstMemoryBounded: concurrent large bodies never make the gateway
// hold more body bytes than CACTUS_BODY_BYTES_IN_FLIGHT; those beyond it
// get a quick 503, the others are stored, and the memory goes back.
func TestBurstMemoryBounded(t *testing.T) {
	const (
		maxBody  = 4 << 20
		inFlight = 8 << 20
		bodies   = 8
		size     = 3 << 20
	)
	e := newEnv(t, withConfig(func(c *config.Config) {
		c.MaxBodyBytes, c.BodyBytesInFlight, c.LogLevel = maxBody, inFlight, "info"
	}))
	// One transaction first: what the first request sets up once (router,
	// JSON type caches, NATS subscriptions) is not the burst's.
	if status, body := e.do(http.MethodPut, "/_matrix/app/v1/transactions/warm", txnBody(message("$warm", "!r:example.org"))); status != 200 {
		t.Fatalf("warm-up: %d %s", status, body)
	}
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	liveBefore := liveHeap()

	gate := make(chan struct{})
	reached := make(chan struct{}, bodies)
	statuses := make(chan int, bodies)
	var wg sync.WaitGroup
	for i := range bodies {
		wg.Add(1)
		go func() {
			defer wg.Done()
			body, n := gatedBody(i, size, gate, reached)
			req, err := http.NewRequest(http.MethodPut, fmt.Sprintf("%s/_matrix/app/v1/transactions/burst%d", e.srv.URL, i), body)
			if err != nil {
				t.Error(err)
				return
			}
			req.ContentLength = n
			req.Header.Set("Authorization", "Bearer "+testHSToken)
			resp, err := e.srv.Client().Do(req)
			if err != nil {
				// Refused before the whole body was sent: the connection
				// may close under the writer.
				statuses <- http.StatusServiceUnavailable
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			statuses <- resp.StatusCode
		}()
	}
	// Wait until every body is half sent or refused, then look at the heap
	// while the gateway holds what it accepted.
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var refused int
	for waiting := bodies; waiting > 0; waiting-- {
		select {
		case <-reached:
		case s := <-statuses:
			if s != http.StatusServiceUnavailable {
				t.Fatalf("a transaction answered %d before its body was sent", s)
			}
			refused++
		case <-ctx.Done():
			t.Fatal("the burst did not get going")
		}
	}
	runtime.GC()
	liveDuring := liveHeap()

	close(gate)
	wg.Wait()
	close(statuses)
	ok := 0
	for s := range statuses {
		switch s {
		case http.StatusOK:
			ok++
		case http.StatusServiceUnavailable:
			refused++
		default:
			t.Errorf("status %d", s)
		}
	}
	if ok == 0 || refused == 0 {
		t.Errorf("%d stored, %d refused: want both", ok, refused)
	}
	if peak := e.gw.bodies.peak(); peak > inFlight || peak == 0 {
		t.Errorf("bodies held at once peaked at %d bytes, cap %d", peak, inFlight)
	}
	// The test's own requests are streamed; what the live heap holds
	// beyond where it started is the gateway's buffers, plus what the
	// test's HTTP clients, the in-process NATS server and the goroutines
	// of earlier tests hold meanwhile: a margin of the cap again. (Buffers
	// sized by the declared lengths, without the budget, made it 48 MiB.)
	if grew := liveDuring - liveBefore; grew > 2*inFlight {
		t.Errorf("live heap grew by %d MiB during the burst, cap %d MiB", grew>>20, inFlight>>20)
	}
	// Once the burst is over the memory goes back to the system.
	deadline := time.Now().Add(30 * time.Second)
	for {
		var after runtime.MemStats
		runtime.ReadMemStats(&after)
		held := int64(after.HeapSys - after.HeapReleased)
		if held < int64(before.HeapSys-before.HeapReleased)+maxBody {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("heap memory held from the system: %d MiB after the burst, %d MiB before", held>>20, (before.HeapSys-before.HeapReleased)>>20)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// liveHeap is the heap the last garbage collection found live.
func liveHeap() int64 {
	s := []runtimemetrics.Sample{{Name: "/gc/heap/live:bytes"}}
	runtimemetrics.Read(s)
	return int64(s[0].Value.Uint64())
}
