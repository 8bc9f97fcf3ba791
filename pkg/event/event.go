// Package event holds the Matrix client-format event, the one type every
// part of the system reads events into, and the one reading of an event's
// JSON that every part shares.
//
// # One reading of every event
//
// The gateway checks and routes an event; the workers act on it. If the two
// could read different values from the same bytes, a remote server could
// have the gateway check one sender and a worker act for another: JSON
// leaves room for that. encoding/json matches keys case-insensitively with
// Unicode folding ("ſender" and "Sender" both fill Sender), lets the last of
// duplicate keys win, and replaces invalid UTF-8 and lone surrogates with
// U+FFFD (so "$x_\ud800" and "$x_\udfff" become the same event id). A fast
// decoder that takes the first key, or the exact key, disagrees with it.
//
// So there is exactly one reading, and everything that could be read in two
// ways is refused:
//
//   - Decode (and DecodeContent for contents) read with the strict semantics
//     of github.com/go-json-experiment/json, the proposed encoding/json/v2:
//     exact-case keys, duplicate keys refused at any depth, strict UTF-8 and
//     surrogate pairs, JSON types checked (origin_server_ts an integer,
//     state_key a string, ...). No consumer decodes a Matrix event or its
//     content any other way.
//   - Decode also refuses a top-level key that folds onto a field of Event
//     without being it ("Sender", "ſender"): a strict reader ignores it, but
//     any lenient reader (an operator's script, a future consumer) would
//     take it for the field, and no homeserver sends such a key.
//   - Validate holds the fields to the spec's grammar (ids of printable
//     ASCII, at most 255 bytes, with their sigil; type and state_key at most
//     255 bytes), so that what goes into NATS subjects and headers is bounded
//     and means the same to everyone.
//
// The gateway keeps a single-pass decoder of its own for speed, but accepts
// an event only if it read every field exactly as Decode does, and then
// runs the same Validate and bus.Classify on what it read; its fuzz test
// checks this against Decode on arbitrary input. Everything else it
// dead-letters with the reason, so consumers never see an event the gateway
// read differently, and nothing the gateway acknowledges is lost.
package event

import (
	"bytes"
	"errors"
	"fmt"
	"unicode/utf8"

	"github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"

	"github.com/cactus-comments/appservice/pkg/mxid"
)

// Event is a client-format room event. Content and Unsigned stay raw: each
// consumer decodes only what it needs, with DecodeContent.
type Event struct {
	EventID        string         `json:"event_id"`
	Type           string         `json:"type"`
	RoomID         string         `json:"room_id"`
	Sender         string         `json:"sender"`
	StateKey       *string        `json:"state_key,omitempty"`
	Content        jsontext.Value `json:"content"`
	OriginServerTS int64          `json:"origin_server_ts,omitempty"`
	Unsigned       jsontext.Value `json:"unsigned,omitempty"`
	Redacts        string         `json:"redacts,omitempty"`
}

// Fields are the top-level keys Event reads. A key that folds onto one of
// them without being it is refused.
var Fields = []string{"event_id", "type", "room_id", "sender", "state_key", "content", "origin_server_ts", "unsigned", "redacts"}

// MaxTypeLength and MaxStateKeyLength are the spec's size limits of the
// type and state_key of an event, in bytes.
const (
	MaxTypeLength     = 255
	MaxStateKeyLength = 255
)

// ErrMalformed is wrapped by the errors of Decode and Validate.
var ErrMalformed = errors.New("malformed event")

// Decode reads one event with the strict semantics described in the
// package documentation and validates it. Its errors wrap ErrMalformed and
// say what is wrong.
func Decode(data []byte) (*Event, error) {
	var e Event
	if err := json.Unmarshal(data, &e); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	if err := checkKeys(data); err != nil {
		return nil, err
	}
	if err := e.Validate(); err != nil {
		return nil, err
	}
	return &e, nil
}

// checkKeys refuses top-level keys that fold onto a field of Event. data is
// known to be a valid JSON object.
func checkKeys(data []byte) error {
	d := jsontext.NewDecoder(bytes.NewReader(data))
	if _, err := d.ReadToken(); err != nil {
		return fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	for d.PeekKind() == '"' {
		name, err := d.ReadToken()
		if err != nil {
			return fmt.Errorf("%w: %w", ErrMalformed, err)
		}
		if f := FoldedField(name.String()); f != "" {
			return fmt.Errorf("%w: key %q is a variant of %q", ErrMalformed, Truncate(name.String(), 64), f)
		}
		if err := d.SkipValue(); err != nil {
			return fmt.Errorf("%w: %w", ErrMalformed, err)
		}
	}
	return nil
}

// FoldedField returns the field of Event that key folds onto (as
// encoding/json matches keys: bytes.EqualFold) without being it, or "".
func FoldedField[S ~string | ~[]byte](key S) string {
	// A folded letter is at most 3 bytes long (K, U+212A, folds onto k).
	if len(key) < len("type") || len(key) > 3*len("origin_server_ts") {
		return ""
	}
	for _, f := range Fields {
		if string(key) != f && bytes.EqualFold([]byte(key), []byte(f)) {
			return f
		}
	}
	return ""
}

// DecodeContent reads an event's content (or any JSON from Matrix) into v
// with the same strict semantics as Decode.
func DecodeContent(data []byte, v any) error {
	return json.Unmarshal(data, v)
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
	NewContent jsontext.Value `json:"m.new_content,omitempty"`
}

// Unsigned is the part of unsigned data we read.
type Unsigned struct {
	PrevContent     jsontext.Value   `json:"prev_content,omitempty"`
	InviteRoomState []jsontext.Value `json:"invite_room_state,omitempty"`
}

// Membership returns the membership in an m.room.member event's content,
// "" for other events or a membership that is missing or no string (see
// MembershipField).
func (e *Event) Membership() string {
	m, _ := e.MembershipField()
	return m
}

// MembershipField returns content.membership read on its own, and false
// if it is absent or no string (or the event is no member event). It is
// all the homeserver's auth rules read: a ban whose reason is no string
// is still a ban.
func (e *Event) MembershipField() (string, bool) {
	var m struct {
		Membership *string `json:"membership"`
	}
	if e.Type != "m.room.member" || DecodeContent(e.Content, &m) != nil || m.Membership == nil {
		return "", false
	}
	return *m.Membership, true
}

// PrevMembership returns unsigned.prev_content.membership, "" if absent or
// unreadable.
func (e *Event) PrevMembership() string {
	if len(e.Unsigned) == 0 {
		return ""
	}
	var u Unsigned
	if DecodeContent(e.Unsigned, &u) != nil || len(u.PrevContent) == 0 {
		return ""
	}
	var m Member
	if DecodeContent(u.PrevContent, &m) != nil {
		return ""
	}
	return m.Membership
}

// Validate checks the fields every consumer relies on against the spec's
// grammar. Its errors wrap ErrMalformed and name the field.
func (e *Event) Validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", ErrMalformed, fmt.Sprintf(format, args...))
	}
	if e.EventID == "" {
		return bad("no event_id")
	}
	if why := idProblem(e.EventID, '$'); why != "" {
		return bad("event_id %q: %s", Truncate(e.EventID, 64), why)
	}
	if _, err := mxid.ParseEventID(e.EventID); err != nil {
		return bad("event_id: %v", err)
	}
	if e.Type == "" {
		return bad("no type")
	}
	if len(e.Type) > MaxTypeLength {
		return bad("type of %d bytes is longer than %d", len(e.Type), MaxTypeLength)
	}
	for _, r := range e.Type {
		if r < 0x20 || r >= 0x7f && r < 0xa0 {
			return bad("type contains a control character")
		}
	}
	if e.RoomID == "" {
		return bad("no room_id")
	}
	if why := idProblem(e.RoomID, '!'); why != "" {
		return bad("room_id %q: %s", Truncate(e.RoomID, 64), why)
	}
	if _, err := mxid.ParseRoomID(e.RoomID); err != nil {
		return bad("room_id: %v", err)
	}
	if e.Sender == "" {
		return bad("no sender")
	}
	if _, err := mxid.ParseUserID(e.Sender); err != nil {
		return bad("sender: %v", err)
	}
	if e.StateKey != nil && len(*e.StateKey) > MaxStateKeyLength {
		return bad("state_key of %d bytes is longer than %d", len(*e.StateKey), MaxStateKeyLength)
	}
	if k := e.Content.Kind(); len(e.Content) == 0 {
		return bad("no content")
	} else if k != '{' {
		return bad("content is %s, not an object", kindName(k))
	}
	if k := e.Unsigned.Kind(); len(e.Unsigned) > 0 && k != '{' {
		return bad("unsigned is %s, not an object", kindName(k))
	}
	if e.Redacts != "" {
		if why := idProblem(e.Redacts, '$'); why != "" {
			return bad("redacts %q: %s", Truncate(e.Redacts, 64), why)
		}
	}
	return nil
}

// idProblem says why s is not an id with the given sigil, as the spec's
// grammar has them: printable ASCII, at most 255 bytes. "" if it is one.
func idProblem(s string, sigil byte) string {
	switch {
	case len(s) > mxid.MaxLength:
		return fmt.Sprintf("%d bytes, longer than %d", len(s), mxid.MaxLength)
	case len(s) < 2 || s[0] != sigil:
		return fmt.Sprintf("does not start with %q", sigil)
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x21 || c > 0x7e {
			return "has a character outside printable ASCII"
		}
	}
	return ""
}

// kindName names a JSON kind for error messages.
func kindName(k jsontext.Kind) string {
	switch k {
	case '"':
		return "a string"
	case '0':
		return "a number"
	case '[':
		return "an array"
	case 't', 'f':
		return "a boolean"
	case 'n':
		return "null"
	}
	return "not JSON"
}

// Truncate cuts s to at most n bytes (on a rune boundary) and says how
// long it was, for logs and error messages that quote ids a remote server
// chose.
func Truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	cut := n
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return fmt.Sprintf("%s…(%d bytes)", s[:cut], len(s))
}
