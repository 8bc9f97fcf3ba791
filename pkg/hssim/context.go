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
	r, e := s.readableRoomLocked(q)
	if e != nil {
		return nil, e
	}
	i := slices.IndexFunc(r.timeline, func(ev *event.Event) bool { return ev.EventID == q.param("eventId") })
	if i < 0 {
		return nil, errNotFound("Event not found.")
	}
	before := limit / 2
	first, last := max(0, i-before), min(len(r.timeline), i+1+limit-before)
	evsBefore := slices.Clone(r.timeline[first:i])
	slices.Reverse(evsBefore)
	return map[string]any{
		"event":         s.servedLocked(r.timeline[i], time.Now()),
		"events_before": s.servedListLocked(evsBefore),
		"events_after":  s.servedListLocked(r.timeline[i+1 : last]),
		"state":         s.servedListLocked(stateOf(r, s.visibleState(r, q.who.userID))),
		"start":         "t" + strconv.Itoa(first),
		"end":           "t" + strconv.Itoa(last),
	}, nil
}
