package gateway

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"unicode/utf8"
)

// The transaction decoder is the hot path of the gateway: a single pass over
// the body that validates it as JSON (as strictly as encoding/json) and
// splits the events array into the original bytes of each event, picking up
// only the few top-level fields that routing needs. encoding/json would scan
// the body once for []json.RawMessage and again per event; this does it
// once. FuzzDecodeTransaction checks it against encoding/json.

// maxDepth is encoding/json's nesting limit; deeper input is not JSON to it.
const maxDepth = 10000

// errNotJSON and errBadJSON tell the handler which Matrix error to answer.
var (
	errNotJSON = errors.New("body is not valid JSON")
	errBadJSON = errors.New("body is not a transaction")
)

// rawEvent is one element of a transaction's events array.
type rawEvent struct {
	// Raw is the element exactly as received; it is what gets published.
	// It aliases the request body.
	Raw []byte
	// Problem says why the element cannot go to the event stream; "" if
	// it can. Such an element goes to the dead-letter stream instead.
	Problem string

	EventID string
	Type    string // common types are interned
	// RoomID, Sender and StateKey are decoded values; they alias the body
	// unless the JSON string held escapes. Routing looks room ids up in a
	// cache without making a string of them.
	RoomID      []byte
	Sender      []byte
	StateKey    []byte
	HasStateKey bool
	// Content aliases the body; nil when absent.
	Content []byte
}

// field kinds, as the first byte of a value tells them.
type kind uint8

const (
	kindNone kind = iota
	kindString
	kindNumber
	kindObject
	kindArray
	kindBool
	kindNull
)

func (k kind) String() string {
	switch k {
	case kindString:
		return "a string"
	case kindNumber:
		return "a number"
	case kindObject:
		return "an object"
	case kindArray:
		return "an array"
	case kindBool:
		return "a boolean"
	case kindNull:
		return "null"
	}
	return "absent"
}

// span is a value's position in the body.
type span struct {
	start, end int
	kind       kind
}

// decoder walks one body. Positions are byte offsets into b.
type decoder struct {
	b     []byte
	depth int
}

// syntaxError carries the offset for the error message.
type syntaxError struct {
	off int
	msg string
}

func (e *syntaxError) Error() string { return fmt.Sprintf("offset %d: %s", e.off, e.msg) }

// decodeTransaction decodes body into events (reusing its storage). It
// returns an error wrapping errNotJSON if body is not JSON, or errBadJSON if
// it is JSON but not an object with an "events" array. Malformed events are
// returned with Problem set, not as an error: they must not fail the
// transaction.
func decodeTransaction(body []byte, events []rawEvent) ([]rawEvent, error) {
	d := decoder{b: body}
	i := d.ws(0)
	if i < len(body) && body[i] == '{' {
		f := members{out: events[:0]}
		i, err := d.object(i, modeTransaction, &f)
		if err != nil {
			return f.out[:0], fmt.Errorf("%w: %w", errNotJSON, err)
		}
		if i = d.ws(i); i != len(body) {
			return f.out[:0], fmt.Errorf("%w: %w", errNotJSON, &syntaxError{i, "data after the top-level value"})
		}
		switch f.events {
		case kindArray:
			return f.out, nil
		case kindNone:
			return f.out[:0], fmt.Errorf(`%w: no "events" key`, errBadJSON)
		default:
			return f.out[:0], fmt.Errorf(`%w: "events" is %s, not an array`, errBadJSON, f.events)
		}
	}
	// Not an object: still tell apart "not JSON" from "not a transaction".
	v, err := d.value(i)
	if err == nil {
		if i = d.ws(v.end); i != len(body) {
			err = &syntaxError{i, "data after the top-level value"}
		}
	}
	if err != nil {
		return events[:0], fmt.Errorf("%w: %w", errNotJSON, err)
	}
	return events[:0], fmt.Errorf("%w: the body is %s, not an object", errBadJSON, v.kind)
}

// objectMode says what object does with the members it validates.
type objectMode uint8

const (
	modeSkip        objectMode = iota // validate only
	modeTransaction                   // the body: decode "events"
	modeEvent                         // an event: note the routing fields
)

// members collects what object finds. Later duplicate keys win, as in
// encoding/json.
type members struct {
	// modeTransaction
	events kind
	out    []rawEvent
	// modeEvent
	eventID, typ, roomID, sender, stateKey, content, ts, redacts span
}

// eventArray validates the events array starting at b[i] == '[' and
// appends its elements to out.
func (d *decoder) eventArray(i int, out []rawEvent) (int, []rawEvent, error) {
	if err := d.push(i); err != nil {
		return 0, out, err
	}
	b := d.b
	i = d.ws(i + 1)
	if i < len(b) && b[i] == ']' {
		d.depth--
		return i + 1, out, nil
	}
	for {
		var (
			e   rawEvent
			end int
			err error
		)
		if i < len(b) && b[i] == '{' {
			var f members
			if end, err = d.object(i, modeEvent, &f); err != nil {
				return 0, out, err
			}
			e = d.event(b[i:end:end], &f)
		} else {
			v, err := d.value(i)
			if err != nil {
				return 0, out, err
			}
			end = v.end
			e = rawEvent{Raw: b[i:end:end], Problem: "the event is " + v.kind.String() + ", not an object"}
		}
		out = append(out, e)
		i = d.ws(end)
		if i >= len(b) {
			return 0, out, d.errAt(i, "',' or ']'")
		}
		switch b[i] {
		case ',':
			i = d.ws(i + 1)
		case ']':
			d.depth--
			return i + 1, out, nil
		default:
			return 0, out, d.errAt(i, "',' or ']'")
		}
	}
}

// event builds an event from its validated bytes and routing fields.
func (d *decoder) event(raw []byte, f *members) rawEvent {
	e := rawEvent{Raw: raw}
	// Every field must have the type consumers decoding event.Event
	// expect, or the event would fail in every consumer instead of once
	// here.
	ok := func(name string, s span, required bool) bool {
		switch s.kind {
		case kindString:
			if !required || s.end-s.start > 2 {
				return true
			}
			e.Problem = "empty " + name
		case kindNone, kindNull:
			if !required {
				return true
			}
			e.Problem = "no " + name
		default:
			e.Problem = name + " is " + s.kind.String() + ", not a string"
		}
		return false
	}
	if !ok("event_id", f.eventID, true) || !ok("type", f.typ, true) || !ok("room_id", f.roomID, true) ||
		!ok("sender", f.sender, false) || !ok("state_key", f.stateKey, false) || !ok("redacts", f.redacts, false) {
		// Keep what is known for the operator's log.
		if f.eventID.kind == kindString {
			e.EventID = d.str(f.eventID)
		}
		if f.typ.kind == kindString {
			e.Type = d.str(f.typ)
		}
		if f.roomID.kind == kindString {
			e.RoomID = d.bytes(f.roomID)
		}
		return e
	}
	e.EventID = d.str(f.eventID)
	e.Type = internType(d.bytes(f.typ))
	e.RoomID = d.bytes(f.roomID)
	if f.sender.kind == kindString {
		e.Sender = d.bytes(f.sender)
	}
	if f.stateKey.kind == kindString {
		e.StateKey = d.bytes(f.stateKey)
	}
	e.HasStateKey = f.stateKey.kind == kindString
	if f.content.kind != kindNone {
		e.Content = d.b[f.content.start:f.content.end:f.content.end]
	}
	switch f.ts.kind {
	case kindNone, kindNull:
	case kindNumber:
		if !fitsInt64(d.b[f.ts.start:f.ts.end]) {
			e.Problem = "origin_server_ts is not a 64-bit integer"
		}
	default:
		e.Problem = "origin_server_ts is " + f.ts.kind.String() + ", not a number"
	}
	return e
}

// fitsInt64 reports whether a valid JSON number decodes into an int64, as
// strconv.ParseInt would have it.
func fitsInt64(b []byte) bool {
	limit := "9223372036854775807"
	if b[0] == '-' {
		b, limit = b[1:], "9223372036854775808"
	}
	for _, c := range b {
		if !isDigit(c) {
			return false // fraction or exponent
		}
	}
	return len(b) < len(limit) || len(b) == len(limit) && string(b) <= limit
}

// keyIs compares an object key (the bytes between its quotes) with name.
func keyIs(key []byte, escaped bool, name string) bool {
	if !escaped {
		return string(key) == name
	}
	var s string
	if json.Unmarshal(append(append([]byte{'"'}, key...), '"'), &s) != nil {
		return false
	}
	return s == name
}

// str returns the value of a validated string span, decoded like
// encoding/json does (escapes resolved, invalid UTF-8 replaced).
func (d *decoder) str(s span) string {
	return string(d.bytes(s))
}

// bytes is str without the copy when the JSON string is plain: the result
// then aliases the body.
func (d *decoder) bytes(s span) []byte {
	raw := d.b[s.start+1 : s.end-1 : s.end-1]
	for _, c := range raw {
		if c == '\\' || c >= utf8.RuneSelf {
			var out string
			if err := json.Unmarshal(d.b[s.start:s.end], &out); err != nil {
				panic(fmt.Sprintf("gateway: decoding a valid string: %v", err))
			}
			return []byte(out)
		}
	}
	return raw
}

// internType returns the event types we see most without allocating.
func internType(b []byte) string {
	switch string(b) {
	case "m.room.message":
		return "m.room.message"
	case "m.room.member":
		return "m.room.member"
	case "m.reaction":
		return "m.reaction"
	case "m.room.redaction":
		return "m.room.redaction"
	case "m.room.power_levels":
		return "m.room.power_levels"
	case "m.room.canonical_alias":
		return "m.room.canonical_alias"
	case "m.room.create":
		return "m.room.create"
	case "m.room.join_rules":
		return "m.room.join_rules"
	case "m.room.history_visibility":
		return "m.room.history_visibility"
	case "m.room.guest_access":
		return "m.room.guest_access"
	case "m.room.name":
		return "m.room.name"
	case "m.room.topic":
		return "m.room.topic"
	}
	return string(b)
}

// ws skips whitespace.
func (d *decoder) ws(i int) int {
	for i < len(d.b) {
		switch d.b[i] {
		case ' ', '\t', '\n', '\r':
			i++
		default:
			return i
		}
	}
	return i
}

func (d *decoder) errAt(i int, what string) error {
	if i >= len(d.b) {
		return &syntaxError{i, "unexpected end of input, expected " + what}
	}
	return &syntaxError{i, fmt.Sprintf("unexpected %q, expected %s", d.b[i], what)}
}

// value validates the value starting at b[i] (no leading whitespace).
func (d *decoder) value(i int) (span, error) {
	if i >= len(d.b) {
		return span{}, d.errAt(i, "a value")
	}
	switch c := d.b[i]; {
	case c == '"':
		end, _, err := d.string(i)
		return span{i, end, kindString}, err
	case c == '{':
		end, err := d.object(i, modeSkip, nil)
		return span{i, end, kindObject}, err
	case c == '[':
		end, err := d.array(i)
		return span{i, end, kindArray}, err
	case c == '-' || c >= '0' && c <= '9':
		end, err := d.number(i)
		return span{i, end, kindNumber}, err
	case c == 't':
		end, err := d.literal(i, "true")
		return span{i, end, kindBool}, err
	case c == 'f':
		end, err := d.literal(i, "false")
		return span{i, end, kindBool}, err
	case c == 'n':
		end, err := d.literal(i, "null")
		return span{i, end, kindNull}, err
	}
	return span{}, d.errAt(i, "a value")
}

func (d *decoder) literal(i int, lit string) (int, error) {
	if len(d.b)-i < len(lit) || string(d.b[i:i+len(lit)]) != lit {
		for j := 0; j < len(lit); j++ {
			if i+j >= len(d.b) || d.b[i+j] != lit[j] {
				return 0, d.errAt(i+j, "literal "+lit)
			}
		}
	}
	return i + len(lit), nil
}

// stringStop marks the bytes that end the fast scan inside a string.
var stringStop = func() (t [256]bool) {
	for c := 0; c < 0x20; c++ {
		t[c] = true
	}
	t['"'], t['\\'] = true, true
	return t
}()

// string validates the string starting at b[i] == '"'. It returns the
// offset after the closing quote and whether the string holds escapes.
func (d *decoder) string(i int) (int, bool, error) {
	b := d.b
	escaped := false
	i++
	for {
		// Eight bytes at a time while none of them ends the fast scan:
		// strings are most of a transaction's bytes.
		for i+8 <= len(b) && !hasStringStop(binary.LittleEndian.Uint64(b[i:])) {
			i += 8
		}
		for i < len(b) && !stringStop[b[i]] {
			i++
		}
		if i >= len(b) {
			return 0, false, d.errAt(i, "closing quote")
		}
		switch c := b[i]; c {
		case '"':
			return i + 1, escaped, nil
		case '\\':
			escaped = true
			if i+1 >= len(b) {
				return 0, false, d.errAt(i+1, "escape character")
			}
			switch b[i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i += 2
			case 'u':
				for j := i + 2; j < i+6; j++ {
					if j >= len(b) || !isHex(b[j]) {
						return 0, false, d.errAt(j, "hexadecimal digit")
					}
				}
				i += 6
			default:
				return 0, false, d.errAt(i+1, "escape character")
			}
		default:
			return 0, false, &syntaxError{i, fmt.Sprintf("control character %q in string", c)}
		}
	}
}

// hasStringStop reports whether any byte of x is '"', '\\' or below 0x20,
// with the usual bit tricks: a byte of v is zero iff its bit 7 is set in
// (v - 0x01..) &^ v, and below n iff set in (v - n..) &^ v.
func hasStringStop(x uint64) bool {
	const (
		ones  = 0x0101010101010101
		highs = 0x8080808080808080
	)
	quote := x ^ (ones * '"')
	backslash := x ^ (ones * '\\')
	return ((quote-ones)&^quote|(backslash-ones)&^backslash|(x-ones*0x20)&^x)&highs != 0
}

func isHex(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

// number validates an RFC 8259 number.
func (d *decoder) number(i int) (int, error) {
	b := d.b
	if b[i] == '-' {
		i++
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case i < len(b) && b[i] >= '1' && b[i] <= '9':
		for i++; i < len(b) && isDigit(b[i]); i++ {
		}
	default:
		return 0, d.errAt(i, "digit")
	}
	if i < len(b) && b[i] == '.' {
		i++
		if i >= len(b) || !isDigit(b[i]) {
			return 0, d.errAt(i, "digit after decimal point")
		}
		for ; i < len(b) && isDigit(b[i]); i++ {
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if i >= len(b) || !isDigit(b[i]) {
			return 0, d.errAt(i, "digit in exponent")
		}
		for ; i < len(b) && isDigit(b[i]); i++ {
		}
	}
	return i, nil
}

func (d *decoder) push(i int) error {
	d.depth++
	if d.depth > maxDepth {
		return &syntaxError{i, "nesting deeper than 10000"}
	}
	return nil
}

// object validates the object starting at b[i] == '{'. In modeTransaction
// and modeEvent it fills f.
func (d *decoder) object(i int, mode objectMode, f *members) (int, error) {
	if err := d.push(i); err != nil {
		return 0, err
	}
	b := d.b
	i = d.ws(i + 1)
	if i < len(b) && b[i] == '}' {
		d.depth--
		return i + 1, nil
	}
	for {
		if i >= len(b) || b[i] != '"' {
			return 0, d.errAt(i, "string key")
		}
		kend, kesc, err := d.string(i)
		if err != nil {
			return 0, err
		}
		key := b[i+1 : kend-1]
		i = d.ws(kend)
		if i >= len(b) || b[i] != ':' {
			return 0, d.errAt(i, "':' after object key")
		}
		i = d.ws(i + 1)
		var v span
		switch {
		case mode == modeTransaction && keyIs(key, kesc, "events") && i < len(b) && b[i] == '[':
			var end int
			if end, f.out, err = d.eventArray(i, f.out[:0]); err != nil {
				return 0, err
			}
			v = span{i, end, kindArray}
			f.events = kindArray
		default:
			if v, err = d.value(i); err != nil {
				return 0, err
			}
			switch mode {
			case modeTransaction:
				if keyIs(key, kesc, "events") {
					f.events = v.kind
				}
			case modeEvent:
				f.note(key, kesc, v)
			}
		}
		i = d.ws(v.end)
		if i >= len(b) {
			return 0, d.errAt(i, "',' or '}'")
		}
		switch b[i] {
		case ',':
			i = d.ws(i + 1)
		case '}':
			d.depth--
			return i + 1, nil
		default:
			return 0, d.errAt(i, "',' or '}'")
		}
	}
}

// note records a routing field of an event.
func (f *members) note(key []byte, esc bool, v span) {
	if len(key) > len("origin_server_ts") && !esc {
		return
	}
	switch {
	case keyIs(key, esc, "event_id"):
		f.eventID = v
	case keyIs(key, esc, "type"):
		f.typ = v
	case keyIs(key, esc, "room_id"):
		f.roomID = v
	case keyIs(key, esc, "sender"):
		f.sender = v
	case keyIs(key, esc, "state_key"):
		f.stateKey = v
	case keyIs(key, esc, "content"):
		f.content = v
	case keyIs(key, esc, "origin_server_ts"):
		f.ts = v
	case keyIs(key, esc, "redacts"):
		f.redacts = v
	}
}

// array validates the array starting at b[i] == '['.
func (d *decoder) array(i int) (int, error) {
	if err := d.push(i); err != nil {
		return 0, err
	}
	b := d.b
	i = d.ws(i + 1)
	if i < len(b) && b[i] == ']' {
		d.depth--
		return i + 1, nil
	}
	for {
		v, err := d.value(i)
		if err != nil {
			return 0, err
		}
		i = d.ws(v.end)
		if i >= len(b) {
			return 0, d.errAt(i, "',' or ']'")
		}
		switch b[i] {
		case ',':
			i = d.ws(i + 1)
		case ']':
			d.depth--
			return i + 1, nil
		default:
			return 0, d.errAt(i, "',' or ']'")
		}
	}
}
