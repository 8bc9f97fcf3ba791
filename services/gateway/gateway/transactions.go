package gateway

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/cactus-comments/appservice/pkg/bus"
	"github.com/cactus-comments/appservice/pkg/event"
	"github.com/cactus-comments/appservice/pkg/jspub"
	"github.com/cactus-comments/appservice/pkg/mxid"
)

// maxPooledBody bounds the bodies whose buffers are kept for reuse, so one
// huge transaction does not pin its memory for good. A pooled buffer is
// reserved whole from the body budget by the request that takes it.
const maxPooledBody = 1 << 20

// txnState is the scratch space of one transaction, recycled through
// Gateway.txns.
type txnState struct {
	body   []byte
	events []rawEvent
	// seen maps the event ids of this transaction to their first index.
	seen map[string]int
	// raws are the events that go into transaction messages, kept their
	// indexes in events, chunks the messages' bytes back to back, ends
	// where each ends and starts where each raw starts.
	raws   [][]byte
	kept   []int
	chunks []byte
	ends   []int
	starts []int
	// handed are the transaction messages offered to the splitter.
	handed []*handed
	// msgs keep their header maps from one transaction to the next.
	msgs []nats.Msg
	ptrs []*nats.Msg
	// dead are the dead letters of this transaction.
	dead []*nats.Msg
}

var errTooLarge = errors.New("body too large")

// transaction handles PUT /transactions/{txnId}: 200 {} once every event
// is stored in a transaction message (or, if it cannot be stored as an
// event, in the dead-letter stream); 503 if that does not happen within
// the publish timeout. The splitter moves the events to the event stream
// afterwards (split.go). A txn id seen before is processed again:
// Dendrite merges new events into a retried txn id; an identical retry is
// a duplicate transaction message and stores nothing.
func (g *Gateway) transaction(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	g.metrics.txnInFlight.Inc()
	defer g.metrics.txnInFlight.Dec()
	txnID, ok := pathRest(r)
	if !ok {
		g.finishTxn(w, start, outcomeBadRequest, http.StatusBadRequest, codeInvalidParam, "transaction id is not a valid path segment")
		return
	}
	st, _ := g.txns.Get().(*txnState)
	if st == nil {
		st = &txnState{}
	}
	var (
		err  error
		held int64
	)
	st.body, held, err = g.readBody(r, st.body[:0])
	// The buffer is released from the budget when the transaction is
	// answered, whatever becomes of it.
	defer g.bodies.release(held)
	if err != nil {
		// The buffer of a refused body is not kept: a burst of them
		// would otherwise stay in the pool, outside the budget.
		st.body = nil
		g.recycle(st)
		switch {
		case errors.Is(err, errTooLarge):
			g.finishTxn(w, start, outcomeTooLarge, http.StatusRequestEntityTooLarge, codeTooLarge,
				fmt.Sprintf("transaction body larger than %d bytes", g.maxBody))
			return
		case errors.Is(err, errBusy):
			g.log.Warn("transaction refused: the gateway holds as many request bodies as it may", "txn_id", logID(txnID),
				"bytes_in_flight", g.bodies.held.Load(), "limit", g.bodies.limit)
			g.finishTxn(w, start, outcomeBusy, http.StatusServiceUnavailable, codeUnknown, "gateway busy, retry later: "+err.Error())
			return
		case errors.Is(err, errSlowBody):
			g.log.Warn("transaction body too slow; connection closed", "txn_id", logID(txnID), "err", err)
			g.finishTxn(w, start, outcomeBadRequest, http.StatusRequestTimeout, codeUnknown, err.Error())
			return
		}
		g.log.Warn("transaction body unreadable", "txn_id", logID(txnID), "err", err)
		g.finishTxn(w, start, outcomeBadRequest, http.StatusBadRequest, codeNotJSON, "could not read the body")
		return
	}
	outcome := outcomeOK
	st.events, err = decodeTransaction(st.body, st.events)
	if err != nil {
		// The body is complete and authenticated but no transaction: a
		// 400 would have the homeserver resend it for ever, delivering
		// nothing behind it. It is kept whole as one dead letter instead,
		// and acknowledged once stored.
		outcome = outcomeBadJSON
		if errors.Is(err, errNotJSON) {
			outcome = outcomeNotJSON
		}
		st.events = append(st.events[:0], rawEvent{Raw: st.body, Problem: err.Error(), whole: true})
	}
	n := len(st.events)
	g.metrics.txnEvents.Observe(float64(n))
	err = g.store(r.Context(), txnID, st)
	if r.Context().Err() == nil {
		// A homeserver that hangs up says nothing about JetStream.
		g.health.observe(start, err)
	}
	g.recycle(st)
	if err != nil {
		g.log.Warn("transaction not stored, asking the homeserver to retry", "txn_id", logID(txnID), "events", n, "err", err)
		g.finishTxn(w, start, outcomeUnavailable, http.StatusServiceUnavailable, codeUnknown,
			"events could not be stored, retry later: "+err.Error())
		return
	}
	writeJSON(w, http.StatusOK, emptyObject)
	if outcome == outcomeOK {
		g.metrics.txnOK.Inc()
	} else {
		g.metrics.transactions.WithLabelValues(outcome).Inc()
	}
	d := time.Since(start)
	g.metrics.txnDuration.Observe(d.Seconds())
	if g.log.Enabled(r.Context(), slog.LevelDebug) {
		g.log.Debug("transaction stored", "txn_id", logID(txnID), "events", n, "duration", d)
	}
}

func (g *Gateway) finishTxn(w http.ResponseWriter, start time.Time, outcome string, status int, code, msg string) {
	writeError(w, status, code, msg)
	g.metrics.transactions.WithLabelValues(outcome).Inc()
	g.metrics.txnDuration.Observe(time.Since(start).Seconds())
}

// recycle returns st to the pool. Nothing refers to its buffers once
// published: the connection copies what it sends.
func (g *Gateway) recycle(st *txnState) {
	if cap(st.body) > maxPooledBody || cap(st.chunks) > 2*maxPooledBody {
		return
	}
	clear(st.events)
	clear(st.raws)
	for i := range st.msgs {
		st.msgs[i].Data = nil // keep the header map for reuse
	}
	clear(st.ptrs)
	clear(st.dead)
	clear(st.handed)
	clear(st.seen)
	g.txns.Put(st)
}

// store stores the transaction's events as transaction messages and what
// cannot become an event as dead letters, and waits for every PubAck. It
// returns nil only when all are stored. The judgement of each event is
// the splitter's (RouteEvent's), except what must be decided here: an
// element the decoder flags (malformed, or an ambiguous transaction), one
// too large for any message, and an event id repeated with other content,
// which only the whole transaction shows.
func (g *Gateway) store(ctx context.Context, txnID string, st *txnState) error {
	if !g.nc.IsConnected() {
		g.metrics.publishFailures.WithLabelValues("disconnected").Inc()
		return fmt.Errorf("nats is %s", g.nc.Status())
	}
	ctx, cancel := context.WithTimeout(ctx, g.publishTimeout)
	defer cancel()
	n, repeated := g.prepare(txnID, st)
	st.handed = st.handed[:0]
	if g.split.active() {
		for k := range n {
			st.handed = append(st.handed, g.split.handoff.offer(st.msgs[k].Header[bus.HeaderMsgID][0], st.msgs[k].Data))
		}
	}
	b := g.pub.Publish(st.ptrs)
	// While JetStream stores them, the routes of their events.
	g.handRoutes(st)
	if err := b.Wait(ctx); err != nil {
		g.metrics.publishFailures.WithLabelValues(g.failureReason(ctx, b, n)).Inc()
		return err
	}
	dups := 0
	for k := range n {
		if b.Duplicate(k) {
			dups++
		}
	}
	if dups > 0 {
		g.metrics.txnMessagesDuplicate.Add(float64(dups))
	}
	if n > dups {
		g.metrics.txnMessagesStored.Add(float64(n - dups))
	}
	if repeated > 0 {
		g.metrics.eventsRepeated.Add(float64(repeated))
	}
	if len(st.dead) > 0 {
		g.metrics.deadLettered.Add(float64(len(st.dead)))
	}
	return nil
}

// prepare sorts the events of a decoded transaction into st.ptrs: its n
// transaction messages first, then its dead letters. repeated counts the
// events whose id came earlier in the transaction.
func (g *Gateway) prepare(txnID string, st *txnState) (n, repeated int) {
	txnHeader := headerValue(txnID)
	if st.seen == nil {
		st.seen = make(map[string]int)
	}
	st.raws, st.kept, st.dead = st.raws[:0], st.kept[:0], st.dead[:0]
	for i := range st.events {
		e := &st.events[i]
		if e.Problem == "" && len(e.Raw) > g.maxEvent {
			e.Problem = tooLarge(len(e.Raw), g.maxEvent)
		}
		if e.Problem == "" && e.EventID != "" {
			if j, ok := st.seen[e.EventID]; ok {
				repeated++
				same := bytes.Equal(st.events[j].Raw, e.Raw)
				g.log.Warn("event repeated within a transaction", "txn_id", logID(txnID), "event_id", logID(e.EventID), "identical", same)
				if same {
					continue // stored once
				}
				e.Problem = "event_id already used by a different event of this transaction"
			} else {
				st.seen[e.EventID] = i
			}
		}
		if e.Problem != "" {
			st.dead = append(st.dead, g.deadLetterMsg(txnHeader, e))
			continue
		}
		st.raws, st.kept = append(st.raws, e.Raw), append(st.kept, i)
	}
	st.chunks, st.ends, st.starts = appendChunks(st.chunks[:0], st.ends[:0], st.starts[:0], st.raws, g.maxChunk)
	n = len(st.ends)
	if cap(st.msgs) < n {
		st.msgs = append(st.msgs[:cap(st.msgs)], make([]nats.Msg, n-cap(st.msgs))...)
	}
	st.msgs, st.ptrs = st.msgs[:n], st.ptrs[:0]
	start := 0
	for k, end := range st.ends {
		m := &st.msgs[k]
		m.Subject, m.Data = bus.SubjectTxns, st.chunks[start:end:end]
		setChunkHeaders(m, chunkID(m.Data), txnHeader)
		st.ptrs = append(st.ptrs, m)
		start = end
	}
	st.ptrs = append(st.ptrs, st.dead...)
	return n, repeated
}

// handRoutes hands the splitter the routes of the events in the
// transaction messages st.handed holds (st.handed[k] of message k, nil if
// not offered), as it would work them out from the bytes.
func (g *Gateway) handRoutes(st *txnState) {
	j, start := 0, 0
	for k, h := range st.handed {
		end := st.ends[k]
		var routes []route
		for ; j < len(st.raws) && st.starts[j] < end; j++ {
			if h == nil {
				continue
			}
			if routes == nil {
				routes = make([]route, 0, len(st.raws)-j)
			}
			at := st.starts[j] - start
			e := &st.events[st.kept[j]]
			routes = append(routes, g.judge(e, string(e.RoomID), h.data[at:at+len(e.Raw):at+len(e.Raw)]))
		}
		h.setRoutes(routes)
		start = end
	}
}

// failureReason labels a failed store for publish_failures_total: the
// first message that failed is a transaction message (its first n) or a
// dead letter.
func (g *Gateway) failureReason(ctx context.Context, b *jspub.Batch, n int) string {
	if ctx.Err() != nil {
		return "timeout"
	}
	for i := range b.Len() {
		err := b.MessageErr(i)
		var apiErr *jetstream.APIError
		switch {
		case err == nil:
		case i >= n:
			return "dead_letter"
		case errors.Is(err, jspub.ErrNoStream) || errors.As(err, &apiErr):
			return "refused"
		default:
			return "publish"
		}
	}
	return "publish"
}

// setChunkHeaders fills a transaction message's headers, reusing the map
// and slices a recycled message already has.
func setChunkHeaders(m *nats.Msg, id, txnID string) {
	if m.Header == nil {
		m.Header = nats.Header{bus.HeaderMsgID: make([]string, 1), bus.HeaderTxnID: make([]string, 1)}
	}
	m.Header[bus.HeaderMsgID][0] = id
	m.Header[bus.HeaderTxnID][0] = txnID
}

func tooLarge(size, max int) string {
	return fmt.Sprintf("event of %d bytes is larger than the event stream takes (%d)", size, max)
}

func classIndex(c bus.Class) int {
	switch c {
	case bus.ClassBot:
		return 0
	case bus.ClassModeration:
		return 1
	}
	return 2
}

// checkEvent is the gateway's whole judgement of one decoded event: why it
// cannot go to the event stream ("" if it can) and, if it can, its class.
// roomID is the event's room id as a string. The checks are the consumers'
// own (event.Validate, bus.Classify) on the values the decoder read, so
// that what passes here reads the same in every consumer.
func checkEvent(e *rawEvent, roomID, bot string, maxEvent int) (bus.Class, string) {
	if len(e.Raw) > maxEvent {
		return "", tooLarge(len(e.Raw), maxEvent)
	}
	ev := e.event(roomID)
	if err := ev.Validate(); err != nil {
		return "", err.Error()
	}
	return bus.Classify(&ev, bot), ""
}

// setHeaders fills a message's headers, reusing the map and slices a
// recycled message already has. eventID and eventType are validated (at
// most 255 bytes, no control characters); txnID is a headerValue.
func setHeaders(m *nats.Msg, eventID, txnID, eventType string) {
	if m.Header == nil {
		m.Header = nats.Header{
			bus.HeaderEventID:   make([]string, 1),
			bus.HeaderTxnID:     make([]string, 1),
			bus.HeaderEventType: make([]string, 1),
		}
	}
	m.Header[bus.HeaderEventID][0] = eventID
	m.Header[bus.HeaderTxnID][0] = txnID
	m.Header[bus.HeaderEventType][0] = eventType
}

// maxHeaderValue bounds the header values the gateway copies from what the
// homeserver sent (the transaction id): JetStream refuses headers over
// 64 KiB, and would then refuse the transaction for ever.
const maxHeaderValue = 256

// headerValue returns s as a NATS header value: percent-encoded if it holds
// a control character, and cut to maxHeaderValue bytes with its length
// said.
func headerValue(s string) string {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c == 0x7f {
			s = url.PathEscape(s)
			break
		}
	}
	return event.Truncate(s, maxHeaderValue)
}

// logID bounds an id a homeserver chose before it goes into a log line.
func logID(s string) string { return event.Truncate(s, maxHeaderValue) }

// deadLetterMsg is the dead letter of an event that cannot go to the
// event stream, with its reason (e.Problem). txnID is a headerValue.
func (g *Gateway) deadLetterMsg(txnID string, e *rawEvent) *nats.Msg {
	subject := ""
	if len(e.RoomID) > 0 && len(e.RoomID) <= mxid.MaxLength {
		subject = bus.EventSubject(bus.ClassOther, string(e.RoomID))
	}
	h := nats.Header{bus.HeaderTxnID: {txnID}}
	if e.whole {
		h.Set(headerWholeBody, "true")
		g.log.Warn("transaction body that is no transaction sent to the dead-letter stream", "txn_id", logID(txnID),
			"bytes", len(e.Raw), "reason", e.Problem)
		return gatewayDeadLetter(subject, e.Problem, e.Raw, h)
	}
	if e.Type != "" {
		h.Set(bus.HeaderEventType, headerValue(e.Type))
	}
	g.log.Warn("malformed event sent to the dead-letter stream", "txn_id", logID(txnID),
		"event_id", logID(e.EventID), "room_id", logID(string(e.RoomID)), "reason", e.Problem)
	return gatewayDeadLetter(subject, e.Problem, e.Raw, h)
}

// headerWholeBody marks the dead letter of a whole transaction body the
// gateway could not read as a transaction (not one event of it).
const headerWholeBody = "Cactus-Dlq-Whole-Body"

// gatewayDeadLetter is the gateway's dead letter of an event's bytes.
func gatewayDeadLetter(subject, reason string, data []byte, h nats.Header) *nats.Msg {
	sum := sha256.Sum256(data)
	return bus.DeadLetterMsg(bus.DeadLetter{
		Source:  "gateway",
		Subject: subject,
		Reason:  reason,
		Data:    data,
		Header:  h,
		// The homeserver resends the same event with every retry of its
		// transaction; one dead letter per distinct event is enough.
		ID: "gateway:" + hex.EncodeToString(sum[:]),
	})
}
