package hssim

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"

	"github.com/cactus-comments/appservice/pkg/event"
)

const (
	mallory = "@mallory:evil.test"
	alice   = "@alice:example.org"
)

// member is one top-level key of a served event and its value as written.
type member struct{ name, raw string }

// topLevel lists the top-level keys of an event as served, in order.
func topLevel(t *testing.T, raw []byte) []member {
	t.Helper()
	d := jsontext.NewDecoder(bytes.NewReader(raw))
	if _, err := d.ReadToken(); err != nil {
		t.Fatalf("%s: %v", raw, err)
	}
	var out []member
	for d.PeekKind() == '"' {
		tok, err := d.ReadToken()
		if err != nil {
			t.Fatal(err)
		}
		name := tok.String()
		v, err := d.ReadValue()
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, member{name, string(v)})
	}
	return out
}

func names(ms []member) []string {
	var out []string
	for _, m := range ms {
		out = append(out, m.name)
	}
	return out
}

// pushedEvent is the event with id as the appservice received it, byte for
// byte.
func (e *env) pushedEvent(id string) []byte {
	e.t.Helper()
	if err := e.hs.WaitDelivered(ctxT(e.t), id); err != nil {
		e.t.Fatal(err)
	}
	attempts := e.pushAttempts(id)
	if len(attempts) == 0 {
		e.t.Fatalf("%s not pushed", id)
	}
	return attempts[0]
}

// federate sends a remote event and fails the test if it is refused.
func (e *env) federate(pdu string) string {
	e.t.Helper()
	id, err := e.hs.ReceiveFederated([]byte(pdu))
	if err != nil {
		e.t.Fatalf("ReceiveFederated(%s): %v", pdu, err)
	}
	return id
}

// publicRoom is a public room of the appservice's bot (so every event in
// it is pushed) that mallory, of another server, has joined over
// federation. The PDU carries what every real one does and Synapse drops.
func publicRoom(t *testing.T, e *env, body map[string]any) string {
	t.Helper()
	registerBot(t, e)
	body["visibility"] = "public"
	id := e.createRoom(testASToken, body)
	e.federate(fmt.Sprintf(`{"auth_events":[],"content":{"membership":"join"},"depth":7,"hashes":{"sha256":"x"},`+
		`"origin":"evil.test","origin_server_ts":1700000000000,"prev_events":[],"room_id":%q,"sender":%q,`+
		`"signatures":{"evil.test":{"ed25519:a":"sig"}},"state_key":%q,"type":"m.room.member"}`, id, mallory, mallory))
	if m := e.hs.Membership(id, mallory); m != "join" {
		t.Fatalf("mallory's join over federation: membership %q", m)
	}
	return id
}

// TestFederatedEventKeepsTheRemoteKeys: in Synapse mode an event from a
// remote server reaches appservices and clients with every top-level key
// its server wrote, variants of real fields included; the simulator itself
// reads only the real fields. Appservices get them as Synapse's canonical
// JSON writes the dict it parsed (keys sorted, values re-encoded), plus
// user_id; clients in the order given, byte for byte.
func TestFederatedEventKeepsTheRemoteKeys(t *testing.T) {
	e := startEnv(t, Synapse)
	room := publicRoom(t, e, map[string]any{})
	id := e.federate(`{"room_id":"` + room + `","Sender":"@alice:example.org","sender":"@mallory:evil.test",` +
		`"type":"m.room.message","ſender":"@alice:example.org","content":{"msgtype":"m.text","body":"<b>hi</b> \u00e9"},` +
		`"redacts":5,"Type":["m.room.member"],"x":{"a" : [1, true]},"depth":9,"hashes":{"sha256":"y"},"origin_server_ts":1700000000001}`)

	got := topLevel(t, e.pushedEvent(id))
	wantPushed := []string{"Sender", "Type", "content", "event_id", "origin_server_ts", "redacts", "room_id", "sender", "type", "unsigned", "user_id", "x", "ſender"}
	if !slices.Equal(names(got), wantPushed) {
		t.Fatalf("pushed keys %q, want %q", names(got), wantPushed)
	}
	for _, m := range []member{
		{"Sender", `"@alice:example.org"`}, {"sender", `"` + mallory + `"`}, {"ſender", `"@alice:example.org"`}, {"user_id", `"` + mallory + `"`},
		{"redacts", `5`}, {"Type", `["m.room.member"]`}, {"x", `{"a":[1,true]}`}, {"origin_server_ts", `1700000000001`},
		{"content", `{"body":"<b>hi</b> é","msgtype":"m.text"}`}, {"unsigned", `{}`},
	} {
		if i := slices.Index(names(got), m.name); got[i].raw != m.raw {
			t.Errorf("%s pushed as %s, want %s", m.name, got[i].raw, m.raw)
		}
	}
	want := []string{"room_id", "Sender", "sender", "type", "ſender", "content", "redacts", "Type", "x", "origin_server_ts", "event_id", "unsigned"}

	// The simulator's own reading is the real fields.
	tl := e.hs.Timeline(room)
	ev := tl[len(tl)-1]
	if ev.EventID != id || ev.Sender != mallory || ev.Type != "m.room.message" || ev.Redacts != "" || ev.OriginServerTS != 1700000000001 {
		t.Fatalf("stored %+v", ev)
	}

	// Clients see the same keys.
	r := e.mustOK(e.do("GET", "/_matrix/client/v3/rooms/"+esc(room)+"/messages?dir=b&limit=1", testASToken, nil))
	var page struct {
		Chunk []jsontext.Value `json:"chunk"`
	}
	if err := json.Unmarshal(r.Raw, &page); err != nil || len(page.Chunk) != 1 {
		t.Fatalf("messages: %v %s", err, r.Raw)
	}
	if gotc := names(topLevel(t, page.Chunk[0])); !slices.Equal(gotc, want) {
		t.Fatalf("/messages keys %q, want %q", gotc, want)
	}
}

// TestFederatedEventAppliedByItsRealFields: a remote moderator's ban with
// a case-variant state key bans the user the real state_key names.
func TestFederatedEventAppliedByItsRealFields(t *testing.T) {
	e := startEnv(t, Synapse)
	bob, btok := e.user("bob")
	room := publicRoom(t, e, map[string]any{"power_level_content_override": map[string]any{
		"users": map[string]any{"@cactusbot:" + testServer: 100, mallory: 50},
	}})
	e.mustOK(e.do("POST", "/_matrix/client/v3/rooms/"+esc(room)+"/join", btok, map[string]any{}))
	_, atok := e.user("alice")
	e.mustOK(e.do("POST", "/_matrix/client/v3/rooms/"+esc(room)+"/join", atok, map[string]any{}))

	id := e.federate(fmt.Sprintf(`{"room_id":%q,"sender":%q,"type":"m.room.member","state_key":%q,"State_key":%q,`+
		`"content":{"membership":"ban"}}`, room, mallory, bob, alice))
	if m := e.hs.Membership(room, bob); m != "ban" {
		t.Fatalf("bob's membership %q, want ban", m)
	}
	if m := e.hs.Membership(room, alice); m != "join" {
		t.Fatalf("alice's membership %q: the variant key was acted on", m)
	}
	got := topLevel(t, e.pushedEvent(id))
	if i := slices.Index(names(got), "State_key"); i < 0 || got[i].raw != `"`+alice+`"` {
		t.Fatalf("the variant key was not pushed: %q", names(got))
	}
	// The remote server is bound by the auth rules like anyone.
	_, err := e.hs.ReceiveFederated([]byte(fmt.Sprintf(`{"room_id":%q,"sender":"@eve:evil.test","type":"m.room.member",`+
		`"state_key":%q,"content":{"membership":"ban"}}`, room, alice)))
	if !errors.Is(err, ErrFederation) || !strings.Contains(err.Error(), "not in room") {
		t.Fatalf("a ban by someone not in the room: %v", err)
	}
}

// TestFederatedKeysSynapseWritesToo: a remote event may carry the keys
// Synapse's client format writes (user_id, age, prev_content, ...) and
// unsigned data. Synapse keeps them in the event's dict, so its own values
// replace them only where it writes one: user_id always, the copies from
// unsigned when unsigned has them. It keeps unsigned.age (stale: it only
// computes age for its own events) and moves it to a top-level age_ts.
func TestFederatedKeysSynapseWritesToo(t *testing.T) {
	e := startEnv(t, Synapse)
	room := publicRoom(t, e, map[string]any{})
	join := e.hs.Timeline(room)[len(e.hs.Timeline(room))-1].EventID
	before := time.Now().UnixMilli()
	id := e.federate(`{"room_id":"` + room + `","sender":"` + mallory + `","type":"m.room.member","state_key":"` + mallory + `",` +
		`"content":{"membership":"join","displayname":"M"},"user_id":"` + alice + `","prev_content":{"membership":"ban"},` +
		`"replaces_state":"$fake","age":99,"event_id":"$chosen","redacted_because":{"x":1},` +
		`"unsigned":{"age":1234,"foo":1.5,"invite_room_state":[],"prev_content":{"x":1}}}`)
	after := time.Now().UnixMilli()
	var ev struct {
		EventID         string                    `json:"event_id"`
		UserID          string                    `json:"user_id"`
		Age             jsontext.Value            `json:"age"`
		AgeTS           int64                     `json:"age_ts"`
		PrevContent     jsontext.Value            `json:"prev_content"`
		ReplacesState   string                    `json:"replaces_state"`
		RedactedBecause jsontext.Value            `json:"redacted_because"`
		Unsigned        map[string]jsontext.Value `json:"unsigned"`
	}
	raw := e.pushedEvent(id)
	if err := json.Unmarshal(raw, &ev); err != nil {
		t.Fatal(err)
	}
	if ev.EventID != id || ev.UserID != mallory || string(ev.Age) != "1234" || string(ev.PrevContent) != `{"membership":"join"}` ||
		ev.ReplacesState != join || string(ev.RedactedBecause) != `{"x":1}` || ev.AgeTS < before-1234 || ev.AgeTS > after-1234 {
		t.Errorf("pushed %s", raw)
	}
	if got := slices.Sorted(maps.Keys(ev.Unsigned)); !slices.Equal(got, []string{"age", "prev_content", "prev_sender", "replaces_state"}) ||
		string(ev.Unsigned["age"]) != "1234" || string(ev.Unsigned["prev_content"]) != `{"membership":"join"}` {
		t.Errorf("unsigned %s", raw)
	}

	// Without unsigned data from its server, a remote event has no age, and
	// the remote copies stand where Synapse writes none.
	id = e.federate(`{"room_id":"` + room + `","sender":"` + mallory + `","type":"m.room.message","content":{},` +
		`"prev_content":{"membership":"ban"},"replaces_state":"$fake"}`)
	raw = e.pushedEvent(id)
	got := topLevel(t, raw)
	if slices.Contains(names(got), "age") || slices.Contains(names(got), "age_ts") ||
		got[slices.Index(names(got), "prev_content")].raw != `{"membership":"ban"}` || got[slices.Index(names(got), "unsigned")].raw != `{}` {
		t.Errorf("pushed %s", raw)
	}
}

// TestFederatedKeysDroppedByDendriteAndContinuwuity: they rebuild the
// client event from the fields they parsed.
func TestFederatedKeysDroppedByDendriteAndContinuwuity(t *testing.T) {
	for _, mode := range []Mode{Dendrite, Conduit} {
		t.Run(string(mode), func(t *testing.T) {
			e := startEnv(t, mode, func(o *Options) { o.RoomVersion = "10" })
			room := publicRoom(t, e, map[string]any{})
			id := e.federate(`{"room_id":"` + room + `","Sender":"@alice:example.org","sender":"` + mallory + `",` +
				`"type":"m.room.message","content":{"body":"hi"},"redacts":"$x","Type":"x","user_id":"` + alice + `",` +
				`"age":5,"prev_content":{},"unsigned":{"age":5,"transaction_id":"t"}}`)
			want := []string{"content", "event_id", "origin_server_ts", "room_id", "sender", "type"}
			if got := names(topLevel(t, e.pushedEvent(id))); !slices.Equal(got, want) {
				t.Fatalf("%s pushed %q, want %q", mode, got, want)
			}
			// They parse redacts as an event id and refuse anything else.
			_, err := e.hs.ReceiveFederated([]byte(`{"room_id":"` + room + `","sender":"` + mallory + `","type":"m.room.message","content":{},"redacts":5}`))
			if !errors.Is(err, ErrFederation) {
				t.Fatalf("%s: redacts 5 accepted", mode)
			}
		})
	}
}

// TestFederatedEventRefusals: what a homeserver refuses, or never emits,
// is refused with a clear error and changes nothing.
func TestFederatedEventRefusals(t *testing.T) {
	e := startEnv(t, Synapse)
	room := publicRoom(t, e, map[string]any{})
	v5 := e.createRoom(testASToken, map[string]any{"visibility": "public", "room_version": "5"})
	e.federate(`{"room_id":"` + v5 + `","sender":"` + mallory + `","state_key":"` + mallory + `","type":"m.room.member","content":{"membership":"join"}}`)
	msg := func(room string, extra string) string {
		return `{"room_id":"` + room + `","sender":"` + mallory + `","type":"m.room.message","content":{"body":"x"}` + extra + `}`
	}
	tests := []struct{ name, pdu, mention string }{
		{"duplicate key", msg(room, `,"sender":"`+alice+`"`), "duplicate"},
		{"escaped duplicate", msg(room, `,"s\u0065nder":"`+alice+`"`), "duplicate"},
		{"duplicate in content", strings.Replace(msg(room, ""), `{"body":"x"}`, `{"body":"x","body":"y"}`, 1), "duplicate"},
		{"invalid UTF-8", msg(room, ",\"x\":\"\xff\""), "UTF-8"},
		{"lone surrogate", msg(room, `,"x":"\ud800"`), "surrogate"},
		{"local sender", strings.Replace(msg(room, ""), mallory, alice, 1), "local user"},
		{"unsigned a number", msg(room, `,"unsigned":5`), "not iterable"},
		{"unsigned null", msg(room, `,"unsigned":null`), "not iterable"},
		{"unsigned a string holding age", msg(room, `,"unsigned":"page"`), "not subscriptable"},
		{"unsigned a list holding age", msg(room, `,"unsigned":[1,"age"]`), "not subscriptable"},
		{"age an object", msg(room, `,"unsigned":{"age":{}}`), "not a number"},
		{"age not an integer literal", msg(room, `,"age":"12a"`), "not an integer literal"},
		{"age_ts out of range", msg(room, `,"unsigned":{"age":-9007199254740991}`), "out of range"},
		{"float kept in unsigned", msg(room, `,"unsigned":{"age":1.5}`), "not an integer"},
		{"float in a v6+ room", msg(room, `,"x":1.5`), "not an integer"},
		{"integer out of range", msg(room, `,"x":9007199254740992`), "out of range"},
		{"sender not a string", strings.Replace(msg(room, ""), `"`+mallory+`"`, `["`+mallory+`"]`, 1), "not a string"},
		{"content not an object", strings.Replace(msg(room, ""), `{"body":"x"}`, `"x"`, 1), "not an object"},
		{"no content", `{"room_id":"` + room + `","sender":"` + mallory + `","type":"m.room.message"}`, "no content"},
		{"ts not an integer", msg(room, `,"origin_server_ts":"yesterday"`), "not an integer"},
		{"type too long", strings.Replace(msg(room, ""), "m.room.message", strings.Repeat("t", 256), 1), "longer than 255"},
		{"unknown room", msg("!nowhere:example.org", ""), "unknown"},
		{"redaction", strings.Replace(msg(room, `,"redacts":"$x"`), "m.room.message", "m.room.redaction", 1), "not simulated"},
		{"not joined", strings.Replace(msg(room, ""), mallory, "@eve:evil.test", 1), "not in room"},
		{"too large", msg(room, `,"x":"`+strings.Repeat("a", maxPDUSize)+`"`), "larger than"},
		{"trailing data", msg(room, "") + "{}", "after"},
		{"depth not an integer", msg(room, `,"depth":"7"`), "depth"},
		{"negative depth", msg(room, `,"depth":-1`), "depth"},
	}
	before := len(e.hs.Timeline(room))
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := e.hs.ReceiveFederated([]byte(tt.pdu))
			if !errors.Is(err, ErrFederation) || !strings.Contains(err.Error(), tt.mention) {
				t.Fatalf("ReceiveFederated(%.200s) = %v, want ErrFederation mentioning %q", tt.pdu, err, tt.mention)
			}
		})
	}
	if after := len(e.hs.Timeline(room)); after != before {
		t.Fatalf("refused events changed the room: %d events, was %d", after, before)
	}
	// Before version 6 rooms do not require canonical JSON.
	id := e.federate(msg(v5, `,"x":1.50`))
	if got := topLevel(t, e.pushedEvent(id)); got[slices.Index(names(got), "x")].raw != "1.50" {
		t.Fatalf("x pushed as %v", got)
	}
}

// TestRedactionPrunesRemoteKeys: a redacted event keeps only the fields
// redaction keeps, as Synapse prunes the event dict.
func TestRedactionPrunesRemoteKeys(t *testing.T) {
	e := startEnv(t, Synapse)
	room := publicRoom(t, e, map[string]any{})
	id := e.federate(`{"room_id":"` + room + `","sender":"` + mallory + `","type":"m.room.message","content":{"body":"x"},"Sender":"` + alice + `","membership":"join"}`)
	e.mustOK(e.do("PUT", "/_matrix/client/v3/rooms/"+esc(room)+"/redact/"+esc(id)+"/t1", testASToken, map[string]any{}))
	r := e.mustOK(e.do("GET", "/_matrix/client/v3/rooms/"+esc(room)+"/messages?dir=b&limit=2", testASToken, nil))
	var page struct {
		Chunk []jsontext.Value `json:"chunk"`
	}
	if err := json.Unmarshal(r.Raw, &page); err != nil || len(page.Chunk) != 2 {
		t.Fatalf("messages: %v %s", err, r.Raw)
	}
	got := names(topLevel(t, page.Chunk[1]))
	if slices.Contains(got, "Sender") || !slices.Contains(got, "membership") {
		t.Fatalf("redacted event keys %q: want Sender pruned, membership kept (version 10)", got)
	}
}

// FuzzReceiveFederated: whatever a remote server writes, the simulator
// either refuses it and changes nothing, or serves JSON that a reader of
// the exact keys (the project's strict decoder) reads as the event the
// simulator applied; remote keys never change that reading, at worst make
// it fail (a real field's name with a value of another type).
func FuzzReceiveFederated(f *testing.F) {
	for _, seed := range []string{
		`{"room_id":"!r","sender":"@mallory:evil.test","type":"m.room.message","content":{"body":"x"}}`,
		`{"room_id":"!r","Sender":"@alice:example.org","sender":"@mallory:evil.test","type":"m.room.message","ſender":"x","content":{},"redacts":5}`,
		`{"room_id":"!r","sender":"@mallory:evil.test","type":"m.room.member","state_key":"@bob:evil.test","State_key":"@alice:example.org","content":{"membership":"ban"}}`,
		`{"room_id":"!r","sender":"@mallory:evil.test","type":"m.room.topic","state_key":"","content":{"topic":"t"},"origin_server_ts":5,"depth":1,"TYPE":null}`,
		`{"room_id":"!r","sender":"@mallory:evil.test","type":"x","content":{},"content ":1,"event_id ":"$x","unsigned":{}}`,
		`{"room_id":"!r","sender":"@mallory:evil.test","type":"x","content":{"a":"\ud83d\ude00 <&>"},"x":"\u0000"}`,
		`{"room_id":"!r","sender":"@mallory:evil.test","type":"m.room.member","state_key":"@mallory:evil.test","content":{"membership":"join"},"user_id":"@alice:example.org","prev_content":{},"age":"1_0","unsigned":{"age":7,"invite_room_state":[1]}}`,
	} {
		f.Add([]byte(seed))
	}
	hs, err := Start(context.Background(), Options{ServerName: testServer, Mode: Synapse, TimeUnit: time.Millisecond})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { _ = hs.Close() })
	_, tok, err := hs.RegisterUser("owner", "pw")
	if err != nil {
		f.Fatal(err)
	}
	room, err := hs.CreateRoom(context.Background(), tok, map[string]any{"preset": "public_chat",
		"power_level_content_override": map[string]any{"users": map[string]any{"@owner:" + testServer: 100, mallory: 99}}})
	if err != nil {
		f.Fatal(err)
	}
	if _, err := hs.ReceiveFederated([]byte(`{"room_id":"` + room + `","sender":"` + mallory + `","type":"m.room.member","state_key":"` + mallory + `","content":{"membership":"join"}}`)); err != nil {
		f.Fatal(err)
	}
	as := testAppservice(f)
	f.Fuzz(func(t *testing.T, pdu []byte) {
		pdu = bytes.ReplaceAll(pdu, []byte(`"!r"`), []byte(`"`+room+`"`))
		length := func() int {
			hs.mu.Lock()
			defer hs.mu.Unlock()
			return len(hs.rooms[room].timeline)
		}
		before := length()
		id, err := hs.ReceiveFederated(pdu)
		if err != nil {
			if !errors.Is(err, ErrFederation) {
				t.Fatalf("error %v does not wrap ErrFederation", err)
			}
			if after := length(); after != before {
				t.Fatalf("refused event changed the room: %v", err)
			}
			return
		}
		hs.mu.Lock()
		r := hs.rooms[room]
		live := r.timeline[len(r.timeline)-1]
		stored := copyOut(live)
		now := time.Now()
		view := hs.viewLocked(live)
		// What clients get, what Synapse pushes (held in memory, read
		// back), and what Dendrite and continuwuity would push.
		served := map[string]jsontext.Value{
			"client":            hs.servedLocked(live, now),
			"synapse":           hs.wireEventLocked(as, queued{live: live, snap: view}, true, now),
			"synapse read back": hs.wireEventLocked(as, queued{live: live, snap: view}, false, now),
			"dendrite":          dendriteEvent(view),
			"continuwuity":      conduitEvent(view),
		}
		hs.mu.Unlock()
		if stored.EventID != id {
			t.Fatalf("last event %s, ReceiveFederated said %s", stored.EventID, id)
		}
		for form, raw := range served {
			if !raw.IsValid() {
				t.Fatalf("%s: JSON is not valid (duplicate keys or bad UTF-8): %s", form, raw)
			}
			var got event.Event
			if err := event.DecodeContent(raw, &got); err != nil {
				if form == "dendrite" || form == "continuwuity" {
					t.Fatalf("%s: %v: %s", form, err, raw)
				}
				continue // a remote key named like a field, with a value of another type
			}
			var wantContent, gotContent any
			if json.Unmarshal(stored.Content, &wantContent) != nil || json.Unmarshal(got.Content, &gotContent) != nil ||
				!reflect.DeepEqual(wantContent, gotContent) {
				t.Fatalf("%s: content %s, stored %s", form, got.Content, stored.Content)
			}
			if got.EventID != stored.EventID || got.Type != stored.Type || got.RoomID != stored.RoomID || got.Sender != stored.Sender ||
				got.IsState() != stored.IsState() || got.IsState() && *got.StateKey != *stored.StateKey || got.OriginServerTS != stored.OriginServerTS {
				t.Fatalf("%s: %s\nread as %+v\nstored %+v", form, raw, got, stored)
			}
		}
	})
}
