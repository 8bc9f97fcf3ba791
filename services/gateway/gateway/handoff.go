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
type handoff struct {
	mu      sync.Mutex
	byID    map[string][]byte
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
	return &handoff{byID: map[string][]byte{}, maxMsgs: handoffMaxMsgs, maxSize: handoffMaxBytes}
}

// offer keeps a copy of data under id.
func (h *handoff) offer(id string, data []byte) {
	if len(data) > h.maxSize {
		return
	}
	c := append([]byte(nil), data...)
	h.mu.Lock()
	defer h.mu.Unlock()
	if old, ok := h.byID[id]; ok {
		h.bytes -= len(old)
	} else {
		h.order = append(h.order, id)
	}
	h.byID[id] = c
	h.bytes += len(c)
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
}

func (h *handoff) evictOldest() {
	for len(h.order) > 0 {
		k := h.order[0]
		h.order[0] = ""
		h.order = h.order[1:]
		if d, ok := h.byID[k]; ok {
			delete(h.byID, k)
			h.bytes -= len(d)
			return
		}
	}
}

// take removes and returns the bytes offered under id.
func (h *handoff) take(id string) ([]byte, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	d, ok := h.byID[id]
	if ok {
		delete(h.byID, id)
		h.bytes -= len(d)
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
