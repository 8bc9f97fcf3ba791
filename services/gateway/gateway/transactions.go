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
	// msgs keep their header maps from one transaction to the next.
	msgs []nats.Msg
	futs []jetstream.PubAckFuture
	// futEvent is the index in events of each future's event.
	futEvent []int
	rooms    []*room // per event, nil for malformed events
	// seen maps the event ids of this transaction to their first index.
	seen map[string]int
	// cache holds the rooms of recent transactions, so that a room id is
	// validated and encoded into subjects once, not once per event.
	cache map[string]*room
}

// maxCachedRooms bounds txnState.cache.
const maxCachedRooms = 4096

// room is a validated room id and its event subjects.
type room struct {
	id       string
	subjects [3]string // by classIndex, filled on first use
}

func (r *room) subject(c bus.Class) string {
	i := classIndex(c)
	if r.subjects[i] == "" {
		r.subjects[i] = bus.EventSubject(c, r.id)
	}
	return r.subjects[i]
}

// room returns the cached room of id, or caches it. The id is not
// validated here: checkEvent does that, and the cache is bounded.
func (st *txnState) room(id []byte) *room {
	if r, ok := st.cache[string(id)]; ok {
		return r
	}
	s := string(id)
	if st.cache == nil || len(st.cache) >= maxCachedRooms {
		st.cache = make(map[string]*room)
	}
	r := &room{id: s}
	st.cache[s] = r
	return r
}

var errTooLarge = errors.New("body too large")

// transaction handles PUT /transactions/{txnId}: 200 {} once every event
// has its PubAck (or, if malformed, is stored in the dead-letter stream);
// 503 if that does not happen within the publish timeout. A txn id seen
// before is processed again: Dendrite merges new events into a retried
// txn id, and JetStream deduplicates by event id.
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
	st.events, err = decodeTransaction(st.body, st.events)
	if err != nil {
		g.recycle(st)
		outcome, code := outcomeBadJSON, codeBadJSON
		if errors.Is(err, errNotJSON) {
			outcome, code = outcomeNotJSON, codeNotJSON
		}
		g.log.Warn("transaction refused", "txn_id", logID(txnID), "err", err)
		g.finishTxn(w, start, outcome, http.StatusBadRequest, code, err.Error())
		return
	}
	n := len(st.events)
	g.metrics.txnEvents.Observe(float64(n))
	err = g.store(r.Context(), txnID, st)
	if r.Context().Err() == nil {
		// A homeserver that hangs up says nothing about JetStream.
		g.health.observe(start, err)
	}
	if err != nil {
		// Pending futures may still read the messages: st is not
		// recycled, the garbage collector takes it once they are done.
		g.log.Warn("transaction not stored, asking the homeserver to retry", "txn_id", logID(txnID), "events", n, "err", err)
		g.finishTxn(w, start, outcomeUnavailable, http.StatusServiceUnavailable, codeUnknown,
			"events could not be stored, retry later: "+err.Error())
		return
	}
	g.recycle(st)
	writeJSON(w, http.StatusOK, emptyObject)
	g.metrics.txnOK.Inc()
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

// recycle returns st to the pool once nothing refers to its buffers.
func (g *Gateway) recycle(st *txnState) {
	if cap(st.body) > maxPooledBody {
		return
	}
	clear(st.events)
	for i := range st.msgs {
		st.msgs[i].Data = nil // keep the header map for reuse
	}
	clear(st.futs)
	clear(st.rooms)
	clear(st.seen)
	g.txns.Put(st)
}

// store publishes every event and waits for every PubAck; malformed events
// and events JetStream refuses for good go to the dead-letter stream. It
// returns nil only when all are stored.
func (g *Gateway) store(ctx context.Context, txnID string, st *txnState) error {
	if !g.nc.IsConnected() {
		g.metrics.publishFailures.WithLabelValues("disconnected").Inc()
		return fmt.Errorf("nats is %s", g.nc.Status())
	}
	ctx, cancel := context.WithTimeout(ctx, g.publishTimeout)
	defer cancel()
	txnHeader := headerValue(txnID)

	n := len(st.events)
	if cap(st.msgs) < n {
		st.msgs = append(st.msgs[:cap(st.msgs)], make([]nats.Msg, n-cap(st.msgs))...)
	}
	if cap(st.rooms) < n {
		st.rooms = make([]*room, n)
	}
	if st.seen == nil {
		st.seen = make(map[string]int)
	}
	st.msgs, st.rooms, st.futs, st.futEvent = st.msgs[:n], st.rooms[:n], st.futs[:0], st.futEvent[:0]
	var (
		bad      []int
		repeated int
	)
	for i := range st.events {
		e := &st.events[i]
		var rm *room
		if e.Problem == "" {
			rm = st.room(e.RoomID)
			e.class, e.Problem = checkEvent(e, rm.id, g.bot, g.maxEvent)
		}
		if e.Problem == "" {
			if j, ok := st.seen[e.EventID]; ok {
				repeated++
				same := bytes.Equal(st.events[j].Raw, e.Raw)
				g.log.Warn("event repeated within a transaction", "txn_id", logID(txnID), "event_id", e.EventID, "identical", same)
				if same {
					continue // stored once
				}
				e.Problem = "event_id already used by a different event of this transaction"
			} else {
				st.seen[e.EventID] = i
			}
		}
		st.rooms[i] = rm
		if e.Problem != "" {
			bad = append(bad, i)
			continue
		}
		m := &st.msgs[i]
		m.Subject = rm.subject(e.class)
		m.Data = e.Raw
		setHeaders(m, e.EventID, txnHeader, e.Type)
		f, err := g.js.PublishMsgAsync(m)
		if err != nil {
			if bus.IsPermanentPublishError(err) {
				e.Problem = "refused for good by NATS: " + err.Error()
				bad = append(bad, i)
				continue
			}
			g.metrics.publishFailures.WithLabelValues("publish").Inc()
			return fmt.Errorf("publish event %s: %w", e.EventID, err)
		}
		st.futs = append(st.futs, f)
		st.futEvent = append(st.futEvent, i)
	}
	// Dead letters are rare: store them one by one while the acks of the
	// good events come in.
	if err := g.deadLetters(ctx, txnID, st, bad); err != nil {
		return err
	}
	// Acks come back in publish order: waiting for the last first means
	// one wake-up per transaction instead of one per event, and one
	// channel per event instead of two.
	var refused []int
	dups := 0
	for k := len(st.futs) - 1; k >= 0; k-- {
		f := st.futs[k]
		ok := f.Ok()
		var ack *jetstream.PubAck
		select {
		case ack = <-ok:
		default:
			select {
			case ack = <-ok:
			case err := <-f.Err():
				if bus.IsPermanentPublishError(err) {
					// Resending cannot change JetStream's mind: answering
					// 503 would block the homeserver for ever.
					i := st.futEvent[k]
					st.events[i].Problem = "refused for good by JetStream: " + err.Error()
					refused = append(refused, i)
					continue
				}
				g.metrics.publishFailures.WithLabelValues("refused").Inc()
				return fmt.Errorf("event %s: %w", f.Msg().Header.Get(bus.HeaderMsgID), err)
			case <-ctx.Done():
				g.metrics.publishFailures.WithLabelValues("timeout").Inc()
				return fmt.Errorf("no ack from JetStream within %v: %w", g.publishTimeout, context.Cause(ctx))
			}
		}
		if ack.Duplicate {
			dups++
		}
	}
	if err := g.deadLetters(ctx, txnID, st, refused); err != nil {
		return err
	}
	var counts [3]int // by classIndex
	for _, i := range st.futEvent {
		if st.events[i].Problem == "" {
			counts[classIndex(st.events[i].class)]++
		}
	}
	for i, c := range []bus.Class{bus.ClassBot, bus.ClassModeration, bus.ClassOther} {
		if counts[i] > 0 {
			g.metrics.eventsPublished[c].Add(float64(counts[i]))
		}
	}
	if dups > 0 {
		g.metrics.eventsDuplicate.Add(float64(dups))
	}
	if repeated > 0 {
		g.metrics.eventsRepeated.Add(float64(repeated))
	}
	if d := len(bad) + len(refused); d > 0 {
		g.metrics.deadLettered.Add(float64(d))
	}
	return nil
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
		return "", fmt.Sprintf("event of %d bytes is larger than the event stream takes (%d)", len(e.Raw), maxEvent)
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
			bus.HeaderMsgID:     make([]string, 1),
			bus.HeaderTxnID:     make([]string, 1),
			bus.HeaderEventType: make([]string, 1),
		}
	}
	m.Header[bus.HeaderMsgID][0] = eventID
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

// deadLetters stores the events at the given indexes with their reasons.
func (g *Gateway) deadLetters(ctx context.Context, txnID string, st *txnState, idx []int) error {
	for _, i := range idx {
		if err := g.deadLetter(ctx, txnID, &st.events[i]); err != nil {
			g.metrics.publishFailures.WithLabelValues("dead_letter").Inc()
			return err
		}
	}
	return nil
}

// deadLetter stores a malformed event with its reason.
func (g *Gateway) deadLetter(ctx context.Context, txnID string, e *rawEvent) error {
	subject := ""
	if len(e.RoomID) > 0 && len(e.RoomID) <= mxid.MaxLength {
		subject = bus.EventSubject(bus.ClassOther, string(e.RoomID))
	}
	h := nats.Header{bus.HeaderTxnID: {headerValue(txnID)}}
	if e.Type != "" {
		h.Set(bus.HeaderEventType, headerValue(e.Type))
	}
	g.log.Warn("malformed event sent to the dead-letter stream", "txn_id", logID(txnID),
		"event_id", logID(e.EventID), "room_id", logID(string(e.RoomID)), "reason", e.Problem)
	sum := sha256.Sum256(e.Raw)
	err := bus.PublishDeadLetter(ctx, g.js, bus.DeadLetter{
		Source:  "gateway",
		Subject: subject,
		Reason:  e.Problem,
		Data:    e.Raw,
		Header:  h,
		// The homeserver resends the same event with every retry of its
		// transaction; one dead letter per distinct event is enough.
		ID: "gateway:" + hex.EncodeToString(sum[:]),
	})
	if err != nil {
		return fmt.Errorf("dead-letter event %q (%s): %w", logID(e.EventID), e.Problem, err)
	}
	return nil
}
