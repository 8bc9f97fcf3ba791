package gateway

import (
	"bytes"
	"reflect"
	"strconv"
	"testing"

	"github.com/nats-io/nats.go"

	"github.com/cactus-comments/appservice/pkg/bus"
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

// A recycled message keeps nothing of the event it carried before: the
// Nats-Msg-Id of a moderation event would make JetStream drop a later
// event as its duplicate.
func TestEventMsgRecycled(t *testing.T) {
	var m nats.Msg
	eventMsg(&m, "ban.subject", &route{raw: []byte("ban"), class: bus.ClassModeration, eventID: "$ban", typ: "m.room.member"}, "t1")
	if m.Header.Get(bus.HeaderMsgID) != "$ban" {
		t.Fatalf("moderation event without its Nats-Msg-Id: %v", m.Header)
	}
	m.Reply = "_INBOX.x.1.0"
	eventMsg(&m, "msg.subject", &route{raw: []byte("msg"), class: bus.ClassOther, eventID: "$msg", typ: "m.room.message"}, "t2")
	want := nats.Header{bus.HeaderEventID: {"$msg"}, bus.HeaderTxnID: {"t2"}, bus.HeaderEventType: {"m.room.message"}}
	if !reflect.DeepEqual(m.Header, want) || m.Subject != "msg.subject" || string(m.Data) != "msg" || m.Reply != "" {
		t.Fatalf("recycled message %+v, want headers %v", m, want)
	}
}
