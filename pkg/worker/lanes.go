package worker

import (
	"context"
	"sync"
)

// Lanes is a replica's limit on handlers running at once. Runs that share
// one share the limit: a replica that consumes several consumers (the
// partitions it owns) runs at most n handlers over all of them, and each
// Run pulls only for lanes free over all of them. Two Runs that find the
// same lanes free at the same moment may both pull for them; what does
// not get a lane at once waits here, held and kept alive, until one is
// free.
type Lanes struct {
	n   int
	run chan struct{} // one token per running handler

	mu   sync.Mutex
	cond *sync.Cond
	// ready counts messages that need a lane now (running, or about to
	// run), over every Run sharing the lanes.
	ready int
}

// NewLanes returns n lanes (at least 1).
func NewLanes(n int) *Lanes {
	n = max(n, 1)
	l := &Lanes{n: n, run: make(chan struct{}, n)}
	l.cond = sync.NewCond(&l.mu)
	return l
}

// add changes the count of messages that need a lane.
func (l *Lanes) add(d int) {
	l.mu.Lock()
	l.ready += d
	if d < 0 {
		l.cond.Broadcast()
	}
	l.mu.Unlock()
}

// free waits until a lane is free for a new message and returns how many
// are, or 0 once ctx ends.
func (l *Lanes) free(ctx context.Context) int {
	stop := context.AfterFunc(ctx, func() {
		l.mu.Lock()
		l.cond.Broadcast()
		l.mu.Unlock()
	})
	defer stop()
	l.mu.Lock()
	defer l.mu.Unlock()
	for l.ready >= l.n && ctx.Err() == nil {
		l.cond.Wait()
	}
	if ctx.Err() != nil {
		return 0
	}
	return l.n - l.ready
}
