package gateway

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cactus-comments/appservice/pkg/bus"
)

// hostileEvent is a message event with one member replaced or added: the
// keys and values a remote server controls.
func hostileEvent(id string, members ...string) string {
	fields := map[string]string{
		"event_id":         fmt.Sprintf("%q", id),
		"type":             `"m.room.message"`,
		"room_id":          `"!r:example.org"`,
		"sender":           `"@mallory:evil.org"`,
		"content":          `{"msgtype":"m.text","body":"hi"}`,
		"origin_server_ts": `1700000000000`,
	}
	order := []string{"event_id", "type", "room_id", "sender", "content", "origin_server_ts"}
	var extra []string
	for _, m := range members {
		k, v, _ := strings.Cut(m, "=")
		if _, known := fields[k]; known {
			fields[k] = v
			continue
		}
		extra = append(extra, fmt.Sprintf("%q:%s", k, v))
	}
	var parts []string
	for _, k := range order {
		if v := fields[k]; v != "-" {
			parts = append(parts, fmt.Sprintf("%q:%s", k, v))
		}
	}
	return "{" + strings.Join(append(parts, extra...), ",") + "}"
}

// TestAmbiguousEventsDeadLettered: every event the consumers' decoder
// would read differently from the gateway, or not at all, goes to the
// dead-letter stream with its reason; the transaction is acknowledged and
// its good events stored.
func TestAmbiguousEventsDeadLettered(t *testing.T) {
	e := newEnv(t)
	long := strings.Repeat("a", 256)
	bad := []struct{ name, raw, reason string }{
		{"duplicate sender", hostileEvent("$dup") + "", ""}, // replaced below
		{"case variant of sender", hostileEvent("$case", `Sender="@alice:example.org"`), "sender"},
		{"folded variant of sender", hostileEvent("$fold", "\u017fender=\"@alice:example.org\""), "sender"},
		{"folded variant of state_key", hostileEvent("$kelvin", "state_\u212aey=\"@alice:example.org\""), "state_key"},
		{"duplicate in content", hostileEvent("$dupc", `content={"membership":"ban","membership":"join"}`), "duplicate"},
		{"duplicate deep in content", hostileEvent("$dupd", `content={"a":{"b":[{"c":1,"c":2}]}}`), "duplicate"},
		{"escaped duplicate", hostileEvent("$dupe", `content={"body":"a","b\u006fdy":"b"}`), "duplicate"},
		{"origin_server_ts a string", hostileEvent("$ts", `origin_server_ts="yesterday"`), "origin_server_ts"},
		{"origin_server_ts a fraction", hostileEvent("$tsf", `origin_server_ts=1.5`), "origin_server_ts"},
		{"content a string", hostileEvent("$cs", `content="hi"`), "content"},
		{"content null", hostileEvent("$cn", `content=null`), "content"},
		{"no content", hostileEvent("$nc", `content=-`), "content"},
		{"state_key a number", hostileEvent("$sk", `state_key=5`), "state_key"},
		{"unsigned an array", hostileEvent("$us", `unsigned=[]`), "unsigned"},
		{"invalid UTF-8 in content", hostileEvent("$utf", "content={\"body\":\"\xff\"}"), "UTF-8"},
		{"lone surrogate in content", hostileEvent("$sur", `content={"body":"\ud800"}`), "surrogate"},
		{"event id not ASCII", hostileEvent("$é"), "event_id"},
		{"event id too long", hostileEvent("$" + long), "event_id"},
		{"room id not ASCII", hostileEvent("$rna", `room_id="!é:example.org"`), "room_id"},
		{"sender not a user id", hostileEvent("$snu", `sender="mallory"`), "sender"},
		{"no sender", hostileEvent("$ns", `sender=-`), "sender"},
		{"type too long", hostileEvent("$tl", `type="`+long+`"`), "type"},
		{"state key too long", hostileEvent("$skl", `state_key="`+long+`"`), "state_key"},
	}
	bad[0].raw = strings.Replace(hostileEvent("$dup"), `"sender":"@mallory:evil.org"`, `"sender":"@mallory:evil.org","sender":"@alice:example.org"`, 1)
	bad[0].reason = "duplicate"
	events := []string{message("$good1", "!r:example.org")}
	for _, b := range bad {
		events = append(events, b.raw)
	}
	events = append(events, message("$good2", "!r:example.org"))
	status, body := e.do(http.MethodPut, "/_matrix/app/v1/transactions/hostile", txnBody(events...))
	if status != 200 {
		t.Fatalf("status %d body %s", status, body)
	}
	if got := e.eventIDs(); !slices.Equal(got, []string{"$good1", "$good2"}) {
		t.Errorf("event stream holds %q", got)
	}
	dl := e.stored(bus.StreamDLQ)
	byData := map[string]string{}
	for _, m := range dl {
		byData[string(m.Data)] = m.Header.Get(bus.HeaderReason)
	}
	for _, b := range bad {
		reason, ok := byData[b.raw]
		switch {
		case !ok:
			t.Errorf("%s: not dead-lettered", b.name)
		case !strings.Contains(reason, b.reason):
			t.Errorf("%s: reason %q does not mention %q", b.name, reason, b.reason)
		}
	}
	if len(dl) != len(bad) {
		t.Errorf("%d dead letters, want %d", len(dl), len(bad))
	}
}

// TestSurrogateEventIDsNotDropped: two event ids that a lenient decoder
// turns into the same string (each lone surrogate becomes U+FFFD) must not
// end as one stored event and one silently dropped duplicate.
func TestSurrogateEventIDsNotDropped(t *testing.T) {
	e := newEnv(t)
	a := hostileEvent(`$x_\ud800`)
	b := hostileEvent(`$x_\udfff`)
	// hostileEvent quotes the id with %q: undo the doubled backslash.
	a, b = strings.Replace(a, `\\u`, `\u`, 1), strings.Replace(b, `\\u`, `\u`, 1)
	status, body := e.do(http.MethodPut, "/_matrix/app/v1/transactions/sur", txnBody(a, b))
	if status != 200 {
		t.Fatalf("status %d body %s", status, body)
	}
	stored := e.eventIDs()
	dl := e.stored(bus.StreamDLQ)
	if len(stored)+len(dl) != 2 || len(stored) == 1 {
		t.Fatalf("stored %q and %d dead letters: both events must be stored or both dead-lettered", stored, len(dl))
	}
}

// TestDuplicateEventsKey: a transaction with two "events" arrays is
// ambiguous. It is acknowledged (the homeserver would resend it for
// ever otherwise) and every event of both arrays is dead-lettered.
func TestDuplicateEventsKey(t *testing.T) {
	e := newEnv(t)
	a, b := message("$first", "!r:example.org"), message("$second", "!r:example.org")
	status, body := e.do(http.MethodPut, "/_matrix/app/v1/transactions/dupkey", []byte(`{"events":[`+a+`],"events":[`+b+`]}`))
	if status != 200 {
		t.Fatalf("status %d body %s", status, body)
	}
	if got := e.eventIDs(); len(got) != 0 {
		t.Errorf("event stream holds %q from an ambiguous transaction", got)
	}
	dl := e.stored(bus.StreamDLQ)
	var got []string
	for _, m := range dl {
		got = append(got, string(m.Data))
		if r := m.Header.Get(bus.HeaderReason); !strings.Contains(r, `"events"`) {
			t.Errorf("reason %q does not name the duplicate key", r)
		}
	}
	if !slices.Equal(got, []string{a, b}) {
		t.Errorf("dead letters %q, want both events", got)
	}
}

// TestHugeTxnIDAndType: a transaction id or an event type JetStream could
// never carry in a header must not make the gateway answer 503 for ever.
func TestHugeTxnIDAndType(t *testing.T) {
	e := newEnv(t)
	txnID := strings.Repeat("7", 65_500)
	status, body := e.do(http.MethodPut, "/_matrix/app/v1/transactions/"+txnID, txnBody(message("$longtxn", "!r:example.org")))
	if status != 200 {
		t.Fatalf("65k txn id: status %d body %.200s", status, body)
	}
	msgs := e.stored(bus.StreamEvents)
	if len(msgs) != 1 {
		t.Fatalf("stored %d events", len(msgs))
	}
	if h := msgs[0].Header.Get(bus.HeaderTxnID); len(h) > 512 || !strings.HasPrefix(h, "777") {
		t.Errorf("txn id header of %d bytes", len(h))
	}

	bigType := hostileEvent("$bigtype", `type="`+strings.Repeat("t", 70_000)+`"`)
	status, body = e.do(http.MethodPut, "/_matrix/app/v1/transactions/bigtype", txnBody(bigType, message("$after", "!r:example.org")))
	if status != 200 {
		t.Fatalf("70 KB type: status %d body %.200s", status, body)
	}
	if got := e.eventIDs(); !slices.Equal(got, []string{"$longtxn", "$after"}) {
		t.Errorf("event stream holds %q", got)
	}
	dl := e.stored(bus.StreamDLQ)
	if len(dl) != 1 || string(dl[0].Data) != bigType {
		t.Fatalf("%d dead letters, want the 70 KB type", len(dl))
	}
	for k, vs := range dl[0].Header {
		for _, v := range vs {
			if len(v) > 4096 {
				t.Errorf("dead letter header %s of %d bytes", k, len(v))
			}
		}
	}
	for _, line := range strings.Split(e.logs.String(), "\n") {
		if len(line) > 8192 {
			t.Errorf("log line of %d bytes: %.200s…", len(line), line)
		}
	}
}

// TestPermanentRefusalDeadLettered: when JetStream refuses an event for
// good (here the stream takes smaller messages than the gateway assumed,
// as an operator may configure it), the event is dead-lettered and the
// transaction acknowledged, instead of a 503 the homeserver would retry
// for ever.
func TestPermanentRefusalDeadLettered(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := e.rt.JS.Stream(ctx, bus.StreamEvents)
	if err != nil {
		t.Fatal(err)
	}
	cfg := s.CachedInfo().Config
	cfg.MaxMsgSize = 2048
	if _, err := e.rt.JS.UpdateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	big := hostileEvent("$big", `content={"msgtype":"m.text","body":"`+strings.Repeat("b", 3000)+`"}`)
	status, body := e.do(http.MethodPut, "/_matrix/app/v1/transactions/refused", txnBody(message("$small", "!r:example.org"), big))
	if status != 200 {
		t.Fatalf("status %d body %s", status, body)
	}
	if got := e.eventIDs(); !slices.Equal(got, []string{"$small"}) {
		t.Errorf("event stream holds %q", got)
	}
	dl := e.stored(bus.StreamDLQ)
	if len(dl) != 1 || string(dl[0].Data) != big || !strings.Contains(dl[0].Header.Get(bus.HeaderReason), "maximum") {
		t.Fatalf("dead letters: %d", len(dl))
	}
}

// TestRepeatedEventID: an event id twice in one transaction is counted
// and logged; the same event is stored once, a different event under the
// same id is dead-lettered rather than dropped as JetStream's duplicate.
func TestRepeatedEventID(t *testing.T) {
	e := newEnv(t)
	a := message("$rep", "!r:example.org")
	other := hostileEvent("$rep", `content={"msgtype":"m.text","body":"something else"}`)
	status, body := e.do(http.MethodPut, "/_matrix/app/v1/transactions/rep", txnBody(a, a, other))
	if status != 200 {
		t.Fatalf("status %d body %s", status, body)
	}
	if got := e.eventIDs(); !slices.Equal(got, []string{"$rep"}) {
		t.Errorf("event stream holds %q", got)
	}
	dl := e.stored(bus.StreamDLQ)
	if len(dl) != 1 || string(dl[0].Data) != other || !strings.Contains(dl[0].Header.Get(bus.HeaderReason), "already used") {
		t.Fatalf("dead letters: %d", len(dl))
	}
	if got := counter(e.gw.metrics.eventsRepeated); got != 2 {
		t.Errorf("repeated metric = %v, want 2", got)
	}
	if !strings.Contains(e.logs.String(), "event repeated within a transaction") {
		t.Error("the repeated event is not logged")
	}
}

// TestUnreadableBodyDeadLettered: a complete, authenticated body that
// cannot be read as a transaction is stored whole as one dead letter and
// acknowledged: answering 400 would make the homeserver resend it for ever
// and deliver nothing behind it. Replaying it refuses it again.
func TestUnreadableBodyDeadLettered(t *testing.T) {
	e := newEnv(t)
	deep := `{"events":[{"content":` + strings.Repeat("[", maxDepth) + strings.Repeat("]", maxDepth) + `}]}`
	garbage := strings.Repeat("\x00", bus.MaxDeadLetterData+1000)
	cases := []struct{ name, body, reason string }{
		{"too deep", deep, "nesting"},
		{"BOM", "\ufeff" + string(txnBody(message("$bom", "!r:example.org"))), "not valid JSON"},
		{"data after the value", string(txnBody(message("$after", "!r:example.org"))) + "{}", "after the top-level value"},
		{"Events", `{"Events":[` + message("$Events", "!r:example.org") + `]}`, `"events"`},
		{"not JSON", `{"events":[`, "not valid JSON"},
		{"empty", "", "not valid JSON"},
		{"no events", `{"ephemeral":[]}`, `"events"`},
		{"events not an array", `{"events":{"event_id":"$x"}}`, "not an array"},
		{"an array", `[]`, "not an object"},
		{"large garbage", garbage, "not valid JSON"},
	}
	for i, c := range cases {
		status, body := e.do(http.MethodPut, fmt.Sprintf("/_matrix/app/v1/transactions/bad%d", i), []byte(c.body))
		if status != 200 {
			t.Fatalf("%s: status %d body %.200s", c.name, status, body)
		}
	}
	if status, body := e.do(http.MethodPut, "/_matrix/app/v1/transactions/good", txnBody(message("$good", "!r:example.org"))); status != 200 {
		t.Fatalf("good transaction: status %d body %s", status, body)
	}
	if got := e.eventIDs(); !slices.Equal(got, []string{"$good"}) {
		t.Errorf("event stream holds %q, want only the good transaction", got)
	}
	dl := e.stored(bus.StreamDLQ)
	if len(dl) != len(cases) {
		t.Fatalf("%d dead letters, want %d", len(dl), len(cases))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for i, c := range cases {
		m := dl[i]
		if r := m.Header.Get(bus.HeaderReason); !strings.Contains(r, c.reason) {
			t.Errorf("%s: reason %q does not say %q", c.name, r, c.reason)
		}
		if got := m.Header.Get(bus.HeaderTxnID); got != fmt.Sprintf("bad%d", i) {
			t.Errorf("%s: txn id header %q", c.name, got)
		}
		want := c.body
		if len(want) > bus.MaxDeadLetterData {
			if got := m.Header.Get(bus.HeaderTruncated); got != fmt.Sprint(len(c.body)) {
				t.Errorf("%s: truncated header %q, want the real size %d", c.name, got, len(c.body))
			}
			want = want[:bus.MaxDeadLetterData]
		}
		if string(m.Data) != want {
			t.Errorf("%s: dead letter holds %.100q, want the whole body", c.name, m.Data)
		}
		d := bus.DeadLetter{Source: "gateway", Data: m.Data, Header: m.Header}
		d.Truncated, _ = strconv.Atoi(m.Header.Get(bus.HeaderTruncated))
		if d.Truncated > 0 {
			continue // refused for being cut, as every truncated letter
		}
		if _, err := ReplayDeadLetter(ctx, e.rt.JS, testBot, d); err == nil || !strings.Contains(err.Error(), c.reason) {
			t.Errorf("%s: replay: %v, want a refusal saying %q", c.name, err, c.reason)
		}
	}
	if got := e.eventIDs(); !slices.Equal(got, []string{"$good"}) {
		t.Errorf("replays stored %q", got)
	}
	if got := counter(e.gw.metrics.deadLettered); got != float64(len(cases)) {
		t.Errorf("dead_lettered = %v", got)
	}
}

// TestEventsKeyVariants: a top-level key that differs from "events" only
// by case, escapes or Unicode folding makes the transaction as ambiguous
// as a second "events" key: another reader may take its array. Every event
// of every such array is dead-lettered; the transaction is acknowledged.
func TestEventsKeyVariants(t *testing.T) {
	e := newEnv(t)
	var want []string
	for i, variant := range []string{`EVENTS`, `Events`, `\u0045vents`, "event\u017f"} {
		a, b := message(fmt.Sprintf("$a%d", i), "!r:example.org"), message(fmt.Sprintf("$b%d", i), "!r:example.org")
		body := []byte(`{"events":[` + a + `],"` + variant + `":[` + b + `]}`)
		status, out := e.do(http.MethodPut, fmt.Sprintf("/_matrix/app/v1/transactions/variant%d", i), body)
		if status != 200 {
			t.Fatalf("%s: status %d body %s", variant, status, out)
		}
		want = append(want, a, b)
	}
	if got := e.eventIDs(); len(got) != 0 {
		t.Errorf("event stream holds %q from ambiguous transactions", got)
	}
	var got []string
	for _, m := range e.stored(bus.StreamDLQ) {
		got = append(got, string(m.Data))
		if r := m.Header.Get(bus.HeaderReason); !strings.Contains(r, `"events"`) {
			t.Errorf("reason %q does not name the key", r)
		}
	}
	if !slices.Equal(got, want) {
		t.Errorf("dead letters %q, want every event of both arrays", got)
	}
}
