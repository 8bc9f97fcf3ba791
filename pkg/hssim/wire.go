package hssim

import (
	"encoding/json"
	"slices"
	"time"

	"github.com/go-json-experiment/json/jsontext"

	"github.com/cactus-comments/appservice/pkg/event"
)

// Each server writes the events it pushes to appservices its own way: the
// keys, their order, what unsigned holds and how strings are escaped. The
// simulator stores one representation of an event (its client format, with
// prev_content, prev_sender, replaces_state, invite_room_state and
// redacted_because in unsigned as it knows them) and renders it here as
// the imitated server would.

// pushView is an event as the imitated server reads it when it builds a
// transaction: a snapshot taken when the event was queued, or the stored
// event as it is now.
type pushView struct {
	ev     event.Event
	remote []topKey // a remote server's own top-level keys (Synapse)
	// remoteUnsigned is the unsigned data of a remote event Synapse kept.
	remoteUnsigned jsontext.Value
	version        roomVersion
	txnID          string // the client transaction id of a /send
}

// queued is one event waiting for, or in, a transaction to an appservice.
type queued struct {
	live *event.Event // the stored event, as a server re-reading its database finds it
	snap pushView     // the event when it was queued, as a server holding it in memory sends it
}

// viewLocked is ev as stored now.
func (s *Server) viewLocked(ev *event.Event) pushView {
	v := pushView{ev: copyOut(ev), remote: slices.Clone(s.remoteKeys[ev.EventID]), remoteUnsigned: s.remoteUnsigned[ev.EventID].Clone(), txnID: s.sendTxns[ev.EventID]}
	if r := s.rooms[ev.RoomID]; r != nil {
		v.version = versionOf(r.version)
	}
	return v
}

// wireEventLocked renders one event of a transaction to as. fromMemory
// says the server sends the event it held since it was queued (Synapse's
// first attempt while the appservice is up, every attempt of Dendrite's);
// otherwise it reads the event from its database at send time.
func (s *Server) wireEventLocked(as *appservice, q queued, fromMemory bool, now time.Time) jsontext.Value {
	v := q.snap
	if !fromMemory {
		v = s.viewLocked(q.live)
	}
	switch s.opts.Mode {
	case Dendrite:
		return dendriteEvent(v)
	case Conduit:
		return conduitEvent(v)
	}
	return canonical(mustJSON(synapseEvent(v, as, now, fromMemory)))
}

// wireBody is the transaction body around the rendered events. Synapse
// encodes the whole body as canonical JSON, so its keys come sorted;
// ephemeral is whether it carries the (empty) ephemeral keys of an
// appservice that receives them.
func wireBody(events []jsontext.Value, ephemeral bool) []byte {
	body := []byte{'{'}
	if ephemeral {
		body = append(body, `"de.sorunome.msc2409.to_device":[],"ephemeral":[],`...)
	}
	body = append(body, `"events":[`...)
	for i, ev := range events {
		if i > 0 {
			body = append(body, ',')
		}
		body = append(body, ev...)
	}
	return append(body, ']', '}')
}

// synapseEvent is Synapse's serialize_event(..., as_client_event=True) of
// the event for an appservice push, as a dict: the event's own dict (a
// remote event's keys as its server wrote them), unsigned with age
// computed from when the event was made, prev_content and prev_sender only
// when the event was read with them (get_prev_content: the first attempt;
// the retries read the database without), invite_room_state only on an
// invite or knock of a user the appservice is interested in, then
// format_event_for_client_v1: user_id and the copies of age,
// redacted_because, replaces_state, prev_content, invite_room_state and
// knock_room_state at the top level. A redaction carries its target both
// at the top level and in content.
func synapseEvent(v pushView, as *appservice, now time.Time, withPrev bool) map[string]jsontext.Value {
	ev := v.ev
	d := map[string]jsontext.Value{}
	for _, k := range v.remote {
		if k.raw != nil {
			d[k.name] = k.raw
		}
	}
	d["event_id"] = mustJSON(ev.EventID)
	d["type"] = mustJSON(ev.Type)
	d["room_id"] = mustJSON(ev.RoomID)
	d["sender"] = mustJSON(ev.Sender)
	d["content"] = ev.Content
	d["origin_server_ts"] = mustJSON(ev.OriginServerTS)
	if ev.StateKey != nil {
		d["state_key"] = mustJSON(*ev.StateKey)
	}
	if ev.Redacts != "" {
		d["redacts"] = mustJSON(ev.Redacts)
	}

	// A local event's age counts from when it was made; a remote event
	// keeps the age its server gave (Synapse stores age_ts at the top
	// level then, where serialize_event does not look).
	stored := unsignedMap(&ev)
	u := map[string]jsontext.Value{}
	_, redacted := stored["redacted_because"]
	if v.remote == nil {
		u["age"] = mustJSON(now.UnixMilli() - ev.OriginServerTS)
	}
	if rs, ok := stored["replaces_state"]; ok {
		u["replaces_state"] = rs
	}
	if !redacted {
		if len(v.remoteUnsigned) > 0 {
			var remote map[string]jsontext.Value
			_ = event.DecodeContent(v.remoteUnsigned, &remote)
			for k, x := range remote {
				stored[k] = x
			}
			if age, ok := remote["age"]; ok {
				u["age"] = age
			}
		}
		if withPrev {
			for _, k := range []string{"prev_content", "prev_sender"} {
				if x, ok := stored[k]; ok {
					u[k] = x
				}
			}
		}
		if irs, ok := stored["invite_room_state"]; ok && ev.StateKey != nil && as.interestedInUser(*ev.StateKey) {
			if m := ev.Membership(); m == "invite" || m == "knock" {
				u["invite_room_state"] = irs
			}
		}
	} else {
		// The redaction, serialised for the appservice the same way.
		var because event.Event
		if event.DecodeContent(stored["redacted_because"], &because) == nil {
			u["redacted_because"] = mustJSON(synapseEvent(pushView{ev: because, version: v.version}, as, now, false))
		}
	}
	d["unsigned"] = mustJSON(u)

	d["user_id"] = d["sender"]
	for _, k := range []string{"age", "redacted_because", "replaces_state", "prev_content", "invite_room_state", "knock_room_state"} {
		if x, ok := u[k]; ok {
			d[k] = x
		}
	}
	if ev.Type == "m.room.redaction" {
		if target := redactionTarget(&ev); target != "" {
			if v.version.redactsInContent() {
				d["redacts"] = mustJSON(target)
			} else {
				c := map[string]jsontext.Value{}
				_ = event.DecodeContent(ev.Content, &c)
				c["redacts"] = mustJSON(target)
				d["content"] = mustJSON(c)
			}
		}
	}
	return d
}

// redactionTarget is the event a redaction redacts: content.redacts from
// room version 11, the top-level redacts before.
func redactionTarget(ev *event.Event) string {
	if ev.Redacts != "" {
		return ev.Redacts
	}
	var c struct {
		Redacts string `json:"redacts"`
	}
	_ = event.DecodeContent(ev.Content, &c)
	return c.Redacts
}

// dendriteClientEvent is Dendrite's synctypes.ClientEvent: its pushes are
// encoding/json's Marshal of these, so the keys come in this order and
// '<', '>', '&', U+2028 and U+2029 are escaped everywhere, content and
// unsigned included.
type dendriteClientEvent struct {
	Content        json.RawMessage `json:"content"`
	EventID        string          `json:"event_id,omitempty"`
	OriginServerTS int64           `json:"origin_server_ts,omitempty"`
	RoomID         string          `json:"room_id,omitempty"`
	Sender         string          `json:"sender,omitempty"`
	StateKey       *string         `json:"state_key,omitempty"`
	Type           string          `json:"type"`
	Unsigned       json.RawMessage `json:"unsigned,omitempty"`
	Redacts        string          `json:"redacts,omitempty"`
}

// dendriteStrippedState is gomatrixserverlib's InviteStrippedState.
type dendriteStrippedState struct {
	Content  json.RawMessage `json:"content"`
	StateKey *string         `json:"state_key"`
	Type     string          `json:"type"`
	Sender   string          `json:"sender"`
}

// dendriteEvent renders an event as Dendrite's appservice component pushes
// it: the event as the roomserver output it (content in canonical JSON;
// unsigned holds only an invite's invite_room_state: prev_content is added
// by the sync API, which appservices do not go through, and nothing adds
// age), with the top-level redacts of the event as stored.
func dendriteEvent(v pushView) jsontext.Value {
	ev := v.ev
	ce := dendriteClientEvent{
		Content: json.RawMessage(canonical(ev.Content)), EventID: ev.EventID, OriginServerTS: ev.OriginServerTS,
		RoomID: ev.RoomID, Sender: ev.Sender, StateKey: ev.StateKey, Type: ev.Type, Redacts: ev.Redacts,
	}
	if irs, ok := unsignedMap(&ev)["invite_room_state"]; ok && ev.Membership() == "invite" {
		var in []struct {
			Content  jsontext.Value `json:"content"`
			StateKey *string        `json:"state_key"`
			Type     string         `json:"type"`
			Sender   string         `json:"sender"`
		}
		_ = event.DecodeContent(irs, &in)
		out := make([]dendriteStrippedState, len(in))
		for i, st := range in {
			out[i] = dendriteStrippedState{Content: json.RawMessage(canonical(st.Content)), StateKey: st.StateKey, Type: st.Type, Sender: st.Sender}
		}
		u, _ := json.Marshal(map[string]any{"invite_room_state": out})
		ce.Unsigned = u
	}
	b, err := json.Marshal(ce)
	if err != nil {
		panic(err) // built from stored, valid values
	}
	return b
}

// conduitEvent renders an event as continuwuity pushes it: the PDU read
// from its database at send time, turned into a serde_json Value (its maps
// sort their keys) by to_format. unsigned is what continuwuity stored with
// the event: for a state event an object, with prev_content, prev_sender
// and replaces_state when it replaced one; for a /send the client's
// transaction_id; for a redacted event only org.continuwuity.redacted_by.
// It computes no age and puts no invite_room_state in an invite. A
// redaction carries its target both at the top level and in content.
func conduitEvent(v pushView) jsontext.Value {
	ev := v.ev
	d := map[string]jsontext.Value{
		"content": ev.Content, "event_id": mustJSON(ev.EventID), "origin_server_ts": mustJSON(ev.OriginServerTS),
		"room_id": mustJSON(ev.RoomID), "sender": mustJSON(ev.Sender), "type": mustJSON(ev.Type),
	}
	if ev.StateKey != nil {
		d["state_key"] = mustJSON(*ev.StateKey)
	}
	if ev.Redacts != "" {
		d["redacts"] = mustJSON(ev.Redacts)
	}
	stored := unsignedMap(&ev)
	var u map[string]jsontext.Value
	if because, ok := stored["redacted_because"]; ok {
		var r struct {
			EventID string `json:"event_id"`
		}
		_ = event.DecodeContent(because, &r)
		u = map[string]jsontext.Value{"org.continuwuity.redacted_by": mustJSON(r.EventID)}
	} else {
		if ev.StateKey != nil {
			u = map[string]jsontext.Value{}
			for _, k := range []string{"prev_content", "prev_sender", "replaces_state"} {
				if x, ok := stored[k]; ok {
					u[k] = x
				}
			}
		}
		if v.txnID != "" {
			u = map[string]jsontext.Value{"transaction_id": mustJSON(v.txnID)}
		}
	}
	if u != nil {
		d["unsigned"] = mustJSON(u)
	}
	if ev.Type == "m.room.redaction" {
		if target := redactionTarget(&ev); target != "" {
			d["redacts"] = mustJSON(target)
			c := map[string]jsontext.Value{}
			_ = event.DecodeContent(ev.Content, &c)
			if _, ok := c["redacts"]; !ok {
				c["redacts"] = mustJSON(target)
				d["content"] = mustJSON(c)
			}
		}
	}
	return canonical(mustJSON(d))
}

// interestedInUser is Synapse's ApplicationService.is_interested_in_user:
// the user is the appservice's sender or in its users namespace.
func (as *appservice) interestedInUser(uid string) bool {
	in, _ := as.match.User(uid)
	return in || uid == as.sender
}
