package main

import (
	"encoding/json"
	"fmt"
	"strconv"

	"github.com/nats-io/nats.go"

	"github.com/cactus-comments/appservice/pkg/bus"
	"github.com/cactus-comments/appservice/pkg/event"
	"github.com/cactus-comments/appservice/pkg/registry"
	"github.com/cactus-comments/appservice/services/gateway/loadgen"
	"github.com/cactus-comments/appservice/tools/gatewaybench/publish"
)

// spec is what one client process sends: the same for the gateway's load
// generator and for a publisher measured against it.
type spec struct {
	Run     string // event id prefix, unique per measurement
	Senders int
	Txns    int // measured transactions per sender
	Warmup  int // unmeasured transactions per sender before them
	Events  int // events per transaction
	Size    int // approximate bytes per event
	// Ban: sender 0 sends one-event transactions holding a ban while the
	// other senders send Events-event transactions; only sender 0's
	// latencies are reported.
	Ban bool
}

// bodies returns every sender's transaction bodies, warmup first.
func (s spec) bodies() [][][]byte {
	out := make([][][]byte, s.Senders)
	for snd := range s.Senders {
		n := s.Warmup + s.Txns
		if s.Ban && snd == 0 {
			// Enough to keep sending bans for as long as the bulk runs.
			n = s.Warmup + 20*s.Txns
		}
		for t := range n {
			seq := snd*1_000_000 + t
			if s.Ban && snd == 0 {
				out[snd] = append(out[snd], banTransaction(s.Run, seq))
			} else {
				out[snd] = append(out[snd], loadgen.Transaction(s.Run, seq, s.Events, s.Size))
			}
		}
	}
	return out
}

// moderationRoom is the site's moderation room, where its bans are sent.
const moderationRoom = "!moderationAbCdEfGhIjKl:example.org"

// siteRooms are the rooms the benchmark registers as one site's: its
// moderation room and the comment rooms the events are posted in.
func siteRooms() []registry.Room {
	rooms := []registry.Room{{Site: benchSite, RoomID: moderationRoom}}
	for i := range loadgen.Rooms {
		rooms = append(rooms, registry.Room{Site: benchSite, Section: "post" + strconv.Itoa(i), RoomID: loadgen.RoomID(i)})
	}
	return rooms
}

// read reports, for every transaction sender snd sends (by its number,
// sender*1e6 + seq), whether it holds an event a worker reads: what the
// gateway stores in the event stream once split, the site's rooms being
// registered (comments and joins there are read by no worker).
func (s spec) read(bot string) (map[int]bool, error) {
	ours := map[string]bool{}
	for _, r := range siteRooms() {
		ours[r.RoomID] = true
	}
	out := map[int]bool{}
	for snd, bodies := range s.bodies() {
		for t, body := range bodies {
			evs, err := decode(body, "", bot)
			if err != nil {
				return nil, err
			}
			key := snd*1_000_000 + t
			for _, e := range evs {
				c := e.class
				if ours[e.room] {
					c = bus.InOurRoom(c, e.typ)
				}
				out[key] = out[key] || c.Stored()
			}
		}
	}
	return out, nil
}

// banTransaction is a transaction holding one ban in a site's moderation
// room, as the homeserver pushes it when the owner bans a visitor.
func banTransaction(run string, seq int) []byte {
	ev := map[string]any{
		"type":             "m.room.member",
		"event_id":         loadgen.EventID(run, seq, 0),
		"room_id":          moderationRoom,
		"sender":           "@owner:example.org",
		"user_id":          "@owner:example.org",
		"state_key":        fmt.Sprintf("@visitor%d:example.org", seq),
		"origin_server_ts": 1_700_000_000_000 + seq,
		"age":              42,
		"content":          map[string]any{"membership": "ban", "reason": "spam"},
		"unsigned":         map[string]any{"age": 42},
	}
	b, _ := json.Marshal(map[string]any{"events": []any{ev}, "ephemeral": []any{}})
	return b
}

// decoded is one event as the gateway's decoder leaves it: its bytes and
// the fields routing needs. The publisher clients decode before the clock
// starts; building the messages is inside it, as in the gateway.
type decoded struct {
	raw                []byte
	id, typ, room, txn string
	class              bus.Class
}

func decode(body []byte, txnID, bot string) ([]decoded, error) {
	var txn struct{ Events []json.RawMessage }
	if err := json.Unmarshal(body, &txn); err != nil {
		return nil, err
	}
	out := make([]decoded, 0, len(txn.Events))
	for _, raw := range txn.Events {
		var e event.Event
		if err := json.Unmarshal(raw, &e); err != nil {
			return nil, err
		}
		out = append(out, decoded{raw: raw, id: e.EventID, typ: e.Type, room: e.RoomID, txn: txnID, class: bus.Classify(&e, bot)})
	}
	return out, nil
}

// builder turns decoded events into messages the way the gateway does:
// messages and their header maps recycled from one transaction to the
// next, one subject string per room and class.
type builder struct {
	msgs     []nats.Msg
	ptrs     []*nats.Msg
	subjects map[string]string
}

func (b *builder) txn(evs []decoded, body []byte) *publish.Txn {
	if b.subjects == nil {
		b.subjects = map[string]string{}
	}
	for len(b.msgs) < len(evs) {
		b.msgs = append(b.msgs, nats.Msg{})
	}
	b.ptrs = b.ptrs[:0]
	for i := range evs {
		e, m := &evs[i], &b.msgs[i]
		key := string(e.class) + e.room
		subj, ok := b.subjects[key]
		if !ok {
			subj = bus.EventSubject(e.class, e.room)
			b.subjects[key] = subj
		}
		m.Subject, m.Data, m.Reply = subj, e.raw, ""
		if m.Header == nil {
			m.Header = nats.Header{bus.HeaderMsgID: {""}, bus.HeaderTxnID: {""}, bus.HeaderEventType: {""}}
		}
		m.Header[bus.HeaderMsgID][0] = e.id
		m.Header[bus.HeaderTxnID][0] = e.txn
		m.Header[bus.HeaderEventType][0] = e.typ
		b.ptrs = append(b.ptrs, m)
	}
	txnID := ""
	if len(evs) > 0 {
		txnID = evs[0].txn
	}
	return &publish.Txn{ID: txnID, Msgs: b.ptrs, Body: body}
}

func txnID(seq int) string { return strconv.Itoa(seq) }
