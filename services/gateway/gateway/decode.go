package gateway

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/go-json-experiment/json/jsontext"

	"github.com/cactus-comments/appservice/pkg/bus"
	"github.com/cactus-comments/appservice/pkg/event"
)

// The transaction decoder is the hot path of the gateway: a single pass over
// the body that validates it as JSON and splits the events array into the
// original bytes of each event, picking up the top-level fields of each
// event. encoding/json would scan the body once for []json.RawMessage and
// again per event; this does it once.
//
// It must read every event exactly as the consumers' event.Decode does
// (see package event): an event that event.Decode would refuse, or read
// differently, is marked with a Problem and dead-lettered. So, inside
// events, it refuses duplicate keys at any depth, invalid UTF-8 and lone
// surrogates, top-level keys that fold onto an event field, and fields of
// the wrong JSON type. FuzzDecodeTransaction checks it against
// event.Decode.

// maxDepth is the nesting limit of the body. The consumers' decoder allows
// 10000 levels within an event; an event's own object is at depth 3 of the
// body (transaction, events array, event). A deeper event fails the whole
// body, but no homeserver can send one: their own parsers stop far sooner
// (Python's recursion limit, serde_json's 128 levels, encoding/json's
// 10000 from the event's root).
const maxDepth = 10000 + 2

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
	Redacts     string
	// Content and Unsigned alias the body; nil when absent.
	Content        []byte
	Unsigned       []byte
	OriginServerTS int64

	// class is set by checkEvent.
	class bus.Class
	// whole marks the whole body of a transaction that could not be read
	// as one (Raw is the body, Problem why).
	whole bool
}

// event returns e as the consumers read it, with roomID for its room id.
func (e *rawEvent) event(roomID string) event.Event {
	ev := event.Event{
		EventID: e.EventID, Type: e.Type, RoomID: roomID, Sender: string(e.Sender),
		Content: e.Content, Unsigned: e.Unsigned, OriginServerTS: e.OriginServerTS, Redacts: e.Redacts,
	}
	if e.HasStateKey {
		sk := string(e.StateKey)
		ev.StateKey = &sk
	}
	return ev
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

// keySpan is an object key: the bytes between its quotes, whether they
// hold escapes, and a digest of the decoded key that tells most different
// keys apart without comparing them.
type keySpan struct {
	start, end int
	escaped    bool
	digest     uint32
}

// decoder walks one body. Positions are byte offsets into b.
type decoder struct {
	b     []byte
	depth int
	// inEvent is set while the decoder is inside an element of the events
	// array; problem is then the first reason found why the consumers'
	// decoder would refuse or misread the element.
	inEvent bool
	problem string
	// keys holds the keys of the objects being decoded inside an event,
	// innermost last, to find duplicates.
	keys []keySpan
}

// flag records why the current event cannot be stored, keeping the first.
func (d *decoder) flag(why string) {
	if d.inEvent && d.problem == "" {
		d.problem = why
	}
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
//
// A body with more than one "events" key, or one and a key that differs
// from it only by case, escapes or Unicode folding, is ambiguous: which array it
// carries depends on the reader. Refusing it (400) would block delivery,
// as the homeserver resends the same body for ever; taking one array
// would drop the other's events after acknowledging them. So every event
// of every such array comes back with a Problem: all are dead-lettered,
// none is lost, and the transaction is acknowledged.
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
		switch {
		case f.eventsArrays > 0 && f.eventsKeys+f.variants > 1:
			why := fmt.Sprintf(`ambiguous transaction: %d "events" keys`, f.eventsKeys)
			if f.variants > 0 {
				why = fmt.Sprintf(`ambiguous transaction: %d "events" keys and %d variants of it (%q)`,
					f.eventsKeys, f.variants, event.Truncate(f.variant, 64))
			}
			for j := range f.out {
				f.out[j].Problem = why
			}
			return f.out, nil
		case f.eventsKeys == 0 && f.variants > 0:
			return f.out[:0], fmt.Errorf(`%w: no "events" key, only a variant of it (%q)`, errBadJSON, event.Truncate(f.variant, 64))
		case f.eventsArrays > 0:
			return f.out, nil
		case f.eventsKeys == 0:
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

// members collects what object finds.
type members struct {
	// modeTransaction
	events                   kind // of the last "events" value
	eventsKeys, eventsArrays int
	// variants counts the keys that differ from "events" only by case,
	// escapes or Unicode folding, as encoding/json would still take them;
	// variant is the first. Their arrays are decoded into out as well
	// (counted in eventsArrays), so that their events are dead-lettered.
	variants int
	variant  string
	out      []rawEvent
	// modeEvent
	eventID, typ, roomID, sender, stateKey, content, ts, redacts, unsigned span
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
			if e, end, err = d.eventObject(i); err != nil {
				return 0, out, err
			}
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

// eventObject decodes the event object starting at b[i] == '{'.
func (d *decoder) eventObject(i int) (rawEvent, int, error) {
	var f members
	d.inEvent, d.problem = true, ""
	end, err := d.object(i, modeEvent, &f)
	d.inEvent = false
	if err != nil {
		return rawEvent{}, 0, err
	}
	return d.event(d.b[i:end:end], &f), end, nil
}

// event builds an event from its validated bytes and top-level fields.
// Fields of the wrong JSON type are a Problem: the consumers' decoder
// refuses them. Ids, lengths and the kinds of content and unsigned are
// left to event.Validate, which the gateway runs as the consumers do.
func (d *decoder) event(raw []byte, f *members) rawEvent {
	e := rawEvent{Raw: raw, Problem: d.problem}
	// What is known is kept even for a malformed event, for the log.
	if f.eventID.kind == kindString {
		e.EventID = d.str(f.eventID)
	}
	if f.typ.kind == kindString {
		e.Type = internType(d.bytes(f.typ))
	}
	if f.roomID.kind == kindString {
		e.RoomID = d.bytes(f.roomID)
	}
	isString := func(name string, s span) bool {
		switch s.kind {
		case kindString, kindNone, kindNull:
			return true
		}
		if e.Problem == "" {
			e.Problem = name + " is " + s.kind.String() + ", not a string"
		}
		return false
	}
	if !isString("event_id", f.eventID) || !isString("type", f.typ) || !isString("room_id", f.roomID) ||
		!isString("sender", f.sender) || !isString("state_key", f.stateKey) || !isString("redacts", f.redacts) {
		return e
	}
	if f.sender.kind == kindString {
		e.Sender = d.bytes(f.sender)
	}
	if f.stateKey.kind == kindString {
		e.StateKey = d.bytes(f.stateKey)
		e.HasStateKey = true
	}
	if f.redacts.kind == kindString {
		e.Redacts = d.str(f.redacts)
	}
	if f.content.kind != kindNone {
		e.Content = d.b[f.content.start:f.content.end:f.content.end]
	}
	if f.unsigned.kind != kindNone {
		e.Unsigned = d.b[f.unsigned.start:f.unsigned.end:f.unsigned.end]
	}
	switch f.ts.kind {
	case kindNone, kindNull:
	case kindNumber:
		n, ok := parseInt64(d.b[f.ts.start:f.ts.end])
		if !ok && e.Problem == "" {
			e.Problem = "origin_server_ts is not a 64-bit integer"
		}
		e.OriginServerTS = n
	default:
		if e.Problem == "" {
			e.Problem = "origin_server_ts is " + f.ts.kind.String() + ", not an integer"
		}
	}
	return e
}

// parseInt64 reads a valid JSON number as an int64, as the consumers'
// decoder does: no fraction, no exponent, in range.
func parseInt64(b []byte) (int64, bool) {
	neg := b[0] == '-'
	if neg {
		b = b[1:]
	}
	// In magnitude, up to 2^63 for a negative number, 2^63-1 otherwise.
	limit := uint64(math.MaxInt64)
	if neg {
		limit++
	}
	var n uint64
	for _, c := range b {
		if !isDigit(c) {
			return 0, false // fraction or exponent
		}
		d := uint64(c - '0')
		if n > (limit-d)/10 {
			return 0, false
		}
		n = n*10 + d
	}
	if neg {
		return int64(-n), true // -2^63 wraps to itself
	}
	return int64(n), true
}

// unquote decodes a validated JSON string (quotes included) strictly; an
// invalid string has been flagged by the scan already.
func unquote(quoted []byte) []byte {
	out, _ := jsontext.AppendUnquote(nil, quoted)
	return out
}

// key returns an object key's decoded bytes.
func (d *decoder) key(k keySpan) []byte {
	if !k.escaped {
		return d.b[k.start:k.end:k.end]
	}
	return unquote(d.b[k.start-1 : k.end+1])
}

// keyIs compares an object key with name.
func (d *decoder) keyIs(k keySpan, name string) bool {
	if !k.escaped {
		return string(d.b[k.start:k.end]) == name
	}
	return string(d.key(k)) == name
}

// str returns the value of a validated string span, decoded strictly.
func (d *decoder) str(s span) string {
	return string(d.bytes(s))
}

// bytes is str without the copy when the JSON string is plain: the result
// then aliases the body.
func (d *decoder) bytes(s span) []byte {
	raw := d.b[s.start+1 : s.end-1 : s.end-1]
	for _, c := range raw {
		if c == '\\' {
			return unquote(d.b[s.start:s.end])
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

// stringStop marks the bytes that end the fast scan inside a string:
// quote, backslash, control characters, and the first byte of every
// non-ASCII character, whose UTF-8 must be checked.
var stringStop = func() (t [256]bool) {
	for c := 0; c < 0x20; c++ {
		t[c] = true
	}
	for c := 0x80; c < 0x100; c++ {
		t[c] = true
	}
	t['"'], t['\\'] = true, true
	return t
}()

// string validates the string starting at b[i] == '"'. It returns the
// offset after the closing quote and whether the string holds escapes.
// Invalid UTF-8 and lone surrogates are JSON to encoding/json but not to
// the consumers' decoder: inside an event they are flagged, not errors.
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
		switch c := b[i]; {
		case c == '"':
			return i + 1, escaped, nil
		case c == '\\':
			escaped = true
			if i+1 >= len(b) {
				return 0, false, d.errAt(i+1, "escape character")
			}
			switch b[i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i += 2
			case 'u':
				r, err := d.hex4(i + 2)
				if err != nil {
					return 0, false, err
				}
				i += 6
				if !utf16.IsSurrogate(r) {
					continue
				}
				// A high surrogate must be followed by a low one.
				if r < 0xdc00 && i+1 < len(b) && b[i] == '\\' && b[i+1] == 'u' {
					if r2, err := d.hex4(i + 2); err == nil && r2 >= 0xdc00 && r2 <= 0xdfff {
						i += 6
						continue
					}
				}
				d.flag(fmt.Sprintf(`lone surrogate \u%04x in a string`, r))
			default:
				return 0, false, d.errAt(i+1, "escape character")
			}
		case c >= utf8.RuneSelf:
			r, size := utf8.DecodeRune(b[i:])
			if r == utf8.RuneError && size <= 1 {
				d.flag("invalid UTF-8 in a string")
				size = 1
			}
			i += size
		default:
			return 0, false, &syntaxError{i, fmt.Sprintf("control character %q in string", c)}
		}
	}
}

// hex4 reads the four hexadecimal digits of a \u escape at b[i:].
func (d *decoder) hex4(i int) (rune, error) {
	var r rune
	for j := i; j < i+4; j++ {
		if j >= len(d.b) || !isHex(d.b[j]) {
			return 0, d.errAt(j, "hexadecimal digit")
		}
		c := d.b[j]
		switch {
		case c <= '9':
			c -= '0'
		case c >= 'a':
			c -= 'a' - 10
		default:
			c -= 'A' - 10
		}
		r = r<<4 | rune(c)
	}
	return r, nil
}

// hasStringStop reports whether any byte of x is '"', '\\', below 0x20 or
// above 0x7f, with the usual bit tricks: a byte of v is zero iff its bit 7
// is set in (v - 0x01..) &^ v, and below n iff set in (v - n..) &^ v.
func hasStringStop(x uint64) bool {
	const (
		ones  = 0x0101010101010101
		highs = 0x8080808080808080
	)
	quote := x ^ (ones * '"')
	backslash := x ^ (ones * '\\')
	return ((quote-ones)&^quote|(backslash-ones)&^backslash|(x-ones*0x20)&^x|x)&highs != 0
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
		return &syntaxError{i, "nesting deeper than the consumers allow"}
	}
	return nil
}

// object validates the object starting at b[i] == '{'. In modeTransaction
// and modeEvent it fills f. Inside an event it flags duplicate keys.
func (d *decoder) object(i int, mode objectMode, f *members) (int, error) {
	if err := d.push(i); err != nil {
		return 0, err
	}
	b := d.b
	base := len(d.keys)
	// seen replaces the linear search of d.keys in large objects.
	var seen map[string]struct{}
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
		key := keySpan{start: i + 1, end: kend - 1, escaped: kesc}
		if d.inEvent {
			seen = d.noteKey(base, key, seen)
		}
		i = d.ws(kend)
		if i >= len(b) || b[i] != ':' {
			return 0, d.errAt(i, "':' after object key")
		}
		i = d.ws(i + 1)
		var v span
		isEvents, isVariant := false, false
		if mode == modeTransaction {
			isEvents = d.keyIs(key, "events")
			if !isEvents {
				if name := d.key(key); bytes.EqualFold(name, []byte("events")) {
					isVariant = true
					f.variants++
					if f.variant == "" {
						f.variant = string(name)
					}
				}
			}
		}
		switch {
		case (isEvents || isVariant) && i < len(b) && b[i] == '[':
			var end int
			if end, f.out, err = d.eventArray(i, f.out); err != nil {
				return 0, err
			}
			v = span{i, end, kindArray}
			f.eventsArrays++
		default:
			if v, err = d.value(i); err != nil {
				return 0, err
			}
			if mode == modeEvent {
				f.note(d, key, v)
			}
		}
		if isEvents {
			f.eventsKeys++
			f.events = v.kind
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
			d.keys = d.keys[:base]
			return i + 1, nil
		default:
			return 0, d.errAt(i, "',' or '}'")
		}
	}
}

// maxLinearKeys is the number of keys up to which duplicates are found by
// comparing with every earlier key of the object.
const maxLinearKeys = 16

// noteKey flags k if the object whose keys start at d.keys[base] already
// has it, and records it. seen is the object's set of keys once it is
// large; noteKey returns it.
func (d *decoder) noteKey(base int, k keySpan, seen map[string]struct{}) map[string]struct{} {
	if seen != nil {
		name := string(d.key(k))
		if _, dup := seen[name]; dup {
			d.flagDuplicate(name)
		}
		seen[name] = struct{}{}
		return seen
	}
	k.digest = digest(d.key(k))
	for _, p := range d.keys[base:] {
		if p.digest == k.digest && d.sameKey(p, k) {
			d.flagDuplicate(string(d.key(k)))
			break
		}
	}
	d.keys = append(d.keys, k)
	if len(d.keys)-base > maxLinearKeys {
		seen = make(map[string]struct{}, 2*maxLinearKeys)
		for _, p := range d.keys[base:] {
			seen[string(d.key(p))] = struct{}{}
		}
	}
	return seen
}

func (d *decoder) flagDuplicate(name string) {
	d.flag(fmt.Sprintf("duplicate key %q", event.Truncate(name, 64)))
}

// digest sums up a decoded key: its length and three of its bytes.
func digest(k []byte) uint32 {
	if len(k) == 0 {
		return 0
	}
	return uint32(len(k))<<24 | uint32(k[0])<<16 | uint32(k[len(k)/2])<<8 | uint32(k[len(k)-1])
}

// sameKey reports whether two keys decode to the same name.
func (d *decoder) sameKey(a, b keySpan) bool {
	if !a.escaped && !b.escaped {
		return bytes.Equal(d.b[a.start:a.end], d.b[b.start:b.end])
	}
	return bytes.Equal(d.key(a), d.key(b))
}

// note records a top-level field of an event, and flags a key that folds
// onto a field without being it.
func (f *members) note(d *decoder, k keySpan, v span) {
	if !k.escaped && k.end-k.start > 3*len("origin_server_ts") {
		return
	}
	name := d.key(k)
	switch string(name) {
	case "event_id":
		f.eventID = v
	case "type":
		f.typ = v
	case "room_id":
		f.roomID = v
	case "sender":
		f.sender = v
	case "state_key":
		f.stateKey = v
	case "content":
		f.content = v
	case "origin_server_ts":
		f.ts = v
	case "redacts":
		f.redacts = v
	case "unsigned":
		f.unsigned = v
	default:
		// The fields are lower-case ASCII: only a key with an upper-case
		// or non-ASCII letter can fold onto one without being it.
		if mayFold(name) {
			if field := event.FoldedField(name); field != "" {
				d.flag(fmt.Sprintf("key %q is a variant of %q", event.Truncate(string(name), 64), field))
			}
		}
	}
}

func mayFold(name []byte) bool {
	for _, c := range name {
		if c >= 'A' && c <= 'Z' || c >= utf8.RuneSelf {
			return true
		}
	}
	return false
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
