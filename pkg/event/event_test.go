package event

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

// ev is a valid event with members replaced ("key=value", value "-"
// removes the key) or appended.
func ev(members ...string) string {
	fields := [][2]string{
		{"event_id", `"$e"`}, {"type", `"m.room.member"`}, {"room_id", `"!r:x.org"`}, {"sender", `"@a:x.org"`},
		{"state_key", `"@a:x.org"`}, {"content", `{"membership":"join"}`}, {"origin_server_ts", `17`},
	}
outer:
	for _, m := range members {
		k, v, _ := strings.Cut(m, "=")
		for i := range fields {
			if fields[i][0] == k {
				fields[i][1] = v
				continue outer
			}
		}
		fields = append(fields, [2]string{k, v})
	}
	var parts []string
	for _, f := range fields {
		if f[1] != "-" {
			parts = append(parts, `"`+f[0]+`":`+f[1])
		}
	}
	return "{" + strings.Join(parts, ",") + "}"
}

func TestDecodeAccepts(t *testing.T) {
	tests := []struct {
		name string
		json string
		want func(*Event) bool
	}{
		{"member", ev(), func(e *Event) bool {
			return e.EventID == "$e" && e.Sender == "@a:x.org" && e.StateKeyIs("@a:x.org") && e.OriginServerTS == 17 && e.Membership() == "join"
		}},
		{"message, not state", ev(`type="m.room.message"`, "state_key=-", `content={"msgtype":"m.text","body":"hé 😀"}`), func(e *Event) bool {
			return !e.IsState() && string(e.Content) == `{"msgtype":"m.text","body":"hé 😀"}`
		}},
		{"null state_key is no state_key", ev("state_key=null"), func(e *Event) bool { return !e.IsState() }},
		{"empty state_key", ev(`state_key=""`), func(e *Event) bool { return e.StateKeyIs("") }},
		{"v12 room id", ev(`room_id="!abcDEF123_-"`), func(e *Event) bool { return e.RoomID == "!abcDEF123_-" }},
		{"surrogate pair", ev(`content={"membership":"join","displayname":"\ud83d\ude00"}`), func(e *Event) bool { return e.Membership() == "join" }},
		{"unknown keys ignored", ev(`age=5`, `user_id="@b:x.org"`, `prev_content={}`), func(e *Event) bool { return e.Sender == "@a:x.org" }},
		{"unsigned", ev(`unsigned={"prev_content":{"membership":"ban"}}`), func(e *Event) bool { return e.PrevMembership() == "ban" }},
		{"null origin_server_ts", ev("origin_server_ts=null"), func(e *Event) bool { return e.OriginServerTS == 0 }},
		{"negative zero", ev("origin_server_ts=-0"), func(e *Event) bool { return e.OriginServerTS == 0 }},
		{"whitespace", " \n" + ev() + "\t", func(e *Event) bool { return e.EventID == "$e" }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, err := Decode([]byte(tt.json))
			if err != nil {
				t.Fatalf("Decode(%s): %v", tt.json, err)
			}
			if !tt.want(e) {
				t.Fatalf("Decode(%s) = %+v", tt.json, e)
			}
		})
	}
}

// TestDecodeRefuses: everything a lenient decoder would read differently
// from a strict one, or that breaks the spec's grammar. The error names the
// culprit.
func TestDecodeRefuses(t *testing.T) {
	long := strings.Repeat("a", 256)
	tests := []struct{ name, json, mention string }{
		{"duplicate sender", strings.Replace(ev(), `"sender":"@a:x.org"`, `"sender":"@a:x.org","sender":"@b:x.org"`, 1), "duplicate"},
		{"case variant", ev(`Sender="@b:x.org"`), "Sender"},
		{"folded variant", ev("\u017fender=\"@b:x.org\""), "sender"},
		{"kelvin variant", ev("state_\u212aey=\"@b:x.org\""), "state_key"},
		{"escaped duplicate", ev(`s\u0065nder="@b:x.org"`), "duplicate"},
		{"duplicate deep in content", ev(`content={"membership":"join","x":[{"a":1,"a":2}]}`), "duplicate"},
		{"invalid UTF-8", ev("content={\"membership\":\"\xff\"}"), "UTF-8"},
		{"lone surrogate", ev(`content={"membership":"\ud800"}`), "surrogate"},
		{"lone low surrogate in id", ev(`event_id="$x_\udfff"`), "surrogate"},
		{"ts a string", ev(`origin_server_ts="yesterday"`), "origin_server_ts"},
		{"ts a fraction", ev(`origin_server_ts=1.5`), "origin_server_ts"},
		{"ts an exponent", ev(`origin_server_ts=1e3`), "origin_server_ts"},
		{"ts too large", ev(`origin_server_ts=9223372036854775808`), "origin_server_ts"},
		{"state_key a number", ev(`state_key=5`), "state_key"},
		{"content a string", ev(`content="x"`), "content"},
		{"content null", ev(`content=null`), "content"},
		{"no content", ev(`content=-`), "content"},
		{"unsigned an array", ev(`unsigned=[]`), "unsigned"},
		{"no event_id", ev(`event_id=-`), "event_id"},
		{"event_id without sigil", ev(`event_id="e"`), "event_id"},
		{"event_id not ASCII", ev(`event_id="$é"`), "event_id"},
		{"event_id with a space", ev(`event_id="$a b"`), "event_id"},
		{"event_id too long", ev(`event_id="$` + long + `"`), "event_id"},
		{"no type", ev(`type=-`), "type"},
		{"type too long", ev(`type="` + long + `"`), "type"},
		{"type with a line break", ev(`type="m.room.member\r\nX: y"`), "type"},
		{"room_id not ASCII", ev(`room_id="!é:x.org"`), "room_id"},
		{"room_id without sigil", ev(`room_id="r:x.org"`), "room_id"},
		{"no sender", ev(`sender=-`), "sender"},
		{"sender not a user id", ev(`sender="mallory"`), "sender"},
		{"state_key too long", ev(`state_key="` + long + `"`), "state_key"},
		{"redacts not an id", ev(`redacts="x"`), "redacts"},
		{"not an object", `[1]`, "array"},
		{"trailing data", ev() + "x", "after"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Decode([]byte(tt.json))
			if err == nil || !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), tt.mention) {
				t.Fatalf("Decode(%.300s) = %v, want ErrMalformed mentioning %q", tt.json, err, tt.mention)
			}
		})
	}
}

func TestMembershipReadsStrictly(t *testing.T) {
	tests := []struct {
		content, unsigned string
		membership, prev  string
	}{
		{`{"membership":"ban","reason":"spam"}`, ``, "ban", ""},
		{`{"membership":"leave"}`, `{"prev_content":{"membership":"ban"}}`, "leave", "ban"},
		{`{"membership":"join"}`, `{"age":5}`, "join", ""},
		// A case variant is another key, not the membership.
		{`{"Membership":"ban"}`, `{"prev_content":{"Membership":"ban"}}`, "", ""},
		{`{"membership":"join","membership":"ban"}`, `{"prev_content":{"membership":"join","membership":"ban"}}`, "", ""},
		{`{"membership":5}`, `{"prev_content":"garbage"}`, "", ""},
	}
	for _, tt := range tests {
		e := Event{Type: "m.room.member", Content: []byte(tt.content), Unsigned: []byte(tt.unsigned)}
		if got := e.Membership(); got != tt.membership {
			t.Errorf("%s: Membership = %q, want %q", tt.content, got, tt.membership)
		}
		if got := e.PrevMembership(); got != tt.prev {
			t.Errorf("%s: PrevMembership = %q, want %q", tt.unsigned, got, tt.prev)
		}
	}
	if (&Event{Type: "m.room.message", Content: []byte(`{"membership":"ban"}`)}).Membership() != "" {
		t.Error("a message has no membership")
	}
}

// TestEncodingJSONRoundTrip: services that write events (tests, the
// simulator's clients) use encoding/json; what they write reads back the
// same.
func TestEncodingJSONRoundTrip(t *testing.T) {
	in := ev(`unsigned={"age":1}`)
	e, err := Decode([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	out, err := json.Marshal(e)
	if err != nil {
		t.Fatal(err)
	}
	back, err := Decode(out)
	if err != nil {
		t.Fatalf("%s: %v", out, err)
	}
	if string(back.Content) != string(e.Content) || string(back.Unsigned) != string(e.Unsigned) || *back.StateKey != *e.StateKey || back.OriginServerTS != 17 {
		t.Fatalf("round trip changed the event:\n%s\n%s", in, out)
	}
}

func TestTruncate(t *testing.T) {
	if got := Truncate("short", 10); got != "short" {
		t.Errorf("Truncate(short) = %q", got)
	}
	if got := Truncate("ééééé", 3); got != "é…(10 bytes)" {
		t.Errorf("Truncate cuts mid-rune: %q", got)
	}
}

// TestMembershipReadsTheFieldAlone: a member event's membership is what
// the homeserver's auth rules read, whatever the rest of the content
// holds; every reader (routing, a kick told from an unban, a rebuild)
// sees the same one.
func TestMembershipReadsTheFieldAlone(t *testing.T) {
	for content, want := range map[string]string{
		`{"membership":"ban","reason":7}`:        "ban",
		`{"membership":"leave","displayname":5}`: "leave",
		`{"membership":"join"}`:                  "join",
		`{"membership":["ban"]}`:                 "",
		`{"membership":null}`:                    "",
		`{}`:                                     "",
		`"ban"`:                                  "",
	} {
		e := &Event{Type: "m.room.member", Content: []byte(content)}
		got, ok := e.MembershipField()
		if e.Membership() != want || got != want || ok != (want != "") {
			t.Errorf("%s: Membership %q, MembershipField %q %v; want %q", content, e.Membership(), got, ok, want)
		}
	}
}
