package gateway

import (
	"bytes"
	"strconv"
	"testing"
)

func TestHandoffBounds(t *testing.T) {
	h := newHandoff()
	h.maxMsgs, h.maxSize = 3, 10
	h.offer("a", []byte("1234"))
	h.offer("b", []byte("1234"))
	if d, ok := h.take("a"); !ok || string(d.data) != "1234" {
		t.Fatalf("take a = %+v %v", d, ok)
	}
	if _, ok := h.take("a"); ok {
		t.Fatal("taken twice")
	}
	h.offer("c", []byte("1234"))
	h.offer("d", []byte("1234")) // 12 bytes with b and c: b goes
	if _, ok := h.take("b"); ok {
		t.Fatal("the oldest entry was not evicted past the byte bound")
	}
	if h.bytes != 8 || len(h.byID) != 2 {
		t.Fatalf("%d bytes in %d entries, want 8 in 2", h.bytes, len(h.byID))
	}
	h.offer("big", bytes.Repeat([]byte("x"), 11)) // larger than the bound: not kept
	if _, ok := h.take("big"); ok {
		t.Fatal("an entry larger than the bound was kept")
	}
	// The copy is the handoff's own.
	src := []byte("abcd")
	h.offer("e", src)
	src[0] = 'X'
	if d, _ := h.take("e"); string(d.data) != "abcd" {
		t.Fatalf("took %q: the handler's buffer was not copied", d.data)
	}
	for i := range 1000 {
		k := strconv.Itoa(i)
		h.offer(k, []byte("1"))
		h.take(k)
	}
	if len(h.order) > 4*h.maxMsgs+1 {
		t.Fatalf("order holds %d keys after entries were taken", len(h.order))
	}
	h.drop()
	if h.bytes != 0 || len(h.byID) != 0 {
		t.Fatal("drop kept entries")
	}
}
