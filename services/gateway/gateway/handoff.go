package gateway

import (
	"sync"
)

// handoff carries the transaction messages this replica's handler stores
// to this replica's splitter, so that JetStream need not send their bytes
// back: the splitter's consumer delivers headers only (bus
// SplitterConsumer), and the splitter takes a message's bytes from here by
// its Nats-Msg-Id (a hash of the bytes, so whatever is found under it is
// the message), or, when another replica stored it or it was evicted,
// reads it from the stream. The handler offers only while this replica
// splits; entries leave when taken or, oldest first, beyond the bounds.
//
// With the bytes the handler hands over the routes of their events
// (route), which it works out while JetStream stores the message: the
// splitter then neither decodes nor judges them again. The routes are
// exactly what the splitter would work out from the bytes
// (FuzzHandlerAndSplitter).
type handoff struct {
	mu      sync.Mutex
	byID    map[string]*handed
	order   []string // insertion order, for eviction
	bytes   int
	maxMsgs int
	maxSize int
}

// Bounds of the handoff: what the splitter's pipeline holds and a little
// more; beyond them the oldest entries go (and are read from the stream).
const (
	handoffMaxMsgs  = 4 * splitWindow
	handoffMaxBytes = 64 << 20
)

func newHandoff() *handoff {
	return &handoff{byID: map[string]*handed{}, maxMsgs: handoffMaxMsgs, maxSize: handoffMaxBytes}
}

// handed is one transaction message handed over: its bytes and, once
// ready is closed, the routes of its events (nil: the splitter works them
// out).
type handed struct {
	data   []byte
	routes []route
	ready  chan struct{}
}

// setRoutes hands over the routes of h's events; nil on a nil h.
func (h *handed) setRoutes(routes []route) {
	if h != nil {
		h.routes = routes
		close(h.ready)
	}
}

// offer keeps a copy of data under id, and returns it; the caller must
// then call its setRoutes. Nil if data is larger than the handoff holds.
func (h *handoff) offer(id string, data []byte) *handed {
	if len(data) > h.maxSize {
		return nil
	}
	c := &handed{data: append([]byte(nil), data...), ready: make(chan struct{})}
	h.mu.Lock()
	defer h.mu.Unlock()
	if old, ok := h.byID[id]; ok {
		h.bytes -= len(old.data)
	} else {
		h.order = append(h.order, id)
	}
	h.byID[id] = c
	h.bytes += len(c.data)
	for len(h.byID) > h.maxMsgs || h.bytes > h.maxSize {
		h.evictOldest()
	}
	// Taken entries leave order lazily; keep it from growing.
	if len(h.order) > 4*h.maxMsgs {
		live := h.order[:0]
		for _, k := range h.order {
			if _, ok := h.byID[k]; ok {
				live = append(live, k)
			}
		}
		clear(h.order[len(live):])
		h.order = live
	}
	return c
}

func (h *handoff) evictOldest() {
	for len(h.order) > 0 {
		k := h.order[0]
		h.order[0] = ""
		h.order = h.order[1:]
		if d, ok := h.byID[k]; ok {
			delete(h.byID, k)
			h.bytes -= len(d.data)
			return
		}
	}
}

// take removes and returns what was offered under id.
func (h *handoff) take(id string) (*handed, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	d, ok := h.byID[id]
	if ok {
		delete(h.byID, id)
		h.bytes -= len(d.data)
	}
	return d, ok
}

// drop forgets everything (the replica stopped splitting).
func (h *handoff) drop() {
	h.mu.Lock()
	defer h.mu.Unlock()
	clear(h.byID)
	clear(h.order)
	h.order = h.order[:0]
	h.bytes = 0
}
