package e2e

import (
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// hsProxy stands between the workers and the simulator, so that a test can
// take the homeserver down as a restart or an upgrade does: connections
// refused (and open ones cut) until it is back on the same address. With a
// delay it stands for a network between the services and NATS instead.
type hsProxy struct {
	t      testing.TB
	target string
	addr   string
	// delay holds back every chunk of data in each direction, a crude
	// network latency (chunks coalesce behind it, so it costs latency,
	// not much throughput).
	delay time.Duration

	mu    sync.Mutex
	ln    net.Listener
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

func startHSProxy(t testing.TB, target string) *hsProxy {
	return startProxy(t, target, 0)
}

func startProxy(t testing.TB, target string, delay time.Duration) *hsProxy {
	t.Helper()
	p := &hsProxy{t: t, target: target, delay: delay, conns: map[net.Conn]struct{}{}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p.addr = ln.Addr().String()
	p.serve(ln)
	t.Cleanup(func() {
		p.Down()
		p.wg.Wait()
	})
	return p
}

// URL is the homeserver URL the workers use.
func (p *hsProxy) URL() string { return "http://" + p.addr }

func (p *hsProxy) serve(ln net.Listener) {
	p.mu.Lock()
	p.ln = ln
	p.mu.Unlock()
	p.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.wg.Go(func() { p.pipe(c) })
		}
	})
}

func (p *hsProxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ln == nil {
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *hsProxy) untrack(c net.Conn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
	_ = c.Close()
}

func (p *hsProxy) pipe(c net.Conn) {
	if !p.track(c) {
		_ = c.Close()
		return
	}
	defer p.untrack(c)
	up, err := net.Dial("tcp", p.target)
	if err != nil {
		return
	}
	if !p.track(up) {
		_ = up.Close()
		return
	}
	defer p.untrack(up)
	done := make(chan struct{}, 2)
	cp := func(dst, src net.Conn) {
		if p.delay > 0 {
			_, _ = io.Copy(dst, &slowReader{src, p.delay})
		} else {
			_, _ = io.Copy(dst, src)
		}
		// Half-close so an HTTP response still gets through after the
		// request body ended.
		if tc, ok := dst.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		}
		done <- struct{}{}
	}
	go cp(up, c)
	go cp(c, up)
	<-done
	<-done
}

// Down refuses new connections and cuts the open ones.
func (p *hsProxy) Down() {
	p.mu.Lock()
	ln := p.ln
	p.ln = nil
	conns := p.conns
	p.conns = map[net.Conn]struct{}{}
	p.mu.Unlock()
	if ln != nil {
		_ = ln.Close()
	}
	for c := range conns {
		_ = c.Close()
	}
}

// Up accepts connections again on the same address.
func (p *hsProxy) Up() {
	p.t.Helper()
	var ln net.Listener
	var err error
	// The port was just released; nothing else should take it, but the
	// kernel may need a moment.
	for deadline := time.Now().Add(5 * time.Second); ; {
		if ln, err = net.Listen("tcp", p.addr); err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		p.t.Fatalf("homeserver proxy back up on %s: %v", p.addr, errors.Unwrap(err))
	}
	p.serve(ln)
}

// slowReader delays every read.
type slowReader struct {
	r     io.Reader
	delay time.Duration
}

func (s *slowReader) Read(b []byte) (int, error) {
	n, err := s.r.Read(b)
	if n > 0 {
		time.Sleep(s.delay)
	}
	return n, err
}
