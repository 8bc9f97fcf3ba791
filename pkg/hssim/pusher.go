package hssim

import (
	"crypto/sha256"
	"encoding/base64"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/go-json-experiment/json/jsontext"

	"github.com/cactus-comments/appservice/pkg/event"
)

// TxnRecord is one push attempt of a transaction to an appservice.
type TxnRecord struct {
	Appservice string
	TxnID      string
	EventIDs   []string
	Attempt    int // 1 for the first try of this txn id
	Status     int // HTTP status; 0 when there was no response
	Err        string
	OK         bool
	Ephemeral  bool // the body carried ephemeral keys
	Auth       string
	At         time.Time
}

type pendingTxn struct {
	id      string
	events  []queued
	attempt int
	// fromDB: Synapse formed this transaction while the appservice was
	// down, so its recoverer reads the events from the database.
	fromDB bool
}

type notifyItem struct {
	ev      queued
	targets []*appservice
}

func (s *Server) maxEvents() int {
	if s.opts.Mode == Dendrite {
		return 50
	}
	return 100
}

// enqueueNotifyLocked decides, with the state right after ev, which
// appservices are interested, and queues it for the notifier.
func (s *Server) enqueueNotifyLocked(ev *event.Event) {
	s.signalLocked()
	var targets []*appservice
	for _, as := range s.apps {
		if as.reg.URL != nil && s.interestedLocked(as, ev) {
			targets = append(targets, as)
		}
	}
	if len(targets) == 0 {
		return
	}
	s.notifyQ = append(s.notifyQ, notifyItem{ev: queued{live: ev, snap: s.viewLocked(ev)}, targets: targets})
	poke(s.notifyWake)
}

// interestedLocked is Synapse's is_interested_in_event: the sender or a
// member event's target in the users namespace (or the appservice's own
// sender), the room in the rooms namespace, a local alias of the room in
// the aliases namespace, or a joined member in the users namespace.
func (s *Server) interestedLocked(as *appservice, ev *event.Event) bool {
	isOurs := func(uid string) bool {
		in, _ := as.match.User(uid)
		return in || uid == as.sender
	}
	if isOurs(ev.Sender) {
		return true
	}
	if ev.Type == "m.room.member" && ev.StateKey != nil && isOurs(*ev.StateKey) {
		return true
	}
	if in, _ := as.match.Room(ev.RoomID); in {
		return true
	}
	if r := s.rooms[ev.RoomID]; r != nil {
		for a := range r.aliases {
			if in, _ := as.match.Alias(a); in {
				return true
			}
		}
		for uid, m := range r.members {
			if m == "join" && isOurs(uid) {
				return true
			}
		}
	}
	return false
}

// unknownUserLocked is Synapse's _is_unknown_user: a local user that is
// not registered and is no appservice's sender.
func (s *Server) unknownUserLocked(uid string) bool {
	if !strings.HasSuffix(uid, ":"+s.opts.ServerName) || s.isRegisteredLocked(uid) {
		return false
	}
	for _, as := range s.apps {
		if as.sender == uid {
			return false
		}
	}
	return true
}

// notifier hands events to the appservice queues in order. In Synapse
// mode it first asks the appservices that claim an unknown sender or
// member target exclusively (GET /users/{userId}), blocking all delivery
// meanwhile, as Synapse does.
func (s *Server) notifier() {
	for {
		s.mu.Lock()
		if len(s.notifyQ) == 0 {
			s.mu.Unlock()
			select {
			case <-s.notifyWake:
				continue
			case <-s.ctx.Done():
				return
			}
		}
		item := s.notifyQ[0]
		s.notifyQ = s.notifyQ[1:]
		s.notifying = true
		type query struct {
			as  *appservice
			uid string
		}
		var queries [][]query
		if s.opts.Mode == Synapse {
			ev := item.ev.live
			uids := []string{ev.Sender}
			if ev.Type == "m.room.member" && ev.StateKey != nil && *ev.StateKey != ev.Sender {
				uids = append(uids, *ev.StateKey)
			}
			for _, uid := range uids {
				if !s.unknownUserLocked(uid) {
					continue
				}
				var qs []query
				for _, as := range s.apps {
					if _, excl := as.match.User(uid); excl && as.reg.URL != nil {
						qs = append(qs, query{as, uid})
					}
				}
				queries = append(queries, qs)
			}
		}
		s.mu.Unlock()
		for _, qs := range queries {
			for _, q := range qs {
				if s.queryUser(s.ctx, q.as, q.uid) {
					break
				}
			}
		}
		s.mu.Lock()
		for _, as := range item.targets {
			as.queue = append(as.queue, item.ev)
			poke(as.wake)
		}
		s.notifying = false
		s.signalLocked()
		s.mu.Unlock()
	}
}

// newTxnIDLocked: Synapse draws from one increasing sequence shared by all
// appservices (so each sees gaps; we add random ones too); Dendrite uses
// the current time in nanoseconds; continuwuity a hash of the contents.
func (s *Server) newTxnIDLocked(events []queued) string {
	switch s.opts.Mode {
	case Dendrite:
		return strconv.FormatInt(time.Now().UnixNano(), 10)
	case Conduit:
		h := sha256.New()
		for _, q := range events {
			h.Write(mustJSON(q.live))
			h.Write([]byte{0xff})
		}
		return base64.RawURLEncoding.EncodeToString(h.Sum(nil))
	}
	s.nextTxn += 1 + int64(s.rng.IntN(3))
	return strconv.FormatInt(s.nextTxn, 10)
}

// backoff is the wait before retry number n (n >= 1).
func (s *Server) backoff(n int) time.Duration {
	u := s.opts.TimeUnit
	switch s.opts.Mode {
	case Dendrite:
		return u << min(n, 6)
	case Conduit:
		return u * time.Duration(10*n)
	}
	return u << min(n, 9)
}

func (s *Server) pushOK(res asResult) bool {
	if res.err != nil {
		return false
	}
	switch s.opts.Mode {
	case Dendrite:
		return res.status == http.StatusOK
	case Conduit:
		return res.status >= 200 && res.status <= 299
	}
	return res.status >= 200 && res.status <= 299 && isJSON(res.body)
}

// pushLoop delivers one appservice's queue: one transaction in flight,
// events queued meanwhile batched into the next one, a failed transaction
// retried with the same id and events after a backoff.
func (s *Server) pushLoop(as *appservice) {
	failures := 0
	for {
		s.mu.Lock()
		if as.cur == nil {
			if len(as.queue) == 0 {
				s.mu.Unlock()
				select {
				case <-as.wake:
					continue
				case <-s.ctx.Done():
					return
				}
			}
			n := min(len(as.queue), s.maxEvents())
			evs := slices.Clone(as.queue[:n])
			as.queue = slices.Clone(as.queue[n:])
			as.cur = &pendingTxn{id: s.newTxnIDLocked(evs), events: evs, fromDB: as.down}
		} else if s.opts.Mode == Dendrite && len(as.queue) > 0 {
			// Dendrite merges events that arrived during the backoff into
			// the transaction it retries, under the same txn id.
			n := min(len(as.queue), s.maxEvents()-len(as.cur.events))
			as.cur.events = append(as.cur.events, as.queue[:n]...)
			as.queue = slices.Clone(as.queue[n:])
		}
		cur := as.cur
		cur.attempt++
		attempt := cur.attempt
		now := time.Now()
		// Synapse sends the events it held in memory only on the first
		// attempt while the appservice is up; its recoverer reads them
		// from the database. Dendrite resends what it took from its
		// stream; continuwuity reads its database every time.
		fromMemory := s.opts.Mode == Dendrite || s.opts.Mode == Synapse && attempt == 1 && !cur.fromDB
		evs := make([]jsontext.Value, len(cur.events))
		ids := make([]string, len(cur.events))
		for i, q := range cur.events {
			evs[i] = s.wireEventLocked(as, q, fromMemory, now)
			ids[i] = q.live.EventID
		}
		txnID := cur.id
		s.mu.Unlock()

		// Synapse adds the ephemeral keys to every push, retries included,
		// when the appservice receives ephemeral events.
		ephemeral := s.opts.Mode == Synapse && as.reg.ReceiveEphemeral
		body := wireBody(evs, ephemeral)
		res := s.callAS(s.ctx, as, s.opts.PushTimeout, http.MethodPut, "/_matrix/app/v1/transactions/"+s.escapeSegment(txnID), nil, jsontext.Value(body))
		if s.ctx.Err() != nil {
			return
		}
		ok := s.pushOK(res)
		rec := TxnRecord{Appservice: as.reg.ID, TxnID: txnID, EventIDs: ids, Attempt: attempt, Status: res.status, OK: ok, Ephemeral: ephemeral, At: now, Auth: "header"}
		if s.opts.Mode == Conduit {
			rec.Auth = "header+query"
		}
		if res.err != nil {
			rec.Err = res.err.Error()
		}
		s.mu.Lock()
		s.txnLog = append(s.txnLog, rec)
		s.calls["as.transactions"]++
		if ok {
			for _, id := range ids {
				s.delivered[id] = true
			}
			as.cur = nil
			failures = 0
			if len(as.queue) == 0 {
				as.down = false
			}
		} else {
			failures++
			as.down = true
		}
		s.signalLocked()
		s.mu.Unlock()
		s.log.Debug("pushed transaction", "appservice", as.reg.ID, "txn_id", txnID, "events", len(ids), "attempt", attempt, "status", res.status, "ok", ok)
		if ok {
			continue
		}
		t := time.NewTimer(s.backoff(failures))
		select {
		case <-t.C:
		case <-as.retryNow:
			t.Stop()
		case <-s.ctx.Done():
			t.Stop()
			return
		}
	}
}
