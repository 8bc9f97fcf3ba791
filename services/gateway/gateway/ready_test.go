package gateway

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/cactus-comments/appservice/pkg/config"
)

// hangProxy forwards TCP connections to a server until it is paused: then
// it keeps every connection open and forwards nothing, as a NATS server
// that is stopped (SIGSTOP) or a network that drops packets does.
type hangProxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	paused bool
	resume chan struct{}
}

func startHangProxy(t *testing.T, target string) *hangProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &hangProxy{ln: ln, target: target, resume: make(chan struct{})}
	close(p.resume)
	var conns sync.WaitGroup
	t.Cleanup(func() {
		ln.Close()
		p.Resume()
		conns.Wait()
	})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			conns.Add(2)
			go func() { defer conns.Done(); p.pipe(up, c) }()
			go func() { defer conns.Done(); p.pipe(c, up) }()
		}
	}()
	return p
}

func (p *hangProxy) Addr() string { return p.ln.Addr().String() }

// gate returns a channel that is closed while the proxy forwards.
func (p *hangProxy) gate() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.resume
}

func (p *hangProxy) Pause() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.paused {
		p.paused, p.resume = true, make(chan struct{})
	}
}

func (p *hangProxy) Resume() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.paused {
		p.paused = false
		close(p.resume)
	}
}

func (p *hangProxy) pipe(dst, src net.Conn) {
	defer dst.Close()
	defer src.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			<-p.gate() // held, not dropped, while paused
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			if !errors.Is(err, io.EOF) {
				return
			}
			return
		}
	}
}

// TestReadyzFollowsJetStream: readiness means "can store now". While
// JetStream does not answer (the connection hangs, the client still thinks
// it is connected), /readyz fails; once it answers again, readiness comes
// back by itself.
func TestReadyzFollowsJetStream(t *testing.T) {
	var proxy *hangProxy
	e := newEnv(t, func(e *env, _ *[]Option) {
		proxy = startHangProxy(t, e.ns.Addr().String())
		e.cfg.NATSURL = "nats://" + proxy.Addr()
	}, withConfig(func(c *config.Config) { c.PublishTimeout = 2 * time.Second }))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go e.gw.WatchStore(ctx)
	e.rt.SetReady(true)
	admin := e.rt.AdminHandler()
	readyz := func() int {
		rec := &statusRecorder{header: http.Header{}}
		req, _ := http.NewRequest(http.MethodGet, "/readyz", nil)
		admin.ServeHTTP(rec, req)
		return rec.status
	}
	if status, body := e.do(http.MethodPut, "/_matrix/app/v1/transactions/1", txnBody(message("$before", "!r:example.org"))); status != 200 {
		t.Fatalf("before the hang: %d %s", status, body)
	}
	waitFor(t, "readiness", func() bool { return readyz() == 200 })

	proxy.Pause()
	waitFor(t, "readiness to fail while JetStream hangs", func() bool { return readyz() == http.StatusServiceUnavailable })
	if !e.rt.NC.IsConnected() {
		t.Log("the client noticed the hang too")
	}
	if status, _ := e.do(http.MethodPut, "/_matrix/app/v1/transactions/2", txnBody(message("$during", "!r:example.org"))); status != http.StatusServiceUnavailable {
		t.Errorf("during the hang: %d", status)
	}

	proxy.Resume()
	var lastErr error
	defer func() {
		if t.Failed() {
			t.Logf("last readiness error: %v", lastErr)
		}
	}()
	waitFor(t, "readiness to come back", func() bool {
		if readyz() == 200 {
			return true
		}
		lastErr = e.rt.Ready()
		return false
	})
	if status, body := e.do(http.MethodPut, "/_matrix/app/v1/transactions/2", txnBody(message("$during", "!r:example.org"))); status != 200 {
		t.Fatalf("after the hang: %d %s", status, body)
	}
}

// statusRecorder is the least of an http.ResponseWriter.
type statusRecorder struct {
	header http.Header
	status int
}

func (r *statusRecorder) Header() http.Header { return r.header }
func (r *statusRecorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = 200
	}
	return len(b), nil
}
func (r *statusRecorder) WriteHeader(s int) { r.status = s }
