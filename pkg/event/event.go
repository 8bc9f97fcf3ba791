// Package event holds the Matrix client-format event as the homeserver pushes
// it to us, and the transaction that carries events.
package event

import (
	"encoding/json"
	"errors"
	"fmt"
)

// Event is a client-format room event. Content and Unsigned stay raw: each
// consumer decodes only what it needs.
type Event struct {
	EventID        string          `json:"event_id"`
	Type           string          `json:"type"`
	RoomID         string          `json:"room_id"`
	Sender         string          `json:"sender"`
	StateKey       *string         `json:"state_key,omitempty"`
	Content        json.RawMessage `json:"content"`
	OriginServerTS int64           `json:"origin_server_ts,omitempty"`
	Unsigned       json.RawMessage `json:"unsigned,omitempty"`
	Redacts        string          `json:"redacts,omitempty"`
}

// IsState reports whether the event is a state event.
func (e *Event) IsState() bool { return e.StateKey != nil }

// StateKeyIs reports whether the event is a state event with key k.
func (e *Event) StateKeyIs(k string) bool { return e.StateKey != nil && *e.StateKey == k }

// Member is the content of m.room.member.
type Member struct {
	Membership  string `json:"membership"`
	Reason      string `json:"reason,omitempty"`
	IsDirect    bool   `json:"is_direct,omitempty"`
	DisplayName string `json:"displayname,omitempty"`
}

// Message is the part of m.room.message content the bot reads.
type Message struct {
	MsgType   string `json:"msgtype"`
	Body      string `json:"body"`
	RelatesTo *struct {
		RelType string `json:"rel_type"`
	} `json:"m.relates_to,omitempty"`
	NewContent json.RawMessage `json:"m.new_content,omitempty"`
}

// Unsigned is the part of unsigned data we read.
type Unsigned struct {
	PrevContent     json.RawMessage   `json:"prev_content,omitempty"`
	InviteRoomState []json.RawMessage `json:"invite_room_state,omitempty"`
}

// Membership returns the membership in an m.room.member event's content.
func (e *Event) Membership() string {
	var m Member
	if e.Type != "m.room.member" || json.Unmarshal(e.Content, &m) != nil {
		return ""
	}
	return m.Membership
}

// PrevMembership returns unsigned.prev_content.membership, "" if absent.
func (e *Event) PrevMembership() string {
	if len(e.Unsigned) == 0 {
		return ""
	}
	var u Unsigned
	if json.Unmarshal(e.Unsigned, &u) != nil || len(u.PrevContent) == 0 {
		return ""
	}
	var m Member
	if json.Unmarshal(u.PrevContent, &m) != nil {
		return ""
	}
	return m.Membership
}

// ErrMalformed is wrapped by Validate's errors.
var ErrMalformed = errors.New("malformed event")

// Validate checks the fields every consumer relies on.
func (e *Event) Validate() error {
	switch {
	case e.EventID == "":
		return fmt.Errorf("%w: no event_id", ErrMalformed)
	case e.Type == "":
		return fmt.Errorf("%w: no type", ErrMalformed)
	case e.RoomID == "":
		return fmt.Errorf("%w: no room_id", ErrMalformed)
	}
	return nil
}

// Transaction is the body of PUT /_matrix/app/v1/transactions/{txnId}.
// Unknown keys (ephemeral, to-device, MSC keys) are ignored.
type Transaction struct {
	Events []json.RawMessage `json:"events"`
}
