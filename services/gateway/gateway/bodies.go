package gateway

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"runtime/debug"
	"sync/atomic"
	"time"
)

// The gateway's memory is bounded by its configuration, not by its
// clients: a request body is read into a buffer grown with what actually
// arrives (a declared Content-Length only caps the growth), every buffer
// is reserved from one budget of CACTUS_BODY_BYTES_IN_FLIGHT bytes shared
// by all requests, and a body that arrives slower than CACTUS_MIN_BODY_RATE
// or takes longer than CACTUS_BODY_READ_TIMEOUT is cut off.

// errBusy: the body budget is spent; the homeserver should retry.
var errBusy = errors.New("too many request bodies in flight")

// errSlowBody: the client sent its body too slowly.
var errSlowBody = errors.New("request body not received in time")

// bodyBudget counts the body buffer bytes the gateway holds. It never
// waits: a request that does not fit is refused at once, so a burst costs
// the homeserver a quick retry rather than the gateway its memory.
type bodyBudget struct {
	limit int64
	held  atomic.Int64
	// high is the most held at once (tests and the release below).
	high atomic.Int64
	// burst is the most held since memory was last given back.
	burst     atomic.Int64
	releasing atomic.Bool
}

// releaseAfter is the part of the budget a burst must have held for the
// heap's free memory to be returned to the system once no body is held any
// more, at once rather than by the runtime's slow background scavenger:
// the pod's resident memory goes back near idle instead of staying at its
// peak.
const releaseAfter = 4 // a quarter of the budget

// acquire reserves n bytes, or reports that they do not fit.
func (b *bodyBudget) acquire(n int64) bool {
	for {
		cur := b.held.Load()
		if cur+n > b.limit {
			return false
		}
		if b.held.CompareAndSwap(cur, cur+n) {
			maxInto(&b.high, cur+n)
			maxInto(&b.burst, cur+n)
			return true
		}
	}
}

// release gives n bytes back.
func (b *bodyBudget) release(n int64) {
	if n == 0 {
		return
	}
	if b.held.Add(-n) == 0 && b.burst.Load() >= b.limit/releaseAfter && b.releasing.CompareAndSwap(false, true) {
		b.burst.Store(0)
		go func() {
			defer b.releasing.Store(false)
			debug.FreeOSMemory()
		}()
	}
}

func (b *bodyBudget) peak() int64 { return b.high.Load() }

func maxInto(v *atomic.Int64, n int64) {
	for {
		cur := v.Load()
		if n <= cur || v.CompareAndSwap(cur, n) {
			return
		}
	}
}

// minBodyBuffer is the first allocation for a body.
const minBodyBuffer = 16 << 10

// readBody reads the whole body into buf (whose capacity it reserves
// first) and returns it with the bytes it holds reserved in the budget,
// which the caller releases once done with the body. It refuses more than
// maxBody bytes (errTooLarge) and answers errBusy when the budget cannot
// hold the body as it grows.
func (g *Gateway) readBody(r *http.Request, buf []byte) (body []byte, held int64, err error) {
	if r.ContentLength > g.maxBody {
		return buf[:0], 0, errTooLarge
	}
	buf = buf[:0]
	if !g.bodies.acquire(int64(cap(buf))) {
		return buf, 0, errBusy
	}
	held = int64(cap(buf))
	limit := g.maxBody
	if r.ContentLength >= 0 {
		// The declared length caps the growth; it never sizes a buffer
		// before the bytes arrive.
		limit = min(limit, r.ContentLength)
	}
	for {
		if int64(len(buf)) == r.ContentLength {
			return buf, held, nil // the server's reader ends a body here
		}
		if len(buf) == cap(buf) && int64(len(buf)) >= limit {
			// A body without a length that fills the limit: whether it
			// is too large is one more byte, not a buffer grown for it
			// (which the budget may not hold: that would be "busy").
			if err := endOfBody(r.Body); err != nil {
				return buf[:0], held, err
			}
			return buf, held, nil
		}
		if len(buf) == cap(buf) {
			// The old buffer stays reserved until its bytes are copied:
			// the reservation covers every byte the body holds live.
			n := min(max(2*int64(cap(buf)), minBodyBuffer), limit)
			if !g.bodies.acquire(n) {
				return buf[:0], held, errBusy
			}
			old := int64(cap(buf))
			buf = grow(buf, n)
			g.bodies.release(old)
			held += n - old
		}
		m, err := r.Body.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+m]
		if int64(len(buf)) > g.maxBody {
			return buf[:0], held, errTooLarge
		}
		if err == io.EOF {
			return buf, held, nil
		}
		if err != nil {
			return buf[:0], held, fmt.Errorf("read body: %w", err)
		}
	}
}

// endOfBody reports whether body has ended: nil at its end, errTooLarge
// if a byte more arrives.
func endOfBody(body io.Reader) error {
	var one [1]byte
	for {
		n, err := body.Read(one[:])
		switch {
		case n > 0:
			return errTooLarge
		case err == io.EOF:
			return nil
		case err != nil:
			return fmt.Errorf("read body: %w", err)
		}
	}
}

// grow returns buf with capacity for n bytes, keeping its content.
func grow(buf []byte, n int64) []byte {
	if int(n) <= cap(buf) {
		return buf
	}
	nb := make([]byte, len(buf), int(n))
	copy(nb, buf)
	return nb
}

// bodyGrace is how long a body may take before the minimum rate applies:
// a connection's first round trips and a pause of the client's garbage
// collector are not a slow client.
const bodyGrace = 2 * time.Second

// bodyDeadline bounds the time every request's body may take, whoever
// sends it and whether or not a handler reads it (net/http reads what a
// handler left, to reuse the connection): by the time n bytes have
// arrived, at most bodyGrace + n/minRate may have passed, and never more
// than the body read timeout in all. A client that falls behind has its
// connection's reads fail, and the connection is closed.
func (g *Gateway) bodyDeadline(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Body != nil && r.Body != http.NoBody {
			b := &paced{ReadCloser: r.Body, rc: http.NewResponseController(w), start: time.Now(),
				timeout: g.cfg.BodyReadTimeout, minRate: g.cfg.MinBodyRate}
			b.extend()
			r.Body = b
		}
		next.ServeHTTP(w, r)
	})
}

// paced is a request body whose connection read deadline moves with the
// bytes received.
type paced struct {
	io.ReadCloser
	rc      *http.ResponseController
	start   time.Time
	read    int64
	timeout time.Duration
	minRate int64
}

func (b *paced) extend() {
	allowed := bodyGrace + time.Duration(float64(b.read)/float64(b.minRate)*float64(time.Second))
	// Without a deadline to set (a test recorder), nothing bounds the
	// body but the client.
	_ = b.rc.SetReadDeadline(b.start.Add(min(allowed, b.timeout)))
}

func (b *paced) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.read += int64(n)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return n, fmt.Errorf("%w: %d bytes in %v", errSlowBody, b.read, time.Since(b.start).Round(time.Millisecond))
	}
	if n > 0 {
		b.extend()
	}
	return n, err
}
