package hssim

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"

	"github.com/cactus-comments/appservice/pkg/event"
)

// RoomState is a copy of a room's current state (nil for unknown rooms).
func (s *Server) RoomState(roomID string) map[StateKey]event.Event {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.rooms[roomID]
	if !ok {
		return nil
	}
	out := make(map[StateKey]event.Event, len(r.state))
	for k, ev := range r.state {
		out[k] = copyOut(ev)
	}
	return out
}

// StateEvent returns the content of one piece of current state.
func (s *Server) StateEvent(roomID, evType, stateKey string) (json.RawMessage, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.rooms[roomID]
	if !ok {
		return nil, false
	}
	ev := r.stateEvent(evType, stateKey)
	if ev == nil {
		return nil, false
	}
	return append(json.RawMessage(nil), ev.Content...), true
}

// Timeline is a copy of every event of a room, oldest first.
func (s *Server) Timeline(roomID string) []event.Event {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.rooms[roomID]
	if !ok {
		return nil
	}
	out := make([]event.Event, len(r.timeline))
	for i, ev := range r.timeline {
		out[i] = copyOut(ev)
	}
	return out
}

// Membership is the user's membership in a room ("leave" when none).
func (s *Server) Membership(roomID, userID string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.rooms[roomID]
	if !ok {
		return "leave"
	}
	return r.membership(userID)
}

// PowerLevel is the user's current power level in a room; CreatorLevel
// for a creator of a room of version 12 or later.
func (s *Server) PowerLevel(roomID, userID string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.rooms[roomID]
	if !ok {
		return 0
	}
	return s.roomPowerLevels(r).userLevel(userID)
}

// RoomVersionOf is a room's version ("" for unknown rooms).
func (s *Server) RoomVersionOf(roomID string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if r, ok := s.rooms[roomID]; ok {
		return r.version
	}
	return ""
}

// Creators lists the users with infinite power in a room of version 12 or
// later (the create event's sender, then additional_creators); nil for
// earlier versions and unknown rooms.
func (s *Server) Creators(roomID string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if r, ok := s.rooms[roomID]; ok {
		return r.creators()
	}
	return nil
}

// JoinedMembers lists the joined members of a room, sorted.
func (s *Server) JoinedMembers(roomID string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.rooms[roomID]
	if !ok {
		return nil
	}
	return r.joinedMembers()
}

// ResolveAliasLocal looks an alias up without asking any appservice.
func (s *Server) ResolveAliasLocal(alias string) (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.aliases[alias]
	return e.roomID, ok
}

// Aliases lists every local alias, sorted.
func (s *Server) Aliases() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]string, 0, len(s.aliases))
	for a := range s.aliases {
		out = append(out, a)
	}
	slices.Sort(out)
	return out
}

// Rooms lists room ids in creation order.
func (s *Server) Rooms() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.roomOrder)
}

// UserExists reports whether a user is registered.
func (s *Server) UserExists(userID string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.isRegisteredLocked(userID)
}

// Transactions is a copy of the log of every push attempt, oldest first.
func (s *Server) Transactions() []TxnRecord {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]TxnRecord, len(s.txnLog))
	for i, t := range s.txnLog {
		t.EventIDs = slices.Clone(t.EventIDs)
		out[i] = t
	}
	return out
}

// Delivered reports whether an appservice acknowledged the event.
func (s *Server) Delivered(eventID string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.delivered[eventID]
}

// Wait returns once cond is true, re-checking it whenever the simulator's
// state may have changed: an event is stored, a push attempt ends, or any
// client request other than a GET is answered. cond runs without the
// simulator's lock, so it may call any method.
func (s *Server) Wait(ctx context.Context, cond func() bool) error {
	for {
		s.mu.Lock()
		ch := s.changed
		s.mu.Unlock()
		if cond() {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("hssim wait: %w", ctx.Err())
		case <-s.ctx.Done():
			return fmt.Errorf("hssim wait: simulator closed")
		}
	}
}

// WaitDelivered waits until an appservice acknowledged the event.
func (s *Server) WaitDelivered(ctx context.Context, eventID string) error {
	if err := s.Wait(ctx, func() bool { return s.Delivered(eventID) }); err != nil {
		return fmt.Errorf("event %s not delivered: %w", eventID, err)
	}
	return nil
}

// WaitIdle waits until every stored event that some appservice wants has
// been acknowledged (nothing queued, nothing in flight).
func (s *Server) WaitIdle(ctx context.Context) error {
	return s.Wait(ctx, func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		if len(s.notifyQ) > 0 || s.notifying {
			return false
		}
		for _, as := range s.apps {
			if as.cur != nil || len(as.queue) > 0 {
				return false
			}
		}
		return true
	})
}
