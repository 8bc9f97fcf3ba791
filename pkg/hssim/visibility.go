package hssim

import (
	"slices"

	"github.com/cactus-comments/appservice/pkg/event"
)

// What a user may read of a room they are not joined to. Every server
// answers 403 M_FORBIDDEN to a user who is only invited, knocking, banned
// or was never in the room, unless the history is world_readable; an
// appservice's token changes nothing (it only acts as one of its users).
//
//   - Synapse (check_user_in_room_or_world_readable with departed users
//     allowed): a former member whose membership is leave reads the room as
//     it was when they left (state, members, history up to the leave); a
//     banned one is refused. joined_members needs a current join, except
//     for an appservice with a joined member in its namespace.
//   - Dendrite reads the state at a former member's leave as well. It also
//     answers an invitee with the state at their invite; the simulator
//     refuses that, as Synapse does.
//   - continuwuity (user_can_see_state_events): state, members and
//     joined_members only for the joined, world_readable rooms, and an
//     invitee when the history visibility is "invited"; a former member is
//     refused.
//
// /messages and /context then show only the events the history visibility
// lets the user see (Synapse's filter_events_for_client).

// readView is how much of a room a requester may read: the timeline up to
// until (the whole of it for members and world_readable rooms, up to their
// leave for a former member).
type readView struct {
	r       *room
	until   int
	peeking bool // reading a world_readable room without being a member
}

// state is the room's state as the view shows it.
func (v readView) state() map[StateKey]*event.Event {
	if v.until == len(v.r.timeline) {
		return v.r.state
	}
	st := map[StateKey]*event.Event{}
	for _, ev := range v.r.timeline[:v.until] {
		if ev.StateKey != nil {
			st[StateKey{ev.Type, *ev.StateKey}] = ev
		}
	}
	return st
}

func worldReadable(r *room) bool {
	hv, _ := r.stateContent("m.room.history_visibility", "")["history_visibility"].(string)
	return hv == "world_readable"
}

// readViewLocked decides what who may read of the room named in the path:
// stateOnly marks the state endpoints, which continuwuity gates more
// narrowly than history.
func (s *Server) readViewLocked(q *request, stateOnly bool) (readView, *matrixError) {
	uid := q.who.userID
	r, e := s.lookupRoomLocked(q.param("roomId"), uid)
	if e != nil {
		return readView{}, e
	}
	full := readView{r: r, until: len(r.timeline)}
	m := r.membership(uid)
	if m == "join" {
		return full, nil
	}
	if worldReadable(r) {
		full.peeking = true
		return full, nil
	}
	refused := errForbidden("User %s not in room %s, and room previews are disabled", uid, r.id)
	if s.opts.Mode == Conduit && stateOnly {
		if hv, _ := r.stateContent("m.room.history_visibility", "")["history_visibility"].(string); m == "invite" && hv == "invited" {
			return full, nil
		}
		return readView{}, refused
	}
	if last := r.stateEvent("m.room.member", uid); last != nil && m == "leave" {
		return readView{r: r, until: slices.Index(r.timeline, last) + 1}, nil
	}
	return readView{}, refused
}

// historyOrder ranks visibilities from most to least visible, and
// membershipOrder memberships from most to least joined, as Synapse does
// to let a boundary event be seen from either side.
var (
	historyOrder    = []string{"world_readable", "shared", "invited", "joined"}
	membershipOrder = []string{"join", "invite", "knock", "leave", "ban"}
)

// visibleEvents reports, for each event of the view's timeline, whether uid
// may see it: joined at the event, or the history visibility then allows
// it (shared for members and former members, invited for one invited
// then, world_readable for all).
func visibleEvents(v readView, uid string) []bool {
	out := make([]bool, v.until)
	hv, membership := "shared", "leave"
	for i, ev := range v.r.timeline[:v.until] {
		evHV, evMembership := hv, membership
		if ev.StateKey != nil {
			c := contentMap(ev)
			switch {
			case ev.Type == "m.room.history_visibility" && *ev.StateKey == "":
				next, _ := c["history_visibility"].(string)
				if !slices.Contains(historyOrder, next) {
					next = "shared"
				}
				evHV = mostOf(historyOrder, hv, next)
				hv = next
			case ev.Type == "m.room.member" && *ev.StateKey == uid:
				next, _ := c["membership"].(string)
				if !slices.Contains(membershipOrder, next) {
					next = "leave"
				}
				evMembership = mostOf(membershipOrder, membership, next)
				membership = next
			}
		}
		switch {
		case evMembership == "join":
			out[i] = true
		case evHV == "joined":
		case evHV == "invited":
			out[i] = evMembership == "invite"
		case evHV == "shared":
			out[i] = !v.peeking
		default:
			out[i] = true
		}
	}
	return out
}

// mostOf is whichever of a and b comes first in order.
func mostOf(order []string, a, b string) string {
	if slices.Index(order, b) < slices.Index(order, a) {
		return b
	}
	return a
}

// mayListJoinedLocked is who may call joined_members: a joined member, anyone
// in a world_readable room, on continuwuity an invitee where the history is
// "invited", and on Synapse an appservice with a joined member in its
// namespace.
func (s *Server) mayListJoinedLocked(r *room, who *requester) bool {
	m := r.membership(who.userID)
	if m == "join" || worldReadable(r) {
		return true
	}
	switch s.opts.Mode {
	case Conduit:
		hv, _ := r.stateContent("m.room.history_visibility", "")["history_visibility"].(string)
		return m == "invite" && hv == "invited"
	case Synapse:
		return who.as != nil && slices.ContainsFunc(r.joinedMembers(), who.as.interestedInUser)
	}
	return false
}
