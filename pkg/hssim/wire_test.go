package hssim

import (
	"bytes"
	"encoding/json"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/go-json-experiment/json/jsontext"

	"github.com/cactus-comments/appservice/pkg/event"
	"github.com/cactus-comments/appservice/pkg/registration"
)

func TestAppendCanonical(t *testing.T) {
	tests := []struct{ in, want string }{
		// Keys in code point order at every depth: upper case before lower
		// case, U+017F after ASCII, U+FFFF before U+1F600 (UTF-16 order,
		// which RFC 8785 uses, would put the surrogate pair first).
		{`{"sender":1,"ſender":2,"Sender":3}`, `{"Sender":3,"sender":1,"ſender":2}`},
		{`{"\uffff":1,"😀":2}`, `{"` + "\uffff" + `":1,"😀":2}`},
		{`{"b":{"d":[{"y":1,"x":2}],"c":null},"a":true}`, `{"a":true,"b":{"c":null,"d":[{"x":2,"y":1}]}}`},
		// No insignificant whitespace.
		{" { \"a\" : [ 1 , false ] } ", `{"a":[1,false]}`},
		// Strings: escapes decoded, only '"', '\\' and control characters
		// escaped again; non-ASCII, <, >, &, U+2028 and U+2029 raw.
		{`"\u00e9\u003c\u003e\u0026\/\u2028\u2029 é"`, "\"é<>&/\u2028\u2029 é\""},
		{`"a\"b\\c\n\r\t\b\f\u0001\u001f\u007f"`, `"a\"b\\c\n\r\t\b\f\u0001\u001f` + "\x7f\""},
		// Numbers as written.
		{`[1,-0,1.50,1E2,12345678901234567890]`, `[1,-0,1.50,1E2,12345678901234567890]`},
		{`"ok"`, `"ok"`},
		{`{}`, `{}`},
		{`[]`, `[]`},
	}
	for _, tc := range tests {
		got, err := appendCanonical(nil, []byte(tc.in))
		if err != nil {
			t.Fatalf("%s: %v", tc.in, err)
		}
		if string(got) != tc.want {
			t.Errorf("%s\n got %s\nwant %s", tc.in, got, tc.want)
		}
	}
	if _, err := appendCanonical(nil, []byte(`{"a":1,"a":2}`)); err == nil {
		t.Error("duplicate keys accepted")
	}
}

// wireFixture is a set of stored events, rendered by each mode's writer
// with a fixed clock.
type wireFixture struct {
	message, rename, invite, outsiderInvite, redaction10, redaction11, redacted event.Event
}

func newWireFixture() wireFixture {
	key := func(s string) *string { return &s }
	const room, alice = "!r:example.org", "@alice:example.org"
	f := wireFixture{
		message: event.Event{EventID: "$m", Type: "m.room.message", RoomID: room, Sender: alice, OriginServerTS: 1000,
			Content: jsontext.Value(`{"msgtype":"m.text","body":"<b>&</b> é` + "\u2028" + `"}`)},
		rename: event.Event{EventID: "$n", Type: "m.room.member", RoomID: room, Sender: alice, StateKey: key(alice), OriginServerTS: 2000,
			Content:  jsontext.Value(`{"membership":"join","displayname":"Al"}`),
			Unsigned: jsontext.Value(`{"replaces_state":"$j","prev_content":{"membership":"join"},"prev_sender":"@alice:example.org"}`)},
		invite: event.Event{EventID: "$i", Type: "m.room.member", RoomID: room, Sender: alice, StateKey: key("@cactusbot:example.org"), OriginServerTS: 3000,
			Content:  jsontext.Value(`{"membership":"invite"}`),
			Unsigned: jsontext.Value(`{"invite_room_state":[{"type":"m.room.create","state_key":"","content":{"room_version":"10","creator":"@alice:example.org"},"sender":"@alice:example.org"}]}`)},
		redaction10: event.Event{EventID: "$x", Type: "m.room.redaction", RoomID: room, Sender: alice, OriginServerTS: 4000, Redacts: "$m",
			Content: jsontext.Value(`{"reason":"spam"}`)},
		redaction11: event.Event{EventID: "$y", Type: "m.room.redaction", RoomID: room, Sender: alice, OriginServerTS: 4000,
			Content: jsontext.Value(`{"reason":"spam","redacts":"$m"}`)},
	}
	f.outsiderInvite = f.invite
	f.outsiderInvite.EventID, f.outsiderInvite.StateKey = "$o", key("@bob:example.org")
	f.redacted = f.message
	f.redacted.Content = jsontext.Value(`{}`)
	f.redacted.Unsigned = mustJSON(map[string]any{"redacted_because": f.redaction10})
	return f
}

func testAppservice(t testing.TB) *appservice {
	t.Helper()
	reg := testRegistration("http://127.0.0.1:1")
	m, err := reg.Compile(registration.AnchorStart)
	if err != nil {
		t.Fatal(err)
	}
	return &appservice{reg: reg, match: m, sender: "@cactusbot:" + testServer}
}

// TestSynapseWireFormat pins format_event_for_client_v1 in canonical JSON.
func TestSynapseWireFormat(t *testing.T) {
	f := newWireFixture()
	as := testAppservice(t)
	now := time.UnixMilli(10000)
	v10, v11 := versionOf("10"), versionOf("11")
	render := func(ev event.Event, rv roomVersion, withPrev bool) string {
		return string(canonical(mustJSON(synapseEvent(pushView{ev: ev, version: rv}, as, now, withPrev))))
	}
	tests := []struct {
		name     string
		ev       event.Event
		rv       roomVersion
		withPrev bool
		want     string
	}{
		{"message", f.message, v10, true,
			`{"age":9000,"content":{"body":"<b>&</b> é` + "\u2028" + `","msgtype":"m.text"},"event_id":"$m","origin_server_ts":1000,"room_id":"!r:example.org","sender":"@alice:example.org","type":"m.room.message","unsigned":{"age":9000},"user_id":"@alice:example.org"}`},
		{"state change, first attempt", f.rename, v10, true,
			`{"age":8000,"content":{"displayname":"Al","membership":"join"},"event_id":"$n","origin_server_ts":2000,"prev_content":{"membership":"join"},"replaces_state":"$j","room_id":"!r:example.org","sender":"@alice:example.org","state_key":"@alice:example.org","type":"m.room.member","unsigned":{"age":8000,"prev_content":{"membership":"join"},"prev_sender":"@alice:example.org","replaces_state":"$j"},"user_id":"@alice:example.org"}`},
		{"state change, read back by the recoverer", f.rename, v10, false,
			`{"age":8000,"content":{"displayname":"Al","membership":"join"},"event_id":"$n","origin_server_ts":2000,"replaces_state":"$j","room_id":"!r:example.org","sender":"@alice:example.org","state_key":"@alice:example.org","type":"m.room.member","unsigned":{"age":8000,"replaces_state":"$j"},"user_id":"@alice:example.org"}`},
		{"invite of the appservice's user", f.invite, v10, true,
			`{"age":7000,"content":{"membership":"invite"},"event_id":"$i","invite_room_state":[{"content":{"creator":"@alice:example.org","room_version":"10"},"sender":"@alice:example.org","state_key":"","type":"m.room.create"}],"origin_server_ts":3000,"room_id":"!r:example.org","sender":"@alice:example.org","state_key":"@cactusbot:example.org","type":"m.room.member","unsigned":{"age":7000,"invite_room_state":[{"content":{"creator":"@alice:example.org","room_version":"10"},"sender":"@alice:example.org","state_key":"","type":"m.room.create"}]},"user_id":"@alice:example.org"}`},
		{"invite of another user", f.outsiderInvite, v10, true,
			`{"age":7000,"content":{"membership":"invite"},"event_id":"$o","origin_server_ts":3000,"room_id":"!r:example.org","sender":"@alice:example.org","state_key":"@bob:example.org","type":"m.room.member","unsigned":{"age":7000},"user_id":"@alice:example.org"}`},
		{"redaction before v11", f.redaction10, v10, true,
			`{"age":6000,"content":{"reason":"spam","redacts":"$m"},"event_id":"$x","origin_server_ts":4000,"redacts":"$m","room_id":"!r:example.org","sender":"@alice:example.org","type":"m.room.redaction","unsigned":{"age":6000},"user_id":"@alice:example.org"}`},
		{"redaction from v11", f.redaction11, v11, true,
			`{"age":6000,"content":{"reason":"spam","redacts":"$m"},"event_id":"$y","origin_server_ts":4000,"redacts":"$m","room_id":"!r:example.org","sender":"@alice:example.org","type":"m.room.redaction","unsigned":{"age":6000},"user_id":"@alice:example.org"}`},
		{"redacted", f.redacted, v10, false,
			`{"age":9000,"content":{},"event_id":"$m","origin_server_ts":1000,"redacted_because":{"age":6000,"content":{"reason":"spam","redacts":"$m"},"event_id":"$x","origin_server_ts":4000,"redacts":"$m","room_id":"!r:example.org","sender":"@alice:example.org","type":"m.room.redaction","unsigned":{"age":6000},"user_id":"@alice:example.org"},"room_id":"!r:example.org","sender":"@alice:example.org","type":"m.room.message","unsigned":{"age":9000,"redacted_because":{"age":6000,"content":{"reason":"spam","redacts":"$m"},"event_id":"$x","origin_server_ts":4000,"redacts":"$m","room_id":"!r:example.org","sender":"@alice:example.org","type":"m.room.redaction","unsigned":{"age":6000},"user_id":"@alice:example.org"}},"user_id":"@alice:example.org"}`},
	}
	for _, tc := range tests {
		if got := render(tc.ev, tc.rv, tc.withPrev); got != tc.want {
			t.Errorf("%s:\n got %s\nwant %s", tc.name, got, tc.want)
		}
	}
}

// TestDendriteWireFormat pins encoding/json's Marshal of ClientEvent.
func TestDendriteWireFormat(t *testing.T) {
	f := newWireFixture()
	tests := []struct {
		name string
		ev   event.Event
		want string
	}{
		{"message", f.message,
			`{"content":{"body":"\u003cb\u003e\u0026\u003c/b\u003e é\u2028","msgtype":"m.text"},"event_id":"$m","origin_server_ts":1000,"room_id":"!r:example.org","sender":"@alice:example.org","type":"m.room.message"}`},
		{"state change", f.rename,
			`{"content":{"displayname":"Al","membership":"join"},"event_id":"$n","origin_server_ts":2000,"room_id":"!r:example.org","sender":"@alice:example.org","state_key":"@alice:example.org","type":"m.room.member"}`},
		{"invite", f.invite,
			`{"content":{"membership":"invite"},"event_id":"$i","origin_server_ts":3000,"room_id":"!r:example.org","sender":"@alice:example.org","state_key":"@cactusbot:example.org","type":"m.room.member","unsigned":{"invite_room_state":[{"content":{"creator":"@alice:example.org","room_version":"10"},"state_key":"","type":"m.room.create","sender":"@alice:example.org"}]}}`},
		{"redaction before v11", f.redaction10,
			`{"content":{"reason":"spam"},"event_id":"$x","origin_server_ts":4000,"room_id":"!r:example.org","sender":"@alice:example.org","type":"m.room.redaction","redacts":"$m"}`},
		{"redaction from v11", f.redaction11,
			`{"content":{"reason":"spam","redacts":"$m"},"event_id":"$y","origin_server_ts":4000,"room_id":"!r:example.org","sender":"@alice:example.org","type":"m.room.redaction"}`},
	}
	for _, tc := range tests {
		if got := string(dendriteEvent(pushView{ev: tc.ev})); got != tc.want {
			t.Errorf("%s:\n got %s\nwant %s", tc.name, got, tc.want)
		}
	}
}

// TestConduitWireFormat pins continuwuity's to_format through serde_json's
// sorted maps.
func TestConduitWireFormat(t *testing.T) {
	f := newWireFixture()
	v10, v11 := versionOf("10"), versionOf("11")
	first := f.rename
	first.Unsigned = nil
	tests := []struct {
		name  string
		ev    event.Event
		rv    roomVersion
		txnID string
		want  string
	}{
		{"message sent with /send", f.message, v10, "t1",
			`{"content":{"body":"<b>&</b> é` + "\u2028" + `","msgtype":"m.text"},"event_id":"$m","origin_server_ts":1000,"room_id":"!r:example.org","sender":"@alice:example.org","type":"m.room.message","unsigned":{"transaction_id":"t1"}}`},
		{"state change", f.rename, v10, "",
			`{"content":{"displayname":"Al","membership":"join"},"event_id":"$n","origin_server_ts":2000,"room_id":"!r:example.org","sender":"@alice:example.org","state_key":"@alice:example.org","type":"m.room.member","unsigned":{"prev_content":{"membership":"join"},"prev_sender":"@alice:example.org","replaces_state":"$j"}}`},
		{"first state", first, v10, "",
			`{"content":{"displayname":"Al","membership":"join"},"event_id":"$n","origin_server_ts":2000,"room_id":"!r:example.org","sender":"@alice:example.org","state_key":"@alice:example.org","type":"m.room.member","unsigned":{}}`},
		{"invite", f.invite, v10, "",
			`{"content":{"membership":"invite"},"event_id":"$i","origin_server_ts":3000,"room_id":"!r:example.org","sender":"@alice:example.org","state_key":"@cactusbot:example.org","type":"m.room.member","unsigned":{}}`},
		{"redaction before v11", f.redaction10, v10, "",
			`{"content":{"reason":"spam","redacts":"$m"},"event_id":"$x","origin_server_ts":4000,"redacts":"$m","room_id":"!r:example.org","sender":"@alice:example.org","type":"m.room.redaction"}`},
		{"redaction from v11", f.redaction11, v11, "",
			`{"content":{"reason":"spam","redacts":"$m"},"event_id":"$y","origin_server_ts":4000,"redacts":"$m","room_id":"!r:example.org","sender":"@alice:example.org","type":"m.room.redaction"}`},
		{"redacted", f.redacted, v10, "t1",
			`{"content":{},"event_id":"$m","origin_server_ts":1000,"room_id":"!r:example.org","sender":"@alice:example.org","type":"m.room.message","unsigned":{"org.continuwuity.redacted_by":"$x"}}`},
	}
	for _, tc := range tests {
		if got := string(conduitEvent(pushView{ev: tc.ev, version: tc.rv, txnID: tc.txnID})); got != tc.want {
			t.Errorf("%s:\n got %s\nwant %s", tc.name, got, tc.want)
		}
	}
}

// pushAttempts are the event with id as each push attempt carried it, byte
// for byte, in order.
func (e *env) pushAttempts(id string) [][]byte {
	e.t.Helper()
	var out [][]byte
	for _, tx := range e.as.transactions() {
		var evs []jsontext.Value
		if err := json.Unmarshal(tx.Body["events"], &evs); err != nil {
			e.t.Fatalf("txn %s: %v", tx.ID, err)
		}
		for _, ev := range evs {
			if bytes.Contains(ev, []byte(`"event_id":"`+id+`"`)) {
				out = append(out, ev)
			}
		}
	}
	return out
}

// txnWith is the first transaction that carried the event.
func (e *env) txnWith(id string) seenTxn {
	e.t.Helper()
	if err := e.hs.WaitDelivered(ctxT(e.t), id); err != nil {
		e.t.Fatal(err)
	}
	for _, tx := range e.as.transactions() {
		if bytes.Contains(tx.Raw, []byte(`"event_id":"`+id+`"`)) {
			return tx
		}
	}
	e.t.Fatalf("%s not pushed", id)
	return seenTxn{}
}

// TestPushedFormatPerMode: what reaches the appservice is each server's
// own rendering, through the pusher: the body, the keys of an event and
// their order, the escaping of strings, age and unsigned.
func TestPushedFormatPerMode(t *testing.T) {
	body := "<b>&</b> é\u2028"
	tests := []struct {
		mode Mode
		// the message, as a JSON string, as pushed
		bodyJSON string
		// top-level keys of the message, and of the second topic
		msgKeys, topicKeys []string
		// unsigned of the message and of the second topic, without age
		msgUnsigned, topicUnsigned func(txnID, firstTopic string) map[string]any
		age                        bool
	}{
		{Synapse, `"<b>&</b> é` + "\u2028" + `"`,
			[]string{"age", "content", "event_id", "origin_server_ts", "room_id", "sender", "type", "unsigned", "user_id"},
			[]string{"age", "content", "event_id", "origin_server_ts", "prev_content", "replaces_state", "room_id", "sender", "state_key", "type", "unsigned", "user_id"},
			func(string, string) map[string]any { return map[string]any{} },
			func(_, first string) map[string]any {
				return map[string]any{"prev_content": map[string]any{"topic": "one"}, "prev_sender": "@cactusbot:example.org", "replaces_state": first}
			}, true},
		{Dendrite, `"\u003cb\u003e\u0026\u003c/b\u003e é\u2028"`,
			[]string{"content", "event_id", "origin_server_ts", "room_id", "sender", "type"},
			[]string{"content", "event_id", "origin_server_ts", "room_id", "sender", "state_key", "type"},
			nil, nil, false},
		{Conduit, `"<b>&</b> é` + "\u2028" + `"`,
			[]string{"content", "event_id", "origin_server_ts", "room_id", "sender", "type", "unsigned"},
			[]string{"content", "event_id", "origin_server_ts", "room_id", "sender", "state_key", "type", "unsigned"},
			func(txnID, _ string) map[string]any { return map[string]any{"transaction_id": txnID} },
			func(_, first string) map[string]any {
				return map[string]any{"prev_content": map[string]any{"topic": "one"}, "prev_sender": "@cactusbot:example.org", "replaces_state": first}
			}, false},
	}
	for _, tc := range tests {
		t.Run(string(tc.mode), func(t *testing.T) {
			e := startEnv(t, tc.mode)
			id, atok := watchedRoom(t, e)
			msg := e.mustOK(e.do("PUT", "/_matrix/client/v3/rooms/"+esc(id)+"/send/m.room.message/txn-1", atok, map[string]any{"msgtype": "m.text", "body": body})).str("event_id")
			first := e.mustOK(e.do("PUT", "/_matrix/client/v3/rooms/"+esc(id)+"/state/m.room.topic/", testASToken, map[string]any{"topic": "one"})).str("event_id")
			second := e.mustOK(e.do("PUT", "/_matrix/client/v3/rooms/"+esc(id)+"/state/m.room.topic/", testASToken, map[string]any{"topic": "two"})).str("event_id")

			tx := e.txnWith(msg)
			if !bytes.HasPrefix(tx.Raw, []byte(`{"events":[{`)) || !bytes.HasSuffix(tx.Raw, []byte(`}]}`)) {
				t.Fatalf("body %s", tx.Raw)
			}
			raw := e.pushedEvent(msg)
			if !bytes.Contains(raw, []byte(`"body":`+tc.bodyJSON)) {
				t.Errorf("message pushed as %s, want the body written %s", raw, tc.bodyJSON)
			}
			check := func(raw []byte, keys []string, unsigned map[string]any) {
				t.Helper()
				if got := names(topLevel(t, raw)); !slices.Equal(got, keys) {
					t.Errorf("keys %q, want %q: %s", got, keys, raw)
				}
				var ev struct {
					Age      *int64         `json:"age"`
					UserID   string         `json:"user_id"`
					Sender   string         `json:"sender"`
					Unsigned map[string]any `json:"unsigned"`
				}
				if err := json.Unmarshal(raw, &ev); err != nil {
					t.Fatal(err)
				}
				if tc.age {
					age, ok := ev.Unsigned["age"].(float64)
					if !ok || ev.Age == nil || float64(*ev.Age) != age || age < 0 {
						t.Errorf("age %v at the top level, unsigned %v", ev.Age, ev.Unsigned)
					}
					delete(ev.Unsigned, "age")
					if ev.UserID != ev.Sender {
						t.Errorf("user_id %q, sender %q", ev.UserID, ev.Sender)
					}
				}
				if !reflect.DeepEqual(ev.Unsigned, unsigned) && !(len(ev.Unsigned) == 0 && len(unsigned) == 0) {
					t.Errorf("unsigned %v, want %v", ev.Unsigned, unsigned)
				}
			}
			var mu, tu map[string]any
			if tc.msgUnsigned != nil {
				mu, tu = tc.msgUnsigned("txn-1", first), tc.topicUnsigned("txn-1", first)
			}
			check(raw, tc.msgKeys, mu)
			check(e.pushedEvent(second), tc.topicKeys, tu)
			if tc.mode == Synapse {
				var top struct {
					PrevContent   map[string]any `json:"prev_content"`
					ReplacesState string         `json:"replaces_state"`
				}
				_ = json.Unmarshal(e.pushedEvent(second), &top)
				if top.PrevContent["topic"] != "one" || top.ReplacesState != first {
					t.Errorf("top-level copies %+v", top)
				}
			}
		})
	}
}

// TestSynapseRetriesReadTheDatabase: Synapse sends the events it holds in
// memory once; a failed transaction is resent by its recoverer, which
// reads the events back without prev_content and prev_sender, and so are
// the transactions formed while the appservice is down. Once they are all
// through, new events carry them again. An appservice receiving ephemeral
// events gets those keys in every push, sorted with the rest of the body.
func TestSynapseRetriesReadTheDatabase(t *testing.T) {
	e := startEnv(t, Synapse, func(o *Options) { o.Registrations[0].ReceiveEphemeral = true })
	id, _ := watchedRoom(t, e)
	setTopic := func(topic string) string {
		return e.mustOK(e.do("PUT", "/_matrix/client/v3/rooms/"+esc(id)+"/state/m.room.topic/", testASToken, map[string]any{"topic": topic})).str("event_id")
	}
	first := setTopic("one")
	if err := e.hs.WaitDelivered(ctxT(t), first); err != nil {
		t.Fatal(err)
	}
	// The second topic's push is held, then fails; the third is made
	// meanwhile.
	block := make(chan struct{})
	e.mu(func() { e.as.failN, e.as.failWith, e.as.block = 1, 500, block })
	second := setTopic("two")
	e.as.waitFor(t, func() bool { return e.as.inflight == 1 })
	third := setTopic("three")
	e.mu(func() { e.as.block = nil })
	close(block)
	if err := e.hs.WaitDelivered(ctxT(t), third); err != nil {
		t.Fatal(err)
	}
	fourth := setTopic("four")
	if err := e.hs.WaitDelivered(ctxT(t), fourth); err != nil {
		t.Fatal(err)
	}

	hasPrev := func(raw []byte) bool {
		var ev struct {
			PrevContent json.RawMessage `json:"prev_content"`
			Unsigned    struct {
				PrevContent   json.RawMessage `json:"prev_content"`
				PrevSender    string          `json:"prev_sender"`
				ReplacesState string          `json:"replaces_state"`
			} `json:"unsigned"`
		}
		if err := json.Unmarshal(raw, &ev); err != nil || ev.Unsigned.ReplacesState == "" {
			t.Fatalf("%s: %v", raw, err)
		}
		return ev.PrevContent != nil && ev.Unsigned.PrevContent != nil && ev.Unsigned.PrevSender != ""
	}
	attempts := e.pushAttempts(second)
	if len(attempts) != 2 {
		t.Fatalf("%d attempts of the second topic, want 2", len(attempts))
	}
	for i, raw := range attempts {
		if hasPrev(raw) != (i == 0) {
			t.Errorf("attempt %d: prev_content present %v: %s", i+1, !(i == 0), raw)
		}
	}
	if a := e.pushAttempts(third); len(a) != 1 || hasPrev(a[0]) {
		t.Errorf("an event queued while the appservice was down, read back: %s", a)
	}
	if a := e.pushAttempts(fourth); len(a) != 1 || !hasPrev(a[0]) {
		t.Errorf("an event after recovery: %s", a)
	}
	for _, tx := range e.as.transactions() {
		if !bytes.HasPrefix(tx.Raw, []byte(`{"de.sorunome.msc2409.to_device":[],"ephemeral":[],"events":[{`)) {
			t.Fatalf("txn %s (status %d): body %.80s", tx.ID, tx.Status, tx.Raw)
		}
	}
	for _, r := range e.hs.Transactions() {
		if !r.Ephemeral {
			t.Fatalf("attempt %+v without ephemeral keys", r)
		}
	}
}

// TestRetryAfterARedaction: a message redacted while its push is being
// retried reaches the appservice as each server holds it: Dendrite resends
// the event it took from its stream, Synapse and continuwuity read it back
// redacted.
func TestRetryAfterARedaction(t *testing.T) {
	for _, mode := range []Mode{Synapse, Dendrite, Conduit} {
		t.Run(string(mode), func(t *testing.T) {
			e := startEnv(t, mode)
			id, atok := watchedRoom(t, e)
			if err := e.hs.WaitIdle(ctxT(t)); err != nil {
				t.Fatal(err)
			}
			e.mu(func() { e.as.failN, e.as.failWith = 1000, 500 })
			msg := sendMessages(t, e, id, atok, 1, "r")[0]
			e.as.waitFor(t, func() bool { return len(e.as.txns) > 0 })
			red := e.mustOK(e.do("PUT", "/_matrix/client/v3/rooms/"+esc(id)+"/redact/"+esc(msg)+"/x1", atok, map[string]any{"reason": "oops"})).str("event_id")
			// An attempt may be on its way, rendered before the redaction;
			// the one after it was not.
			before := len(e.pushAttempts(msg))
			e.as.waitFor(t, func() bool {
				n := 0
				for _, tx := range e.as.txns {
					if bytes.Contains(tx.Raw, []byte(msg)) {
						n++
					}
				}
				return n >= before+2
			})
			e.mu(func() { e.as.failN = 0 })
			if err := e.hs.WaitDelivered(ctxT(t), msg); err != nil {
				t.Fatal(err)
			}
			attempts := e.pushAttempts(msg)
			last := attempts[len(attempts)-1]
			if len(attempts) <= before {
				t.Fatalf("no retry after the redaction")
			}
			var ev struct {
				Content  map[string]any `json:"content"`
				Unsigned map[string]any `json:"unsigned"`
			}
			if err := json.Unmarshal(last, &ev); err != nil {
				t.Fatal(err)
			}
			switch mode {
			case Dendrite:
				if ev.Content["body"] != "m" || ev.Unsigned != nil {
					t.Errorf("dendrite resent %s", last)
				}
				if !bytes.Equal(last, attempts[0]) {
					t.Errorf("dendrite changed the event between attempts:\n%s\n%s", attempts[0], last)
				}
			case Synapse:
				because, _ := ev.Unsigned["redacted_because"].(map[string]any)
				if len(ev.Content) != 0 || because["event_id"] != red || because["user_id"] == nil {
					t.Errorf("synapse resent %s", last)
				}
			case Conduit:
				if len(ev.Content) != 0 || !reflect.DeepEqual(ev.Unsigned, map[string]any{"org.continuwuity.redacted_by": red}) {
					t.Errorf("continuwuity resent %s", last)
				}
			}
		})
	}
}

// FuzzAppendCanonical: for any valid JSON, the canonical form is valid,
// means the same (a strict reader reads the same value), is its own
// canonical form, and has no insignificant whitespace.
func FuzzAppendCanonical(f *testing.F) {
	for _, seed := range []string{`{"b":1,"a":[true,null,"\u00e9<"]}`, `"\u2028"`, `[1.5e3,-0]`, ` { "ſ" : { } } `} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		if !jsontext.Value(in).IsValid() {
			return
		}
		out, err := appendCanonical(nil, in)
		if err != nil {
			t.Fatalf("%s: %v", in, err)
		}
		if !jsontext.Value(out).IsValid() {
			t.Fatalf("%s: invalid output %s", in, out)
		}
		var a, b any
		errA, errB := event.DecodeContent(in, &a), event.DecodeContent(out, &b)
		if (errA == nil) != (errB == nil) || errA == nil && !reflect.DeepEqual(a, b) {
			t.Fatalf("%s read as %v (%v), canonical %s as %v (%v)", in, a, errA, out, b, errB)
		}
		again, _ := appendCanonical(nil, out)
		if !bytes.Equal(again, out) {
			t.Fatalf("not idempotent: %s then %s", out, again)
		}
		compact := jsontext.Value(slices.Clone(out))
		if err := compact.Compact(); err != nil || len(compact) > len(out) {
			t.Fatalf("%s has insignificant whitespace", out)
		}
	})
}
