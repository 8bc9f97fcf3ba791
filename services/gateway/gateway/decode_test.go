package gateway

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"math/rand/v2"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"github.com/go-json-experiment/json/jsontext"

	"github.com/cactus-comments/appservice/pkg/bus"
	"github.com/cactus-comments/appservice/pkg/event"
	"github.com/cactus-comments/appservice/services/gateway/loadgen"
)

func TestDecodeTransaction(t *testing.T) {
	deep := strings.Repeat("[", 9999) + strings.Repeat("]", 9999) // with the event object, the limit of 10000
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
		{name: "bad unicode escape", body: `{"events":["\ud80"]}`, wantErr: errNotJSON},
		{name: "bad number", body: `{"events":[01]}`, wantErr: errNotJSON},
		{name: "too deep for the consumers", body: `{"events":[{"content":` + deep[:len(deep)/2] + `[]` + deep[len(deep)/2:] + `}]}`, wantErr: errNotJSON},
		{name: "array body", body: `[]`, wantErr: errBadJSON},
		{name: "null body", body: `null`, wantErr: errBadJSON},
		{name: "no events", body: `{"ephemeral":[]}`, wantErr: errBadJSON},
		{name: "events null", body: `{"events":null}`, wantErr: errBadJSON},
		{name: "events object", body: `{"events":{}}`, wantErr: errBadJSON},
		{name: "events twice, neither an array", body: `{"events":1,"events":{}}`, wantErr: errBadJSON},
		{name: "empty", body: `{"events":[]}`, want: []rawEvent{}},
		{name: "as deep as the consumers allow", body: `{"events":[{"content":` + deep + `}]}`, want: []rawEvent{{}}},
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
			name: "events twice: every event of both is ambiguous",
			body: `{"events":[{"event_id":"$a"}],"x":1,"events":[{"event_id":"$b"},2],"events":3}`,
			want: []rawEvent{{Problem: `ambiguous transaction: 3 "events" keys`}, {Problem: `ambiguous transaction: 3 "events" keys`}, {Problem: `ambiguous transaction: 3 "events" keys`}},
		},
		{
			name: "what the consumers would refuse or misread is a problem",
			body: `{"events":[{"event_id":"$old","event_id":"$new"},{"sender":"@a:x","Sender":"@b:x"},{"\u017fender":"@b:x"},` +
				`{"content":{"a":[{"b":1,"\u0062":2}]}},{"content":"\ud800"},{"content":"\udc00\ud800"},{"content":"\ud800\u0041"},` +
				"{\"content\":\"\xff\"},{\"content\":\"\xed\xa0\x80\"}," +
				`{"event_id":3},{"state_key":1},{"origin_server_ts":1.5},{"origin_server_ts":1e3},{"origin_server_ts":9223372036854775808},` +
				`{"origin_server_ts":"1"},"str",null,{"content":"\ud83d\ude00","sender":null,"state_key":null,"Content2":1}]}`,
			want: []rawEvent{
				{Problem: `duplicate key "event_id"`}, {Problem: `key "Sender" is a variant of "sender"`}, {Problem: `key "ſender" is a variant of "sender"`},
				{Problem: `duplicate key "b"`}, {Problem: `lone surrogate \ud800 in a string`}, {Problem: `lone surrogate \udc00 in a string`},
				{Problem: `lone surrogate \ud800 in a string`}, {Problem: "invalid UTF-8 in a string"}, {Problem: "invalid UTF-8 in a string"},
				{Problem: "event_id is a number, not a string"}, {Problem: "state_key is a number, not a string"},
				{Problem: "origin_server_ts is not a 64-bit integer"}, {Problem: "origin_server_ts is not a 64-bit integer"},
				{Problem: "origin_server_ts is not a 64-bit integer"}, {Problem: "origin_server_ts is a string, not an integer"},
				{Problem: "the event is a string, not an object"}, {Problem: "the event is null, not an object"},
				{Content: []byte(`"\ud83d\ude00"`)},
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
				if w.EventID == "" {
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

// split is the reference for the structure of a body: with the lenient
// syntax of jsontext (duplicate names and invalid UTF-8 allowed, as they
// are errors of events, not of the body), whether the body is JSON, a
// transaction, and the bytes of the elements of its "events" arrays.
func split(body []byte) ([][]byte, error) {
	d := jsontext.NewDecoder(bytes.NewReader(body), jsontext.AllowDuplicateNames(true), jsontext.AllowInvalidUTF8(true))
	top, err := d.ReadValue()
	if err != nil {
		return nil, errNotJSON
	}
	top = top.Clone() // valid only until the next read
	if _, err := d.ReadToken(); err != io.EOF {
		return nil, errNotJSON
	}
	if top.Kind() != '{' {
		return nil, errBadJSON
	}
	d = jsontext.NewDecoder(bytes.NewReader(top), jsontext.AllowDuplicateNames(true), jsontext.AllowInvalidUTF8(true))
	_, _ = d.ReadToken()
	var elems [][]byte
	arrays, keys := 0, 0
	for d.PeekKind() != '}' {
		name, _ := d.ReadToken()
		if name.String() == "events" {
			keys++
		}
		// A variant of "events" (case, folding) holds events too: the
		// gateway returns them all, to be dead-lettered.
		if !strings.EqualFold(name.String(), "events") || d.PeekKind() != '[' {
			_ = d.SkipValue()
			continue
		}
		arrays++
		_, _ = d.ReadToken()
		for d.PeekKind() != ']' {
			v, _ := d.ReadValue()
			elems = append(elems, bytes.Clone(v))
		}
		_, _ = d.ReadToken()
	}
	if arrays == 0 || keys == 0 {
		return nil, errBadJSON
	}
	return elems, nil
}

// fuzzBodies are the fuzz targets' seed transactions.
var fuzzBodies = []string{
	``, `{}`, `[]`, `null`, `{"events":[]}`, `{"events":null}`, `{"events":[1,"x",null,[],{}]}`,
	`{"events":[{"event_id":"$a","type":"m.room.message","room_id":"!r:x.org","sender":"@u:x.org","content":{"body":"hé\u00e9\ud83d\ude00"},"origin_server_ts":1700000000000,"unsigned":{"age":1}}]}`,
	`{"events":[{"event_id":"$a","type":"m.room.member","room_id":"!r:x.org","sender":"@u:x.org","state_key":"@b:x.org","content":{"membership":"leave"},"unsigned":{"prev_content":{"membership":"ban"}},"origin_server_ts":-0}]}`,
	`{"events":[{"event_id":"$a","type":"m.room.member","room_id":"!r:x.org","sender":"@cactusbot:example.org","state_key":"@b:x.org","content":{"membership":"ban"}}]}`,
	`{"events":[{"event_id":"$a\"b","type":"t\\","room_id":"!r\/x","redacts":"$z","origin_server_ts":12345678901234567890}]}`,
	`{"events":[{"event_id":"$a","type":"t","room_id":"!r:x.org","sender":"@u:x.org","state_key":"","content":{}}],"ephemeral":[{"type":"m.receipt"}]}`,
	"{\"events\":[{\"event_id\":\"$\xff\xfe\",\"type\":\"t\",\"room_id\":\"!r:x\"}]}",
	`{"events":[{"event_id":"$1","event_id":2,"type":"t","room_id":"!r:x"}],"events":[{}]}`,
	`{"ev\u0065nts":[{"ROOM_ID":"!r","type":"t","event_id":"$e"}]}`,
	`{"events":[true,false,-1.0E+2,0,1e5]} `, ` {"events" : [ { } ] } `, `{"events":[{"a":[[[{}]]]}]}`,
	`{"events":["\u00"]}`, `{"events":[tru]}`, `{"events":[-]}`, `{"events":[1.]}`, `{"events":[1e]}`, `{"events"[]}`,
	// The cases of the hostile-input report.
	`{"events":[{"event_id":"$s","type":"m.room.member","room_id":"!r:x.org","sender":"@mallory:evil.org","Sender":"@alice:x.org","state_key":"@cactusbot:example.org","content":{"membership":"invite"}}]}`,
	`{"events":[{"event_id":"$s","type":"m.room.member","room_id":"!r:x.org","sender":"@mallory:evil.org","\u017fender":"@alice:x.org","state_key":"@cactusbot:example.org","content":{"membership":"invite"}}]}`,
	`{"events":[{"event_id":"$x_\ud800","type":"m.room.message","room_id":"!r:x.org","sender":"@u:x.org","content":{}},{"event_id":"$x_\udfff","type":"m.room.message","room_id":"!r:x.org","sender":"@u:x.org","content":{}}]}`,
	`{"events":[{"event_id":"$a","type":"m.room.message","room_id":"!r:x.org","sender":"@u:x.org","content":{}}],"events":[{"event_id":"$b","type":"m.room.message","room_id":"!r:x.org","sender":"@u:x.org","content":{}}]}`,
	`{"events":[{"event_id":"$t","type":"m.room.message","room_id":"!r:x.org","sender":"@u:x.org","content":{},"origin_server_ts":"yesterday"}]}`,
	`{"events":[{"event_id":"$a","type":"m.room.message","room_id":"!r:x.org","sender":"@u:x.org","content":{}}],"EVENTS":[{"event_id":"$b","type":"m.room.message","room_id":"!r:x.org","sender":"@u:x.org","content":{}}]}`,
	`{"Events":[{"event_id":"$a","type":"m.room.message","room_id":"!r:x.org","sender":"@u:x.org","content":{}}]}`,
	`{"events":{},"event\u017f":[{"event_id":"$a","type":"m.room.message","room_id":"!r:x.org","sender":"@u:x.org","content":{}}]}`,
	`{"events":[{"event_id":"$t","type":"` + strings.Repeat("t", 300) + `","room_id":"!r:x.org","sender":"@u:x.org","content":{}}]}`,
	`{"events":[{"event_id":"$p","type":"m.room.power_levels","room_id":"!r:x.org","sender":"@u:x.org","state_key":"","content":{"users":{"@u:x.org":100,"@u:x.org":0}}}]}`,
	`{"events":[{"event_id":"$k","type":"m.room.member","room_id":"!r:x.org","sender":"@u:x.org","state_\u212aey":"@b:x.org","state_key":"@u:x.org","content":{"Membership":"ban","membership":"join"}}]}`,
}

// FuzzDecodeTransaction is the oracle of the gateway: on any body, the
// decoder splits the body as jsontext does, and every event the gateway
// would store decodes with event.Decode, the consumers' decoder, to the
// same value in every field and the same class. An event event.Decode
// refuses or reads differently must have been dead-lettered.
func FuzzDecodeTransaction(f *testing.F) {
	for _, s := range fuzzBodies {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		got, gotErr := decodeTransaction(body, nil)
		want, wantErr := split(body)
		if wantErr == errNotJSON && gotErr == nil && bytes.Count(body, []byte("["))+bytes.Count(body, []byte("{")) > 10000 {
			// Deeper than jsontext takes a whole body, not deeper than
			// the consumers take an event.
			return
		}
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
			g := &got[i]
			if !bytes.Equal(g.Raw, want[i]) {
				t.Fatalf("event %d raw %q, reference %q", i, g.Raw, want[i])
			}
			if g.Problem == "" {
				g.class, g.Problem = checkEvent(g, string(g.RoomID), testBot, 1<<30)
			}
			ev, err := event.Decode(g.Raw)
			if g.Problem != "" {
				if err == nil && !strings.HasPrefix(g.Problem, "ambiguous transaction") {
					// Dead-lettering what the consumers read is safe but
					// loses the event from the stream: both must agree.
					t.Fatalf("event %d of %q: the gateway refuses it (%s), event.Decode reads it", i, body, g.Problem)
				}
				continue
			}
			if err != nil {
				t.Fatalf("event %d of %q: the gateway stores it, event.Decode refuses it: %v", i, body, err)
			}
			mine := g.event(string(g.RoomID))
			if !reflect.DeepEqual(&mine, ev) {
				t.Fatalf("event %d of %q:\ngateway %+v\nconsumer %+v", i, body, mine, *ev)
			}
			if c := bus.Classify(ev, testBot); c != g.class {
				t.Fatalf("event %d of %q: gateway class %s, consumer class %s", i, body, g.class, c)
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

func TestParseInt64(t *testing.T) {
	for _, s := range []string{"0", "-0", "1", "-1", "1700000000000", "9223372036854775807", "-9223372036854775808",
		"9223372036854775808", "-9223372036854775809", "18446744073709551616", "99999999999999999999", "1.5", "1e3", "-0.0"} {
		want, err := strconv.ParseInt(s, 10, 64)
		got, ok := parseInt64([]byte(s))
		if ok != (err == nil) || ok && got != want {
			t.Errorf("parseInt64(%s) = %d, %v; strconv says %d, %v", s, got, ok, want, err)
		}
	}
}
