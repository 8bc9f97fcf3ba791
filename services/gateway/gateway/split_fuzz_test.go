package gateway

import (
	"bytes"
	"context"
	"reflect"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/cactus-comments/appservice/pkg/bus"
	"github.com/cactus-comments/appservice/pkg/logging"
)

// FuzzHandlerAndSplitter: on any body the handler acknowledges, every
// event reaches the splitter (in a transaction message, in order) or a
// dead letter, and the splitter routes each event of the transaction
// messages exactly as RouteEvent judges it alone: same subject, bytes, id,
// type and class, or a dead letter with RouteEvent's reason. The routes
// the handler hands over with a message are exactly those the splitter
// works out from its bytes. Transaction messages are kept small here, so
// that transactions are cut into many.
func FuzzHandlerAndSplitter(f *testing.F) {
	for i, s := range fuzzBodies {
		f.Add([]byte(s), uint16(i*97))
	}
	g, err := newGateway(testConfig(f), logging.Discard(), prometheus.NewRegistry(), nil, nil, options{})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, body []byte, size uint16) {
		g.maxChunk = 64 + int(size)%2048
		g.maxEvent = g.maxChunk - chunkFraming
		events, err := decodeTransaction(body, nil)
		if err != nil {
			return // the whole body is one dead letter (TestUnreadableBodyDeadLettered)
		}
		raws := make([][]byte, len(events))
		for i := range events {
			raws[i] = events[i].Raw
		}
		st := &txnState{events: events}
		n, _ := g.prepare("t1", st)

		// What the handler leaves out is a dead letter, for a reason
		// RouteEvent gives too, or that only the handler can see.
		var accepted [][]byte
		seen := map[string][]byte{}
		for i := range st.events {
			e := &st.events[i]
			if e.Problem != "" {
				_, _, rerr := RouteEvent(raws[i], testBot)
				handlerOnly := strings.HasPrefix(e.Problem, "event of ") || strings.Contains(e.Problem, "already used") ||
					strings.HasPrefix(e.Problem, "ambiguous transaction")
				if rerr == nil && !handlerOnly {
					t.Fatalf("event %d dead-lettered by the handler (%s), RouteEvent accepts it", i, e.Problem)
				}
				continue
			}
			if prev, ok := seen[e.EventID]; ok && e.EventID != "" && bytes.Equal(prev, e.Raw) {
				continue // a copy, stored once
			}
			seen[e.EventID] = e.Raw
			accepted = append(accepted, e.Raw)
		}
		if got := len(st.ptrs) - n; got != len(st.dead) {
			t.Fatalf("%d dead letters published, %d made", got, len(st.dead))
		}

		// What the handler hands over.
		ho := newHandoff()
		for _, m := range st.ptrs[:n] {
			st.handed = append(st.handed, ho.offer(m.Header.Get(bus.HeaderMsgID), m.Data))
		}
		g.handRoutes(st)

		// The transaction messages hold exactly the accepted events, in
		// order, each message within its size.
		s := &splitter{g: g}
		var inChunks [][]byte
		for k, m := range st.ptrs[:n] {
			if len(m.Data) > g.maxChunk || m.Subject != bus.SubjectTxns || m.Header.Get(bus.HeaderMsgID) != chunkID(m.Data) {
				t.Fatalf("transaction message of %d bytes (max %d) on %s, id %s", len(m.Data), g.maxChunk, m.Subject, m.Header.Get(bus.HeaderMsgID))
			}
			cevs, err := decodeTransaction(m.Data, nil)
			if err != nil {
				t.Fatalf("transaction message %q unreadable: %v", m.Data, err)
			}
			own, err := s.routes(m.Data)
			if err != nil {
				t.Fatalf("transaction message %q: %v", m.Data, err)
			}
			if handed := st.handed[k]; handed == nil || !reflect.DeepEqual(handed.routes, own) {
				t.Fatalf("transaction message %q: the handler's routes\n%+v\nthe splitter's own\n%+v", m.Data, handed, own)
			}
			for _, handed := range []bool{false, true} {
				it := &splitItem{}
				if handed {
					s.route(context.Background(), it, st.handed[k].data, st.handed[k].routes, m.Header.Get(bus.HeaderTxnID))
				} else {
					s.route(context.Background(), it, m.Data, nil, m.Header.Get(bus.HeaderTxnID))
				}
				// Every event gets its message, in order, but those no
				// worker reads.
				j := 0
				for i := range cevs {
					if r, _, err := RouteEvent(cevs[i].Raw, testBot); err == nil && !r.Class.Stored() {
						continue
					}
					if j >= len(it.msgs) {
						t.Fatalf("%d events in a transaction message, the splitter made %d messages", len(cevs), len(it.msgs))
					}
					checkRouted(t, cevs[i].Raw, it.msgs[j], it.kinds[j])
					j++
				}
				ignored := 0
				for _, n := range it.ignored {
					ignored += n
				}
				if j != len(it.msgs) || ignored != len(cevs)-j {
					t.Fatalf("the splitter made %d messages and ignored %d events, want %d and %d", len(it.msgs), ignored, j, len(cevs)-j)
				}
			}
			for i := range cevs {
				inChunks = append(inChunks, cevs[i].Raw)
			}
		}
		if len(inChunks) != len(accepted) {
			t.Fatalf("%d events in the transaction messages, %d accepted", len(inChunks), len(accepted))
		}
		for i := range accepted {
			if !bytes.Equal(inChunks[i], accepted[i]) {
				t.Fatalf("event %d in the transaction messages is %q, want %q", i, inChunks[i], accepted[i])
			}
		}
	})
}

// checkRouted: the splitter's message for raw is what RouteEvent says.
func checkRouted(t *testing.T, raw []byte, m *nats.Msg, kind int8) {
	t.Helper()
	route, routed, err := RouteEvent(raw, testBot)
	if err != nil {
		if kind != kindDeadLetter || m.Subject != bus.DLQSubject("gateway") {
			t.Fatalf("%q: RouteEvent refuses it (%v), the splitter sends it to %s", raw, err, m.Subject)
		}
		if reason := m.Header.Get(bus.HeaderReason); len(err.Error()) < 1000 && !strings.ContainsAny(err.Error(), "\r\n") && reason != err.Error() {
			t.Fatalf("%q: dead-lettered for %q, RouteEvent says %q", raw, reason, err)
		}
		if !bytes.HasPrefix(raw, m.Data) {
			t.Fatalf("dead letter holds %q, want %q", m.Data, raw)
		}
		return
	}
	switch {
	case kind == kindDeadLetter:
		t.Fatalf("%q: RouteEvent routes it to %s, the splitter dead-letters it (%s)", raw, route.Subject, m.Header.Get(bus.HeaderReason))
	case m.Subject != route.Subject || !bytes.Equal(m.Data, routed) || int(kind) != classIndex(route.Class):
		t.Fatalf("%q: splitter %s class %d, RouteEvent %s class %s", raw, m.Subject, kind, route.Subject, route.Class)
	case m.Header.Get(bus.HeaderEventID) != route.EventID || m.Header.Get(bus.HeaderEventType) != route.Type:
		t.Fatalf("%q: splitter id %q type %q, RouteEvent %q %q", raw, m.Header.Get(bus.HeaderEventID), m.Header.Get(bus.HeaderEventType), route.EventID, route.Type)
	}
}
