package hssim

import (
	"bytes"
	"errors"
	"fmt"
	"io"
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

// pduFieldsRefused are keys the receiving server writes itself: the event
// id (a hash of the event, or the simulator's own), unsigned data (which
// Synapse strips from what it receives), and the keys Synapse's client
// format copies to the top level from unsigned (user_id, age, ...).
var pduFieldsRefused = map[string]string{
	"event_id":          "the receiving server names the event",
	"unsigned":          "the receiving server writes unsigned data",
	"user_id":           "Synapse writes it (the sender) when it serialises",
	"age":               "Synapse writes it when it serialises",
	"prev_content":      "Synapse copies it from unsigned when it serialises",
	"replaces_state":    "Synapse copies it from unsigned when it serialises",
	"redacted_because":  "Synapse copies it from unsigned when it serialises",
	"invite_room_state": "Synapse copies it from unsigned when it serialises",
	"knock_room_state":  "Synapse copies it from unsigned when it serialises",
}

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
	ev, layout, err := s.parsePDU(pdu)
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrFederation, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.rooms[ev.RoomID]
	if !ok {
		return "", fmt.Errorf("%w: room %s unknown to %s", ErrFederation, ev.RoomID, s.opts.ServerName)
	}
	if versionOf(r.version).n >= 6 {
		if err := checkCanonicalJSON(pdu); err != nil {
			return "", fmt.Errorf("%w: room version %s: %w", ErrFederation, r.version, err)
		}
	}
	if e := s.authorizeRemoteLocked(r, ev); e != nil {
		return "", fmt.Errorf("%w: the auth rules refuse it: %w", ErrFederation, e)
	}
	ev.EventID = s.newEventID()
	if s.opts.Mode == Synapse {
		s.remoteKeys[ev.EventID] = layout
	}
	s.storeEventLocked(r, ev)
	return ev.EventID, nil
}

// parsePDU reads a remote event: its fields into an event, and the order
// and values of all its top-level keys into a layout.
func (s *Server) parsePDU(pdu []byte) (*event.Event, []topKey, error) {
	if len(pdu) > maxPDUSize {
		return nil, nil, fmt.Errorf("%d bytes, larger than %d", len(pdu), maxPDUSize)
	}
	// jsontext's defaults refuse duplicate names and invalid UTF-8, which
	// a homeserver re-serialising a parsed event never writes.
	d := jsontext.NewDecoder(bytes.NewReader(pdu))
	if tok, err := d.ReadToken(); err != nil {
		return nil, nil, err
	} else if tok.Kind() != '{' {
		return nil, nil, fmt.Errorf("not a JSON object")
	}
	ev := &event.Event{OriginServerTS: time.Now().UnixMilli()}
	var layout []topKey
	for d.PeekKind() == '"' {
		tok, err := d.ReadToken()
		if err != nil {
			return nil, nil, err
		}
		name := tok.String()
		raw, err := d.ReadValue()
		if err != nil {
			return nil, nil, err
		}
		raw = raw.Clone()
		field, err := readPDUField(ev, name, raw)
		switch {
		case err != nil:
			return nil, nil, fmt.Errorf("%s: %w", name, err)
		case pduFieldsDropped[name]:
			if _, err := strconv.ParseUint(string(raw), 10, 63); name == "depth" && err != nil {
				// Synapse refuses a PDU whose depth is not an integer in
				// [0, 2^63-1].
				return nil, nil, fmt.Errorf("depth: %.40s is not a non-negative integer", raw)
			}
		case field:
			layout = append(layout, topKey{name: name})
		default:
			if s.opts.Mode != Synapse && name == "redacts" && raw.Kind() != '"' {
				// Dendrite and continuwuity parse redacts as an event id.
				return nil, nil, fmt.Errorf("redacts: %.40s is not an event id", raw)
			}
			layout = append(layout, topKey{name: name, raw: raw})
		}
	}
	if _, err := d.ReadToken(); err != nil {
		return nil, nil, err
	}
	if _, err := d.ReadToken(); err != io.EOF {
		return nil, nil, fmt.Errorf("data after the event")
	}
	for name, v := range map[string]string{"room_id": ev.RoomID, "sender": ev.Sender, "type": ev.Type} {
		if v == "" {
			return nil, nil, fmt.Errorf("no %s", name)
		}
	}
	if len(ev.Content) == 0 {
		return nil, nil, fmt.Errorf("no content")
	}
	u, err := mxid.ParseUserID(ev.Sender)
	if err != nil {
		return nil, nil, fmt.Errorf("sender: %w", err)
	}
	if u.Server() == s.opts.ServerName {
		return nil, nil, fmt.Errorf("sender %s is a local user: a remote server cannot sign for %s", ev.Sender, s.opts.ServerName)
	}
	switch ev.Type {
	case "m.room.create", "m.room.redaction":
		return nil, nil, fmt.Errorf("%s events over federation are not simulated", ev.Type)
	}
	return ev, layout, nil
}

// readPDUField reads name into ev if it is a field the simulator reads,
// and reports whether it was. It refuses keys the receiving server writes.
func readPDUField(ev *event.Event, name string, raw jsontext.Value) (bool, error) {
	if why, ok := pduFieldsRefused[name]; ok {
		return false, errors.New(why)
	}
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
// every key but the event's own fields, and before version 11 the legacy
// top-level membership.
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
