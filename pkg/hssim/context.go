package hssim

import (
	"net/http"
	"slices"
	"strconv"
	"time"

	"github.com/cactus-comments/appservice/pkg/event"
)

// handleContext is GET /rooms/{roomId}/context/{eventId}: the event with
// up to limit (default 10) events around it, half before (newest first)
// and the rest after, the room's state, and /messages tokens to page on
// from either end. The event comes as clients get it, unsigned.prev_content
// included: Synapse reads it with prev_content here (unlike its GET
// /event), Dendrite serves it from its sync API, which adds it, and
// continuwuity stores it with the event.
func (s *Server) handleContext(q *request) (any, *matrixError) {
	limit := 10
	if l := q.r.URL.Query().Get("limit"); l != "" {
		n, err := strconv.Atoi(l)
		if err != nil || n < 0 {
			return nil, errf(http.StatusBadRequest, "M_INVALID_PARAM", "Bad limit")
		}
		limit = min(n, 100)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	v, e := s.readViewLocked(q, false)
	if e != nil {
		return nil, e
	}
	// Synapse reads the event first, then filters it for the user: one
	// outside what they may see is forbidden, not missing.
	if !slices.ContainsFunc(v.r.timeline, func(ev *event.Event) bool { return ev.EventID == q.param("eventId") }) {
		return nil, errNotFound("Event not found.")
	}
	// Synapse filters /context as a peek for anyone not joined now.
	if v.r.membership(q.who.userID) != "join" {
		v.peeking = true
	}
	visible := visibleEvents(v, q.who.userID)
	var tl []*event.Event
	var pos []int // each event's position in the room's timeline, for tokens
	for i, ev := range v.r.timeline[:v.until] {
		if visible[i] {
			tl = append(tl, ev)
			pos = append(pos, i)
		}
	}
	i := slices.IndexFunc(tl, func(ev *event.Event) bool { return ev.EventID == q.param("eventId") })
	if i < 0 {
		return nil, errForbidden("You don't have permission to access that event.")
	}
	before := limit / 2
	first, last := max(0, i-before), min(len(tl), i+1+limit-before)
	evsBefore := slices.Clone(tl[first:i])
	slices.Reverse(evsBefore)
	return map[string]any{
		"event":         s.servedLocked(tl[i], time.Now()),
		"events_before": s.servedListLocked(evsBefore),
		"events_after":  s.servedListLocked(tl[i+1 : last]),
		"state":         s.servedListLocked(stateOf(v.r, v.state())),
		"start":         "t" + strconv.Itoa(pos[first]),
		"end":           "t" + strconv.Itoa(pos[last-1]+1),
	}, nil
}
