package hssim

import (
	"encoding/json"
	"maps"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/go-json-experiment/json/jsontext"

	"github.com/cactus-comments/appservice/pkg/event"
)

// The simulator stores, returns and serves pkg/event.Event, the one event
// type of the project. Its unsigned data is kept as the JSON object the
// simulator wrote: prev_content, prev_sender and replaces_state for a
// state event that replaced another, invite_room_state for invites, and
// redacted_because (the redaction event) for redacted events; age is added
// when an event is served to clients. Appservices get each server's own
// rendering of these (wire.go).

// StateKey identifies one piece of room state.
type StateKey struct {
	Type     string
	StateKey string
}

// contentMap decodes an event's content into a map (nil on invalid
// content).
func contentMap(e *event.Event) map[string]any {
	var m map[string]any
	_ = json.Unmarshal(e.Content, &m)
	return m
}

// unsignedMap decodes an event's unsigned data, keeping each value as it
// was written (an empty map when there is none).
func unsignedMap(e *event.Event) map[string]jsontext.Value {
	u := map[string]jsontext.Value{}
	_ = json.Unmarshal(e.Unsigned, &u)
	return u
}

// setUnsigned writes one key of an event's unsigned data.
func setUnsigned(e *event.Event, key string, v any) {
	u := unsignedMap(e)
	u[key] = mustJSON(v)
	e.Unsigned = mustJSON(u)
}

// clientFormat copies an event for the wire, adding unsigned.age.
func clientFormat(e *event.Event, now time.Time) event.Event {
	c := copyOut(e)
	setUnsigned(&c, "age", max(0, now.UnixMilli()-e.OriginServerTS))
	return c
}

// copyOut is a copy of a stored event that shares nothing with it.
func copyOut(e *event.Event) event.Event {
	c := *e
	if e.StateKey != nil {
		k := *e.StateKey
		c.StateKey = &k
	}
	c.Content = e.Content.Clone()
	c.Unsigned = e.Unsigned.Clone()
	return c
}

func mustJSON(v any) jsontext.Value {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err) // only called with maps of plain values
	}
	return b
}

type room struct {
	id        string
	version   string
	state     map[StateKey]*event.Event
	timeline  []*event.Event
	published bool              // in the public room directory
	members   map[string]string // user id -> membership, mirrors member state
	aliases   map[string]bool   // local aliases pointing here
}

func newRoom(id, version string) *room {
	return &room{id: id, version: version, state: map[StateKey]*event.Event{}, members: map[string]string{}, aliases: map[string]bool{}}
}

func (r *room) stateEvent(typ, key string) *event.Event { return r.state[StateKey{typ, key}] }

func (r *room) stateContent(typ, key string) map[string]any {
	if e := r.stateEvent(typ, key); e != nil {
		return contentMap(e)
	}
	return nil
}

func (r *room) membership(userID string) string {
	if m, ok := r.members[userID]; ok {
		return m
	}
	return "leave"
}

// memberContent is a copy of the user's current member content.
func (r *room) memberContent(userID string) map[string]any {
	c := r.stateContent("m.room.member", userID)
	if c == nil {
		c = map[string]any{}
	}
	return c
}

func (r *room) joinedMembers() []string {
	out := []string{}
	for uid, m := range r.members {
		if m == "join" {
			out = append(out, uid)
		}
	}
	slices.Sort(out)
	return out
}

func (r *room) joinRule() string {
	if c := r.stateContent("m.room.join_rules", ""); c != nil {
		if j, ok := c["join_rule"].(string); ok {
			return j
		}
	}
	return "invite"
}

func (r *room) creator() string {
	if e := r.stateEvent("m.room.create", ""); e != nil {
		if c, ok := contentMap(e)["creator"].(string); ok && versionOf(r.version).creatorInContent() {
			return c
		}
		return e.Sender
	}
	return ""
}

// creators are the users with infinite power in a room of version 12 or
// later: the create event's sender, then content.additional_creators.
// Earlier versions have none.
func (r *room) creators() []string {
	e := r.stateEvent("m.room.create", "")
	if e == nil || !versionOf(r.version).privilegedCreators() {
		return nil
	}
	out := []string{e.Sender}
	if extra, ok := contentMap(e)["additional_creators"].([]any); ok {
		for _, x := range extra {
			if u, ok := x.(string); ok && !slices.Contains(out, u) {
				out = append(out, u)
			}
		}
	}
	return out
}

// auth is what the authorization rules need from the room.
func (r *room) auth() roomAuth {
	return roomAuth{creator: r.creator(), creators: r.creators(), stringLevels: versionOf(r.version).stringLevels()}
}

// scratch copies r's state, for checking a batch of events against the
// state each of them would see before any is stored.
func (r *room) scratch() *room {
	c := newRoom(r.id, r.version)
	maps.Copy(c.state, r.state)
	maps.Copy(c.members, r.members)
	return c
}

// setScratchState records an event in a scratch copy only.
func (r *room) setScratchState(sender, typ, key string, content map[string]any) {
	k := key
	r.state[StateKey{typ, key}] = &event.Event{RoomID: r.id, Sender: sender, Type: typ, StateKey: &k, Content: mustJSON(content)}
	if typ == "m.room.member" {
		m, _ := content["membership"].(string)
		r.members[key] = m
	}
}

// appendEventLocked stores an already authorized event, updates state and
// hands it to the notifier for appservice delivery.
func (s *Server) appendEventLocked(r *room, sender, typ string, stateKey *string, content jsontext.Value) *event.Event {
	ev := s.newEventLocked(r, sender, typ, stateKey, content)
	s.storeEventLocked(r, ev)
	return ev
}

// appendEventIDLocked is appendEventLocked with a chosen event id: a room
// of version 12 is named after its create event.
func (s *Server) appendEventIDLocked(r *room, eventID, sender, typ string, stateKey *string, content jsontext.Value) *event.Event {
	ev := s.newEventLocked(r, sender, typ, stateKey, content)
	ev.EventID = eventID
	s.storeEventLocked(r, ev)
	return ev
}

// newEventLocked makes an event of r, stamped now, without storing it.
func (s *Server) newEventLocked(r *room, sender, typ string, stateKey *string, content jsontext.Value) *event.Event {
	ev := &event.Event{
		EventID:        s.newEventID(),
		RoomID:         r.id,
		Sender:         sender,
		Type:           typ,
		Content:        content,
		OriginServerTS: time.Now().UnixMilli(),
	}
	if stateKey != nil {
		k := *stateKey
		ev.StateKey = &k
	}
	return ev
}

// storeEventLocked adds an authorized event to r: its unsigned data, the
// room's state, the timeline, and the notifier's queue.
func (s *Server) storeEventLocked(r *room, ev *event.Event) {
	if ev.StateKey != nil {
		k := StateKey{ev.Type, *ev.StateKey}
		if prev := r.state[k]; prev != nil {
			ev.Unsigned = mustJSON(map[string]any{
				"replaces_state": prev.EventID,
				"prev_content":   json.RawMessage(prev.Content),
				"prev_sender":    prev.Sender,
			})
		}
		if ev.Type == "m.room.member" {
			m, _ := contentMap(ev)["membership"].(string)
			r.members[k.StateKey] = m
			// The stripped state of a local invite; an invite from a
			// remote server carries what that server gives.
			if m == "invite" && strings.HasSuffix(ev.Sender, ":"+s.opts.ServerName) {
				setUnsigned(ev, "invite_room_state", s.inviteRoomState(r, ev))
			}
		}
		r.state[k] = ev
	}
	r.timeline = append(r.timeline, ev)
	s.enqueueNotifyLocked(ev)
}

// Stripped state of an invite (unsigned.invite_room_state), as each server
// builds it. The spec recommends m.room.create, join rules, canonical
// alias, avatar, name and encryption, and requires m.room.create from room
// version 12 (MSC4311).
//
//   - Synapse: its room_prejoin_state default list (join rules, canonical
//     alias, avatar, encryption, name, create, topic) plus the inviter's
//     own m.room.member; in a v12 room the create event comes as the full
//     PDU (strip_event), here without hashes and signatures, which the
//     simulator does not compute.
//   - Dendrite: the invite itself, then name, canonical alias, join rules,
//     avatar, encryption and create, then the invite again; no topic and no
//     inviter member.
//   - continuwuity: create, join rules, canonical alias, name, avatar, the
//     inviter's member, encryption, topic, then the invite itself.
//
// Only the types set in the room are included.
var inviteStateTypes = map[Mode][]string{
	Synapse:  {"m.room.join_rules", "m.room.canonical_alias", "m.room.avatar", "m.room.encryption", "m.room.name", "m.room.create", "m.room.topic", inviterMember},
	Dendrite: {inviteItself, "m.room.name", "m.room.canonical_alias", "m.room.join_rules", "m.room.avatar", "m.room.encryption", "m.room.create", inviteItself},
	Conduit:  {"m.room.create", "m.room.join_rules", "m.room.canonical_alias", "m.room.name", "m.room.avatar", inviterMember, "m.room.encryption", "m.room.topic", inviteItself},
}

// Placeholders in inviteStateTypes for the member events.
const (
	inviterMember = "inviter's m.room.member"
	inviteItself  = "the invite"
)

// inviteRoomState is the stripped state the simulated server attaches to
// invite, a local invite about to be stored in r.
func (s *Server) inviteRoomState(r *room, invite *event.Event) []any {
	strip := func(e *event.Event) map[string]any {
		return map[string]any{"type": e.Type, "state_key": *e.StateKey, "content": json.RawMessage(e.Content), "sender": e.Sender}
	}
	var out []any
	for _, typ := range inviteStateTypes[s.opts.Mode] {
		var e *event.Event
		switch typ {
		case inviteItself:
			out = append(out, strip(invite))
			continue
		case inviterMember:
			e = r.stateEvent("m.room.member", invite.Sender)
		default:
			e = r.stateEvent(typ, "")
		}
		if e == nil {
			continue
		}
		st := strip(e)
		if s.opts.Mode == Synapse && typ == "m.room.create" && versionOf(r.version).hashRoomIDs() {
			st["origin_server_ts"] = e.OriginServerTS
			st["depth"] = 1
			st["auth_events"] = []string{}
			st["prev_events"] = []string{}
			st["unsigned"] = map[string]any{}
		}
		out = append(out, st)
	}
	return out
}

func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }

// pduOverhead stands for what a real PDU carries and the simulator does not
// compute (auth_events, prev_events, depth, hashes, signatures): a few
// hundred bytes on a real server, so events near the limit are refused
// here no later than there.
const pduOverhead = 512

// checkEventSize is Synapse's EventValidator on a new local event: the
// event over 65536 bytes as canonical JSON, or a type or state key over 255
// bytes, is refused with 413 M_TOO_LARGE (Dendrite and continuwuity refuse
// them too).
func checkEventSize(ev *event.Event) *matrixError {
	if len(ev.Type) > 255 {
		return errf(http.StatusRequestEntityTooLarge, "M_TOO_LARGE", "'type' too large")
	}
	if ev.StateKey != nil && len(*ev.StateKey) > 255 {
		return errf(http.StatusRequestEntityTooLarge, "M_TOO_LARGE", "'state_key' too large")
	}
	pdu := *ev
	pdu.EventID = "" // no event_id in a PDU from room version 3
	raw, err := json.Marshal(&pdu)
	if err != nil {
		return errBadJSON("event: %v", err)
	}
	if len(canonical(raw))+pduOverhead > maxPDUSize {
		return errf(http.StatusRequestEntityTooLarge, "M_TOO_LARGE", "event too large")
	}
	return nil
}
