package event

import (
	"encoding/json"
	"errors"
	"testing"
)

func decode(t *testing.T, s string) *Event {
	t.Helper()
	var e Event
	if err := json.Unmarshal([]byte(s), &e); err != nil {
		t.Fatalf("%s: %v", s, err)
	}
	return &e
}

func TestStateKey(t *testing.T) {
	tests := []struct {
		json    string
		isState bool
		key     string
	}{
		{`{"type":"m.room.message"}`, false, ""},
		{`{"type":"m.room.power_levels","state_key":""}`, true, ""},
		{`{"type":"m.room.member","state_key":"@a:x"}`, true, "@a:x"},
		{`{"type":"m.room.member","state_key":null}`, false, ""},
	}
	for _, tt := range tests {
		e := decode(t, tt.json)
		if e.IsState() != tt.isState {
			t.Errorf("%s: IsState = %v", tt.json, e.IsState())
		}
		if tt.isState && !e.StateKeyIs(tt.key) {
			t.Errorf("%s: StateKeyIs(%q) = false", tt.json, tt.key)
		}
		if e.StateKeyIs("@other:x") {
			t.Errorf("%s: StateKeyIs(other) = true", tt.json)
		}
	}
}

func TestMembership(t *testing.T) {
	tests := []struct {
		json       string
		membership string
		prev       string
	}{
		{`{"type":"m.room.member","state_key":"@a:x","content":{"membership":"ban","reason":"spam"}}`, "ban", ""},
		{`{"type":"m.room.member","state_key":"@a:x","content":{"membership":"leave"},"unsigned":{"prev_content":{"membership":"ban"}}}`, "leave", "ban"},
		{`{"type":"m.room.member","state_key":"@a:x","content":{"membership":"join"},"unsigned":{"age":5}}`, "join", ""},
		{`{"type":"m.room.member","state_key":"@a:x","content":"garbage","unsigned":{"prev_content":"garbage"}}`, "", ""},
		{`{"type":"m.room.member","state_key":"@a:x","unsigned":[]}`, "", ""},
		{`{"type":"m.room.message","content":{"membership":"ban"}}`, "", ""},
	}
	for _, tt := range tests {
		e := decode(t, tt.json)
		if got := e.Membership(); got != tt.membership {
			t.Errorf("%s: Membership = %q, want %q", tt.json, got, tt.membership)
		}
		if got := e.PrevMembership(); got != tt.prev {
			t.Errorf("%s: PrevMembership = %q, want %q", tt.json, got, tt.prev)
		}
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		json string
		ok   bool
	}{
		{`{"event_id":"$e","type":"m.room.message","room_id":"!r:x"}`, true},
		{`{"type":"m.room.message","room_id":"!r:x"}`, false},
		{`{"event_id":"$e","room_id":"!r:x"}`, false},
		{`{"event_id":"$e","type":"m.room.message"}`, false},
	}
	for _, tt := range tests {
		err := decode(t, tt.json).Validate()
		if (err == nil) != tt.ok || (err != nil && !errors.Is(err, ErrMalformed)) {
			t.Errorf("%s: Validate = %v", tt.json, err)
		}
	}
}

func TestRoundTripKeepsRawContent(t *testing.T) {
	in := `{"event_id":"$e","type":"m.room.message","room_id":"!r:x","sender":"@a:x","content":{"body":"hi","msgtype":"m.text","x":[1,2]},"origin_server_ts":17,"unsigned":{"age":1}}`
	e := decode(t, in)
	out, err := json.Marshal(e)
	if err != nil {
		t.Fatal(err)
	}
	var a, b map[string]any
	_ = json.Unmarshal([]byte(in), &a)
	_ = json.Unmarshal(out, &b)
	if ja, jb := mustJSON(a), mustJSON(b); ja != jb {
		t.Fatalf("round trip changed the event:\n%s\n%s", ja, jb)
	}
	var m Message
	if err := json.Unmarshal(e.Content, &m); err != nil || m.Body != "hi" || m.MsgType != "m.text" {
		t.Fatalf("message content %+v, %v", m, err)
	}
}

func mustJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

func TestTransactionIgnoresUnknownKeys(t *testing.T) {
	var tx Transaction
	body := `{"events":[{"event_id":"$a"},{"event_id":"$b"}],"ephemeral":[{"type":"m.typing"}],"de.sorunome.msc2409.to_device":[]}`
	if err := json.Unmarshal([]byte(body), &tx); err != nil || len(tx.Events) != 2 {
		t.Fatalf("transaction %+v, %v", tx, err)
	}
}
