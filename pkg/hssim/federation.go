package hssim

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"math/big"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/go-json-experiment/json/jsontext"

	"github.com/cactus-comments/appservice/pkg/event"
	"github.com/cactus-comments/appservice/pkg/mxid"
)

// maxPDUSize is the spec's limit on the size of an event, in bytes.
const maxPDUSize = 65536

// canonicalJSONMaxInt bounds integers in rooms that require canonical JSON
// (version 6 and later), as 2^53-1.
const canonicalJSONMaxInt = 1<<53 - 1

// pduFieldsDropped are the federation-only keys Synapse removes when it
// serialises an event for clients and appservices.
var pduFieldsDropped = map[string]bool{
	"auth_events": true, "prev_events": true, "hashes": true, "signatures": true,
	"depth": true, "origin": true, "prev_state": true,
}

// synapseUnsignedKept are the keys of a remote event's unsigned data
// Synapse keeps (_strip_unsigned_values); the rest it drops.
var synapseUnsignedKept = map[string]bool{"age": true}

// synapseMemberUnsignedKept are those of a member event.
var synapseMemberUnsignedKept = map[string]bool{"age": true, "invite_room_state": true, "knock_room_state": true}

// topKey is one top-level key of a remote event, in the order the remote
// server wrote it: a field the simulator reads (raw nil: written from the
// stored event when served), or a key it does not, kept byte for byte.
type topKey struct {
	name string
	raw  jsontext.Value
}

// ErrFederation is wrapped by the errors of ReceiveFederated: the event is
// one the receiving server refuses, or cannot exist.
var ErrFederation = errors.New("federated event refused")

// ReceiveFederated applies an event a remote server sends into one of the
// simulator's rooms, as a homeserver does with a PDU it receives over
// federation, and returns the id it gives the event. pdu is the event's
// JSON object as the remote server wrote it: the real fields are read by
// their exact keys and checked as a receiving server checks them, and the
// other keys are served as written in Synapse mode (see the package notes).
// Every refusal wraps ErrFederation and changes nothing.
func (s *Server) ReceiveFederated(pdu []byte) (string, error) {
	p, err := s.parsePDU(pdu, time.Now())
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrFederation, err)
	}
	ev := p.ev
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.rooms[ev.RoomID]
	if !ok {
		return "", fmt.Errorf("%w: room %s unknown to %s", ErrFederation, ev.RoomID, s.opts.ServerName)
	}
	if versionOf(r.version).n >= 6 {
		for _, v := range p.canonical {
			if err := checkCanonicalJSON(v); err != nil {
				return "", fmt.Errorf("%w: room version %s: %w", ErrFederation, r.version, err)
			}
		}
	}
	if e := s.authorizeRemoteLocked(r, ev); e != nil {
		return "", fmt.Errorf("%w: the auth rules refuse it: %w", ErrFederation, e)
	}
	ev.EventID = s.newEventID()
	if s.opts.Mode == Synapse {
		s.remoteKeys[ev.EventID] = p.keys
		if p.unsigned != nil {
			s.remoteUnsigned[ev.EventID] = p.unsigned
		}
	}
	s.storeEventLocked(r, ev)
	return ev.EventID, nil
}

// remotePDU is what a receiving server takes from a remote event.
type remotePDU struct {
	ev *event.Event
	// keys are all its top-level keys, in the order written, as Synapse
	// keeps them: with age_ts, and without event_id, unsigned and age.
	keys []topKey
	// unsigned is the unsigned data Synapse keeps (nil if none).
	unsigned jsontext.Value
	// canonical are the values that must be canonical JSON in rooms of
	// version 6 and later.
	canonical [][]byte
}

// parsePDU reads a remote event received at now: its fields into an
// event, and what the imitated server keeps of the rest.
//
// Synapse keeps every top-level key of the event's dict and drops only the
// federation ones when it serialises. Before parsing it moves
// unsigned.age, or else a top-level age, to a top-level age_ts (receipt
// time less age; the whole transaction fails when that age is no number),
// then keeps only age of unsigned (and invite_room_state and
// knock_room_state of a member event), an unsigned that is no object
// becoming empty. The event id it computes; a given event_id it ignores.
// Dendrite and continuwuity drop unsigned, as the spec has receivers do,
// and rebuild the event from the fields they parsed.
func (s *Server) parsePDU(pdu []byte, now time.Time) (*remotePDU, error) {
	if len(pdu) > maxPDUSize {
		return nil, fmt.Errorf("%d bytes, larger than %d", len(pdu), maxPDUSize)
	}
	synapse := s.opts.Mode == Synapse
	// jsontext's defaults refuse duplicate names and invalid UTF-8, which
	// a homeserver re-serialising a parsed event never writes.
	d := jsontext.NewDecoder(bytes.NewReader(pdu))
	if tok, err := d.ReadToken(); err != nil {
		return nil, err
	} else if tok.Kind() != '{' {
		return nil, fmt.Errorf("not a JSON object")
	}
	p := &remotePDU{ev: &event.Event{OriginServerTS: now.UnixMilli()}}
	var unsigned, age jsontext.Value
	for d.PeekKind() == '"' {
		tok, err := d.ReadToken()
		if err != nil {
			return nil, err
		}
		name := tok.String()
		raw, err := d.ReadValue()
		if err != nil {
			return nil, err
		}
		raw = raw.Clone()
		field, err := readPDUField(p.ev, name, raw)
		switch {
		case err != nil:
			return nil, fmt.Errorf("%s: %w", name, err)
		case name == "unsigned":
			unsigned = raw
			continue
		case name == "age":
			age = raw
			continue
		case name == "event_id":
		case pduFieldsDropped[name]:
			if _, err := strconv.ParseUint(string(raw), 10, 63); name == "depth" && err != nil {
				// Synapse refuses a PDU whose depth is not an integer in
				// [0, 2^63-1].
				return nil, fmt.Errorf("depth: %.40s is not a non-negative integer", raw)
			}
		case field:
			p.keys = append(p.keys, topKey{name: name})
		default:
			if !synapse && name == "redacts" && raw.Kind() != '"' {
				// Dendrite and continuwuity parse redacts as an event id.
				return nil, fmt.Errorf("redacts: %.40s is not an event id", raw)
			}
			p.keys = append(p.keys, topKey{name: name, raw: raw})
		}
		p.canonical = append(p.canonical, raw)
	}
	if _, err := d.ReadToken(); err != nil {
		return nil, err
	}
	if _, err := d.ReadToken(); err != io.EOF {
		return nil, fmt.Errorf("data after the event")
	}
	for name, v := range map[string]string{"room_id": p.ev.RoomID, "sender": p.ev.Sender, "type": p.ev.Type} {
		if v == "" {
			return nil, fmt.Errorf("no %s", name)
		}
	}
	if len(p.ev.Content) == 0 {
		return nil, fmt.Errorf("no content")
	}
	u, err := mxid.ParseUserID(p.ev.Sender)
	if err != nil {
		return nil, fmt.Errorf("sender: %w", err)
	}
	if u.Server() == s.opts.ServerName {
		return nil, fmt.Errorf("sender %s is a local user: a remote server cannot sign for %s", p.ev.Sender, s.opts.ServerName)
	}
	switch p.ev.Type {
	case "m.room.create", "m.room.redaction":
		return nil, fmt.Errorf("%s events over federation are not simulated", p.ev.Type)
	}
	if !synapse {
		// The whole event, as the others check what they received.
		p.canonical = [][]byte{pdu}
		return p, nil
	}
	if unsigned != nil {
		kept, uAge, err := synapseUnsigned(unsigned, p.ev.Type)
		if err != nil {
			return nil, fmt.Errorf("unsigned: %w", err)
		}
		if uAge != nil {
			age = uAge
		}
		p.unsigned = kept
		p.canonical = append(p.canonical, kept)
	}
	if age != nil {
		n, err := pythonInt(age)
		if err != nil {
			return nil, fmt.Errorf("age: %w: Synapse fails the whole federation transaction", err)
		}
		ts := jsontext.Value(new(big.Int).Sub(big.NewInt(now.UnixMilli()), n).String())
		p.canonical = append(p.canonical, ts)
		i := slices.IndexFunc(p.keys, func(k topKey) bool { return k.name == "age_ts" })
		if i < 0 {
			p.keys = append(p.keys, topKey{name: "age_ts", raw: ts})
		} else {
			p.keys[i].raw = ts
		}
	}
	return p, nil
}

// synapseUnsigned is what Synapse keeps of a remote event's unsigned data,
// and the age it reads from it (nil if none). It fails where Synapse's
// `"age" in unsigned` and `unsigned["age"]` raise.
func synapseUnsigned(raw jsontext.Value, typ string) (jsontext.Value, jsontext.Value, error) {
	switch raw.Kind() {
	case '{':
	case '"':
		var s string
		_ = event.DecodeContent(raw, &s)
		if strings.Contains(s, "age") {
			return nil, nil, fmt.Errorf("%.40s is a string holding \"age\": not subscriptable", raw)
		}
		return jsontext.Value(`{}`), nil, nil
	case '[':
		var list []jsontext.Value
		_ = event.DecodeContent(raw, &list)
		for _, x := range list {
			if string(canonical(x)) == `"age"` {
				return nil, nil, fmt.Errorf("%.40s is a list holding \"age\": not subscriptable", raw)
			}
		}
		return jsontext.Value(`{}`), nil, nil
	default:
		return nil, nil, fmt.Errorf("%.40s is not iterable", raw)
	}
	var all map[string]jsontext.Value
	if err := event.DecodeContent(raw, &all); err != nil {
		return nil, nil, err
	}
	keep := synapseUnsignedKept
	if typ == "m.room.member" {
		keep = synapseMemberUnsignedKept
	}
	kept := map[string]jsontext.Value{}
	for k, v := range all {
		if keep[k] {
			kept[k] = v
		}
	}
	return mustJSON(kept), all["age"], nil
}

// pythonInt is Python's int() of a JSON value as Synapse parsed it: an
// integer as it is, a number with a fraction or exponent as a float
// truncated toward zero, true and false as 1 and 0, a string of decimal
// digits (ASCII here; Python also takes other scripts' digits) with
// optional sign, underscores between digits and surrounding whitespace.
func pythonInt(raw jsontext.Value) (*big.Int, error) {
	switch raw.Kind() {
	case 't':
		return big.NewInt(1), nil
	case 'f':
		return big.NewInt(0), nil
	case '0':
		if n, ok := new(big.Int).SetString(string(raw), 10); ok {
			return n, nil
		}
		f, err := strconv.ParseFloat(string(raw), 64)
		if err != nil || math.IsInf(f, 0) {
			return nil, fmt.Errorf("%.40s is an infinite float", raw)
		}
		n, _ := big.NewFloat(f).Int(nil)
		return n, nil
	case '"':
		var s string
		_ = event.DecodeContent(raw, &s)
		lit := strings.TrimSpace(s)
		if !pythonIntLiteral.MatchString(lit) {
			return nil, fmt.Errorf("%.40s is not an integer literal", raw)
		}
		n, _ := new(big.Int).SetString(strings.TrimPrefix(strings.ReplaceAll(lit, "_", ""), "+"), 10)
		return n, nil
	}
	return nil, fmt.Errorf("%.40s is not a number", raw)
}

var pythonIntLiteral = regexp.MustCompile(`^[+-]?[0-9]+(_[0-9]+)*$`)

// readPDUField reads name into ev if it is a field the simulator reads,
// and reports whether it was.
func readPDUField(ev *event.Event, name string, raw jsontext.Value) (bool, error) {
	str := func(dst *string, max int) (bool, error) {
		if raw.Kind() != '"' {
			return false, fmt.Errorf("%.40s is not a string", raw)
		}
		var v string
		if err := event.DecodeContent(raw, &v); err != nil {
			return false, err
		}
		if max > 0 && len(v) > max {
			return false, fmt.Errorf("%d bytes, longer than %d", len(v), max)
		}
		*dst = v
		return true, nil
	}
	switch name {
	case "room_id":
		return str(&ev.RoomID, mxid.MaxLength)
	case "sender":
		return str(&ev.Sender, mxid.MaxLength)
	case "type":
		return str(&ev.Type, event.MaxTypeLength)
	case "state_key":
		var k string
		ok, err := str(&k, event.MaxStateKeyLength)
		ev.StateKey = &k
		return ok, err
	case "content":
		if raw.Kind() != '{' {
			return false, fmt.Errorf("%.40s is not an object", raw)
		}
		ev.Content = raw
		return true, nil
	case "origin_server_ts":
		n, err := strconv.ParseInt(string(raw), 10, 64)
		if err != nil {
			return false, fmt.Errorf("%.40s is not an integer", raw)
		}
		ev.OriginServerTS = n
		return true, nil
	}
	return false, nil
}

// checkCanonicalJSON refuses what Synapse's validate_canonicaljson refuses
// in rooms of version 6 and later: numbers that are not integers, and
// integers beyond ±(2^53-1).
func checkCanonicalJSON(pdu []byte) error {
	d := jsontext.NewDecoder(bytes.NewReader(pdu))
	for {
		tok, err := d.ReadToken()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if tok.Kind() != '0' {
			continue
		}
		lit := tok.String()
		if strings.ContainsAny(lit, ".eE") {
			return fmt.Errorf("number %s is not an integer", lit)
		}
		if n, err := strconv.ParseInt(lit, 10, 64); err != nil || n > canonicalJSONMaxInt || n < -canonicalJSONMaxInt {
			return fmt.Errorf("integer %s out of range", lit)
		}
	}
}

// authorizeRemoteLocked applies the authorization rules to a remote event,
// as for a local one but without the client API's own checks.
func (s *Server) authorizeRemoteLocked(r *room, ev *event.Event) *matrixError {
	content := contentMap(ev)
	if ev.Type != "m.room.member" {
		return s.authorizeEventLocked(r, ev.Sender, ev.Type, ev.StateKey, content)
	}
	if ev.StateKey == nil {
		return errBadJSON("m.room.member needs a state_key")
	}
	target := *ev.StateKey
	if _, err := mxid.ParseUserID(target); err != nil {
		return errBadJSON("state_key of m.room.member: %v", err)
	}
	membership, _ := content["membership"].(string)
	return s.authMembershipLocked(r, &requester{userID: ev.Sender}, target, membership, r.membership(target))
}

// pruneRemoteKeysLocked drops what redaction removes from a remote event:
// every key but the event's own fields (age_ts included), and before
// version 11 the legacy top-level membership; and its unsigned data.
func (s *Server) pruneRemoteKeysLocked(eventID string, rv roomVersion) {
	layout, ok := s.remoteKeys[eventID]
	if !ok {
		return
	}
	var kept []topKey
	for _, k := range layout {
		if k.raw == nil || k.name == "membership" && rv.n < 11 {
			kept = append(kept, k)
		}
	}
	s.remoteKeys[eventID] = kept
	delete(s.remoteUnsigned, eventID)
}

// servedLocked is an event as the simulator serves it, to appservices and
// clients: the client format, with a remote server's own keys where it
// put them (Synapse mode).
func (s *Server) servedLocked(ev *event.Event, now time.Time) jsontext.Value {
	c := clientFormat(ev, now)
	own := mustJSON(c)
	layout := s.remoteKeys[ev.EventID]
	if layout == nil {
		return own
	}
	// The event's own members, by name, in the order encoding/json wrote
	// them.
	type member struct {
		name string
		raw  jsontext.Value
	}
	var members []member
	d := jsontext.NewDecoder(bytes.NewReader(own))
	_, _ = d.ReadToken()
	for d.PeekKind() == '"' {
		tok, _ := d.ReadToken()
		name := tok.String() // before ReadValue, which voids tok
		raw, _ := d.ReadValue()
		members = append(members, member{name, raw.Clone()})
	}
	out := []byte{'{'}
	written := map[string]bool{}
	add := func(name string, raw jsontext.Value) {
		if len(out) > 1 {
			out = append(out, ',')
		}
		out, _ = jsontext.AppendQuote(out, name)
		out = append(out, ':')
		out = append(out, raw...)
	}
	for _, k := range layout {
		if k.raw != nil {
			add(k.name, k.raw)
			continue
		}
		for _, m := range members {
			if m.name == k.name {
				add(m.name, m.raw)
				written[m.name] = true
			}
		}
	}
	for _, m := range members {
		if !written[m.name] {
			add(m.name, m.raw)
		}
	}
	return append(out, '}')
}
