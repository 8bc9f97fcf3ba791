package gateway

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/cactus-comments/appservice/pkg/bus"
)

// Readiness of the gateway means "can store now": JetStream acknowledges.
// A connection to NATS can look healthy while the server does not answer
// (stopped, overloaded, its stream without a leader): the client only
// notices after minutes of missed pings, and every transaction meanwhile
// waits CACTUS_PUBLISH_TIMEOUT for a 503. So the gateway watches JetStream
// itself: every probeEvery it asks for the event stream's state, with a
// bounded wait, and every transaction's publish outcome counts too. The
// latest observation decides; a hung JetStream makes the replica unready
// within seconds (the load balancer sends the homeserver elsewhere), and it
// becomes ready again by itself once JetStream answers.

const (
	probeEvery   = 2 * time.Second
	probeTimeout = 2 * time.Second
)

// storeHealth is whether JetStream answered the latest publish or probe.
type storeHealth struct {
	mu sync.Mutex
	// since is when the operation that last decided began: a slow probe
	// that ends after a newer publish does not override it.
	since time.Time
	err   error
}

func (h *storeHealth) observe(since time.Time, err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if since.Before(h.since) {
		return
	}
	h.since, h.err = since, err
}

// ready is the gateway's readiness check.
func (h *storeHealth) ready() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.err != nil {
		return fmt.Errorf("JetStream does not acknowledge: %w", h.err)
	}
	return nil
}

// WatchStore probes JetStream until ctx ends, keeping readiness current.
func (g *Gateway) WatchStore(ctx context.Context) {
	t := time.NewTicker(probeEvery)
	defer t.Stop()
	for {
		g.probeStore(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (g *Gateway) probeStore(ctx context.Context) {
	start := time.Now()
	pctx, cancel := context.WithTimeout(ctx, min(probeTimeout, g.publishTimeout))
	_, err := g.js.Stream(pctx, bus.StreamTxns)
	cancel()
	if ctx.Err() != nil {
		return
	}
	if err != nil {
		err = fmt.Errorf("probe of stream %s: %w", bus.StreamTxns, err)
		if g.health.ready() == nil {
			g.log.Warn("JetStream does not answer; readiness off until it does", "err", err)
		}
	} else if g.health.ready() != nil {
		g.log.Info("JetStream answers again; ready")
	}
	g.health.observe(start, err)
}
