package gateway

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/cactus-comments/appservice/services/gateway/loadgen"
)

func TestDecodeTransaction(t *testing.T) {
	deep := strings.Repeat("[", maxDepth) + strings.Repeat("]", maxDepth)
	tooDeep := strings.Repeat("[", maxDepth+1) + strings.Repeat("]", maxDepth+1)
	tests := []struct {
		name    string
		body    string
		wantErr error
		want    []rawEvent // only the fields set are compared
	}{
		{name: "empty body", body: "", wantErr: errNotJSON},
		{name: "whitespace", body: " \n", wantErr: errNotJSON},
		{name: "garbage", body: "PUT me", wantErr: errNotJSON},
		{name: "truncated", body: `{"events":[{"event_id":"$a"`, wantErr: errNotJSON},
		{name: "trailing data", body: `{"events":[]} {}`, wantErr: errNotJSON},
		{name: "trailing comma", body: `{"events":[],}`, wantErr: errNotJSON},
		{name: "control char in string", body: "{\"events\":[\"a\tb\"]}", wantErr: errNotJSON},
		{name: "bad escape", body: `{"events":["\x"]}`, wantErr: errNotJSON},
		{name: "bad number", body: `{"events":[01]}`, wantErr: errNotJSON},
		{name: "too deep", body: `{"events":[` + tooDeep + `]}`, wantErr: errNotJSON},
		{name: "array body", body: `[]`, wantErr: errBadJSON},
		{name: "null body", body: `null`, wantErr: errBadJSON},
		{name: "no events", body: `{"ephemeral":[]}`, wantErr: errBadJSON},
		{name: "events null", body: `{"events":null}`, wantErr: errBadJSON},
		{name: "events object", body: `{"events":{}}`, wantErr: errBadJSON},
		{name: "events overridden by a later key", body: `{"events":[],"events":1}`, wantErr: errBadJSON},
		{name: "empty", body: `{"events":[]}`, want: []rawEvent{}},
		{name: "deep but allowed", body: `{"events":[` + deep[2:len(deep)-2] + `]}`, want: []rawEvent{{Problem: "the event is an array, not an object"}}},
		{
			name: "one event, unknown keys ignored",
			body: ` {"ephemeral":[{"type":"m.typing"}], "events" : [ {"event_id":"$e1","type":"m.room.message","room_id":"!r:x","sender":"@u:x","content":{"body":"hi"},"origin_server_ts":1} ] , "de.sorunome.msc2409.to_device":[]} `,
			want: []rawEvent{{
				Raw:     []byte(`{"event_id":"$e1","type":"m.room.message","room_id":"!r:x","sender":"@u:x","content":{"body":"hi"},"origin_server_ts":1}`),
				EventID: "$e1", Type: "m.room.message", RoomID: []byte("!r:x"), Sender: []byte("@u:x"), Content: []byte(`{"body":"hi"}`),
			}},
		},
		{
			name: "state event with escapes",
			body: `{"events":[{"event_id":"$e\u0031","type":"m.room.member","room_id":"!r:x","sender":"@u:x","state_key":"@b\u00e9:x","content":{"membership":"ban"}}]}`,
			want: []rawEvent{{EventID: "$e1", Type: "m.room.member", RoomID: []byte("!r:x"), Sender: []byte("@u:x"), StateKey: []byte("@bé:x"), HasStateKey: true}},
		},
		{
			name: "escaped key names count",
			body: `{"ev\u0065nts":[{"event\u005fid":"$e1","type":"t","room_id":"!r:x"}]}`,
			want: []rawEvent{{EventID: "$e1", Type: "t", RoomID: []byte("!r:x")}},
		},
		{
			name: "later duplicate keys win",
			body: `{"events":[{"event_id":"$old","event_id":"$new","type":"t","room_id":"!r:x"}]}`,
			want: []rawEvent{{EventID: "$new", Type: "t", RoomID: []byte("!r:x")}},
		},
		{
			name: "malformed events do not fail the transaction",
			body: `{"events":[{"type":"t","room_id":"!r:x"},{"event_id":"$2","room_id":"!r:x"},{"event_id":"$3","type":"t"},` +
				`{"event_id":3,"type":"t","room_id":"!r:x"},"str",null,{"event_id":"","type":"t","room_id":"!r:x"},` +
				`{"event_id":"$8","type":"t","room_id":"!r:x","state_key":1},{"event_id":"$9","type":"t","room_id":"!r:x","origin_server_ts":1.5},` +
				`{"event_id":"$10","type":"t","room_id":"!r:x","sender":null,"state_key":null}]}`,
			want: []rawEvent{
				{Problem: "no event_id"}, {Problem: "no type"}, {Problem: "no room_id"},
				{Problem: "event_id is a number, not a string"}, {Problem: "the event is a string, not an object"},
				{Problem: "the event is null, not an object"}, {Problem: "empty event_id"},
				{Problem: "state_key is a number, not a string"}, {Problem: "origin_server_ts is not a 64-bit integer"},
				{EventID: "$10", Type: "t", RoomID: []byte("!r:x")},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := decodeTransaction([]byte(tt.body), nil)
			if !errors.Is(err, tt.wantErr) || (err != nil) != (tt.wantErr != nil) {
				t.Fatalf("error = %v, want %v", err, tt.wantErr)
			}
			if err != nil {
				return
			}
			if len(got) != len(tt.want) {
				t.Fatalf("got %d events, want %d: %+v", len(got), len(tt.want), got)
			}
			for i, w := range tt.want {
				g := got[i]
				if w.Raw != nil && !bytes.Equal(g.Raw, w.Raw) {
					t.Errorf("event %d raw = %s, want %s", i, g.Raw, w.Raw)
				}
				if w.Content != nil && !bytes.Equal(g.Content, w.Content) {
					t.Errorf("event %d content = %s, want %s", i, g.Content, w.Content)
				}
				if w.Problem != "" || g.Problem != "" {
					if g.Problem != w.Problem {
						t.Errorf("event %d problem = %q, want %q", i, g.Problem, w.Problem)
					}
					continue
				}
				if g.EventID != w.EventID || g.Type != w.Type || !bytes.Equal(g.RoomID, w.RoomID) ||
					!bytes.Equal(g.Sender, w.Sender) || !bytes.Equal(g.StateKey, w.StateKey) || g.HasStateKey != w.HasStateKey {
					t.Errorf("event %d = %+v, want %+v", i, g, w)
				}
			}
		})
	}
}

// reference decodes a transaction the slow, obvious way with encoding/json.
// It is what decodeTransaction must agree with.
func reference(body []byte) ([]rawEvent, error) {
	if !json.Valid(body) {
		return nil, errNotJSON
	}
	var top map[string]json.RawMessage
	if err := json.Unmarshal(body, &top); err != nil {
		return nil, errBadJSON
	}
	raw, ok := top["events"]
	if !ok || raw[0] != '[' {
		return nil, errBadJSON
	}
	var elems []json.RawMessage
	if err := json.Unmarshal(raw, &elems); err != nil {
		return nil, fmt.Errorf("reference: %w", err)
	}
	out := make([]rawEvent, 0, len(elems))
	for _, el := range elems {
		e := rawEvent{Raw: el}
		var m map[string]json.RawMessage
		if el[0] != '{' || json.Unmarshal(el, &m) != nil {
			e.Problem = "not an object"
			out = append(out, e)
			continue
		}
		str := func(name string, required bool) (string, bool) {
			v, ok := m[name]
			if !ok || string(v) == "null" {
				if required {
					e.Problem = "no " + name
				}
				return "", !required
			}
			var s string
			if err := json.Unmarshal(v, &s); err != nil {
				e.Problem = name + " not a string"
				return "", false
			}
			if required && s == "" {
				e.Problem = "empty " + name
				return "", false
			}
			return s, true
		}
		var ok bool
		if e.EventID, ok = str("event_id", true); !ok {
			out = append(out, e)
			continue
		}
		if e.Type, ok = str("type", true); !ok {
			out = append(out, e)
			continue
		}
		var room, sender, stateKey string
		if room, ok = str("room_id", true); !ok {
			out = append(out, e)
			continue
		}
		if sender, ok = str("sender", false); !ok {
			out = append(out, e)
			continue
		}
		if stateKey, ok = str("state_key", false); !ok {
			out = append(out, e)
			continue
		}
		e.RoomID, e.Sender, e.StateKey = []byte(room), []byte(sender), []byte(stateKey)
		if _, ok = str("redacts", false); !ok {
			out = append(out, e)
			continue
		}
		if v, has := m["state_key"]; has && string(v) != "null" {
			e.HasStateKey = true
		}
		e.Content = m["content"]
		if ts, has := m["origin_server_ts"]; has && string(ts) != "null" {
			var n int64
			if err := json.Unmarshal(ts, &n); err != nil {
				e.Problem = "bad origin_server_ts"
			}
		}
		out = append(out, e)
	}
	return out, nil
}

// FuzzDecodeTransaction checks the hand-written decoder against
// encoding/json on arbitrary input.
func FuzzDecodeTransaction(f *testing.F) {
	seeds := []string{
		``, `{}`, `[]`, `null`, `{"events":[]}`, `{"events":null}`, `{"events":[1,"x",null,[],{}]}`,
		`{"events":[{"event_id":"$a","type":"m.room.message","room_id":"!r:x","sender":"@u:x","content":{"body":"hé\u00e9\ud83d\ude00"},"origin_server_ts":1700000000000,"unsigned":{"age":1}}]}`,
		`{"events":[{"event_id":"$a","type":"m.room.member","room_id":"!r:x","state_key":"@b:x","content":{"membership":"leave"},"origin_server_ts":-0.5e3}]}`,
		`{"events":[{"event_id":"$a\"b","type":"t\\","room_id":"!r\/x","redacts":"$z","origin_server_ts":12345678901234567890}]}`,
		`{"events":[{"event_id":"$a","type":"t","room_id":"!r:x","state_key":""}],"ephemeral":[{"type":"m.receipt"}]}`,
		"{\"events\":[{\"event_id\":\"$\xff\xfe\",\"type\":\"t\",\"room_id\":\"!r:x\"}]}",
		`{"events":[{"event_id":"$1","event_id":2,"type":"t","room_id":"!r:x"}],"events":[{}]}`,
		`{"ev\u0065nts":[{"ROOM_ID":"!r","type":"t","event_id":"$e"}]}`,
		`{"events":[true,false,-1.0E+2,0,1e5]} `, ` {"events" : [ { } ] } `, `{"events":[{"a":[[[{}]]]}]}`,
		`{"events":["\u00"]}`, `{"events":[tru]}`, `{"events":[-]}`, `{"events":[1.]}`, `{"events":[1e]}`, `{"events"[]}`,
	}
	for _, s := range seeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		got, gotErr := decodeTransaction(body, nil)
		want, wantErr := reference(body)
		if !errors.Is(gotErr, wantErr) || (gotErr == nil) != (wantErr == nil) {
			t.Fatalf("decode(%q) error = %v, reference %v", body, gotErr, wantErr)
		}
		if gotErr != nil {
			return
		}
		if len(got) != len(want) {
			t.Fatalf("decode(%q): %d events, reference %d", body, len(got), len(want))
		}
		for i := range got {
			g, w := got[i], want[i]
			if !bytes.Equal(g.Raw, w.Raw) {
				t.Fatalf("event %d raw %q, reference %q", i, g.Raw, w.Raw)
			}
			if (g.Problem == "") != (w.Problem == "") {
				t.Fatalf("event %d of %q: problem %q, reference %q", i, body, g.Problem, w.Problem)
			}
			if g.Problem != "" {
				continue
			}
			if g.EventID != w.EventID || g.Type != w.Type || !bytes.Equal(g.RoomID, w.RoomID) || !bytes.Equal(g.Sender, w.Sender) ||
				!bytes.Equal(g.StateKey, w.StateKey) || g.HasStateKey != w.HasStateKey || !bytes.Equal(g.Content, w.Content) {
				t.Fatalf("event %d of %q:\n got %+v\nwant %+v", i, body, g, w)
			}
		}
	})
}

func BenchmarkDecodeTransaction(b *testing.B) {
	body := benchTransaction(100, 1024)
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	var events []rawEvent
	for b.Loop() {
		var err error
		if events, err = decodeTransaction(body, events); err != nil || len(events) != 100 {
			b.Fatal(err, len(events))
		}
	}
}

func BenchmarkDecodeTransactionEncodingJSON(b *testing.B) {
	body := benchTransaction(100, 1024)
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		var txn struct{ Events []json.RawMessage }
		if err := json.Unmarshal(body, &txn); err != nil {
			b.Fatal(err)
		}
		for _, raw := range txn.Events {
			var e struct {
				EventID, Type, RoomID, Sender string
				StateKey                      *string
				Content                       json.RawMessage
			}
			if err := json.Unmarshal(raw, &e); err != nil {
				b.Fatal(err)
			}
		}
	}
}

func benchTransaction(n, size int) []byte { return loadgen.Transaction("bench", 1, n, size) }

// TestHasStringStop checks the eight-bytes-at-a-time test against the
// byte table: every byte value at every position among various fillers,
// then random words.
func TestHasStringStop(t *testing.T) {
	check := func(w [8]byte) {
		want := false
		for _, c := range w {
			want = want || stringStop[c]
		}
		if got := hasStringStop(binary.LittleEndian.Uint64(w[:])); got != want {
			t.Fatalf("hasStringStop(% x) = %v, want %v", w, got, want)
		}
	}
	for _, fill := range []byte{'a', ' ', 0x21, 0x5d, 0x7f, 0x80, 0xa2, 0xdc, 0xff} {
		for pos := range 8 {
			for c := range 256 {
				var w [8]byte
				for i := range w {
					w[i] = fill
				}
				w[pos] = byte(c)
				check(w)
			}
		}
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for range 1_000_000 {
		var w [8]byte
		binary.LittleEndian.PutUint64(w[:], rng.Uint64())
		check(w)
	}
}
