package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/cactus-comments/appservice/pkg/bus"
	"github.com/cactus-comments/appservice/pkg/config"
	"github.com/cactus-comments/appservice/pkg/registry"
	"github.com/cactus-comments/appservice/pkg/service"
)

func TestTransactionStoresEvents(t *testing.T) {
	e := newEnv(t)
	const room, modRoom, dm = "!comments:example.org", "!moderation:example.org", "!dm:example.org"
	reg, err := registry.Open(context.Background(), e.rt.JS)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range []registry.Room{{Site: "blog", Section: "post", RoomID: room}, {Site: "blog", RoomID: modRoom}} {
		if err := reg.PutRoom(context.Background(), r); err != nil {
			t.Fatal(err)
		}
	}
	events := []string{
		message("$m1", room),
		message("$d1", dm),
		member("$j1", room, "@alice:example.org", "@alice:example.org", "join"),
		member("$b1", modRoom, "@owner:example.org", "@spam:example.org", "ban"),
		message("$mm1", modRoom),
		member("$u1", modRoom, "@owner:example.org", "@spam:example.org", "leave"),
		member("$i1", dm, "@owner:example.org", testBot, "invite"),
		`{"event_id":"$pl1","type":"m.room.power_levels","room_id":"!moderation:example.org","sender":"@owner:example.org","state_key":"","content":{"users":{}}}`,
		`{"event_id":"$t1","type":"m.room.tombstone","room_id":"!moderation:example.org","sender":"@owner:example.org","state_key":"","content":{"body":"upgraded","replacement_room":"!new"}}`,
	}
	// The bot's events are stored with their partition. Comments (a
	// message in one of our rooms) and visitors joining are read by no
	// worker: not stored.
	stored := (bus.Topology{}).StoredSubject
	want := map[string]string{ // event id -> subject
		"$d1":  stored(bus.ClassBot, dm),
		"$b1":  bus.EventSubject(bus.ClassModeration, modRoom),
		"$u1":  bus.EventSubject(bus.ClassModeration, modRoom),
		"$i1":  stored(bus.ClassBot, dm),
		"$pl1": bus.EventSubject(bus.ClassModeration, modRoom),
		"$t1":  bus.EventSubject(bus.ClassModeration, modRoom),
	}
	status, body := e.do(http.MethodPut, "/_matrix/app/v1/transactions/42", txnBody(events...))
	if status != 200 || string(body) != "{}" {
		t.Fatalf("status %d body %s", status, body)
	}
	raw := map[string]string{}
	for _, ev := range events {
		var v struct {
			EventID string `json:"event_id"`
		}
		_ = json.Unmarshal([]byte(ev), &v)
		raw[v.EventID] = ev
	}
	msgs := e.stored(bus.StreamEvents)
	if len(msgs) != len(want) {
		t.Errorf("stored %d messages, want %d", len(msgs), len(want))
	}
	for _, m := range msgs {
		id := m.Header.Get(bus.HeaderEventID)
		if m.Subject != want[id] {
			t.Errorf("%s on subject %s, want %s", id, m.Subject, want[id])
		}
		// The original bytes, unchanged.
		if string(m.Data) != raw[id] {
			t.Errorf("%s stored as %s, want %s", id, m.Data, raw[id])
		}
		if got := m.Header.Get(bus.HeaderTxnID); got != "42" {
			t.Errorf("%s txn header %q", id, got)
		}
		var ev struct{ Type string }
		_ = json.Unmarshal(m.Data, &ev)
		if got := m.Header.Get(bus.HeaderEventType); got != ev.Type {
			t.Errorf("%s type header %q, want %q", id, got, ev.Type)
		}
	}
	if got := counter(e.gw.metrics.eventsPublished[bus.ClassModeration]); got != 4 {
		t.Errorf("moderation events published metric = %v, want 4", got)
	}
	for kind, want := range map[string]float64{"comment": 2, "membership": 1, "bot": 0, "other": 0} {
		if got := counter(e.gw.metrics.eventsIgnored[slices.Index(ignoredKinds[:], kind)]); got != want {
			t.Errorf("events_ignored_total{kind=%q} = %v, want %v", kind, got, want)
		}
	}
}

// TestTransactionRetried: Synapse resends a failed transaction as is;
// Dendrite merges new events into the same txn id. An identical retry
// stores nothing again; any other is split again.
func TestTransactionRetried(t *testing.T) {
	e := newEnv(t)
	a, b, c := message("$a", "!r:example.org"), message("$b", "!r:example.org"), message("$c", "!r:example.org")
	steps := []struct {
		txn    string
		events []string
		want   []string
	}{
		{"100", []string{a, b}, []string{"$a", "$b"}},
		{"100", []string{a, b}, []string{"$a", "$b"}},                                     // Synapse retry
		{"100", []string{a, b, c}, []string{"$a", "$b", "$a", "$b", "$c"}},                // Dendrite merged retry
		{"101", []string{c, a}, []string{"$a", "$b", "$a", "$b", "$c", "$c", "$a"}},       // same events, new txn id
		{"100", []string{a, b, c, c}, []string{"$a", "$b", "$a", "$b", "$c", "$c", "$a"}}, // duplicate within a txn
	}
	for i, s := range steps {
		status, body := e.do(http.MethodPut, "/_matrix/app/v1/transactions/"+s.txn, txnBody(s.events...))
		if status != 200 {
			t.Fatalf("step %d: status %d body %s", i, status, body)
		}
		if got := e.eventIDs(); !slices.Equal(got, s.want) {
			t.Fatalf("step %d: stream holds %v, want %v", i, got, s.want)
		}
	}
	// An identical retry is one duplicate transaction message: nothing is
	// split again (steps 2, and 5 once its repeated $c is dropped: the
	// same bytes as step 3). A merged retry or the same events in a new
	// transaction are split, and the events stored before are stored
	// again (steps 3 and 4): the event stream keeps no duplicate window
	// of event ids, and the workers' done markers recognise them. The
	// copy of $c within the last transaction is dropped, and counted as
	// repeated.
	if got := counter(e.gw.metrics.txnMessagesDuplicate); got != 2 {
		t.Errorf("duplicate transaction messages = %v, want 2", got)
	}
	if got := counter(e.gw.metrics.eventsRepeated); got != 1 {
		t.Errorf("repeated-in-transaction metric = %v, want 1", got)
	}
}

func TestTransactionMalformedEventsDeadLettered(t *testing.T) {
	e := newEnv(t)
	bad := []struct{ raw, reason string }{
		{`{"type":"m.room.message","room_id":"!r:example.org","content":{}}`, "no event_id"},
		{`{"event_id":"$nt","room_id":"!r:example.org"}`, "no type"},
		{`{"event_id":"$nr","type":"m.room.message"}`, "no room_id"},
		{`{"event_id":"bad id","type":"m.room.message","room_id":"!r:example.org"}`, "event_id"},
		{`{"event_id":"$ctl","type":"m.room.message\r\nX: y","room_id":"!r:example.org"}`, "control character"},
		{`42`, "not an object"},
	}
	events := []string{message("$good1", "!r:example.org")}
	for _, b := range bad {
		events = append(events, b.raw)
	}
	events = append(events, message("$good2", "!r:example.org"))
	status, body := e.do(http.MethodPut, "/_matrix/app/v1/transactions/bad%0A1", txnBody(events...))
	if status != 200 {
		t.Fatalf("status %d body %s", status, body)
	}
	if got := e.eventIDs(); !slices.Equal(got, []string{"$good1", "$good2"}) {
		t.Fatalf("event stream holds %v", got)
	}
	dl := e.stored(bus.StreamDLQ)
	if len(dl) != len(bad) {
		t.Fatalf("dead-letter stream holds %d messages, want %d", len(dl), len(bad))
	}
	// What the decoder refuses is dead-lettered by the handler, the rest
	// by the splitter: by content, not in order.
	byData := map[string]jetstream.RawStreamMsg{}
	for _, m := range dl {
		byData[string(m.Data)] = m
	}
	for _, b := range bad {
		m, ok := byData[b.raw]
		if !ok {
			t.Errorf("%s not dead-lettered", b.raw)
			continue
		}
		if m.Subject != bus.DLQSubject("gateway") {
			t.Errorf("dead letter %s on %s", b.raw, m.Subject)
		}
		if r := m.Header.Get(bus.HeaderReason); !strings.Contains(r, b.reason) {
			t.Errorf("dead letter %s reason %q, want it to mention %q", b.raw, r, b.reason)
		}
		// A control character in the txn id is escaped, not sent raw.
		if h := m.Header.Get(bus.HeaderTxnID); h != "bad%0A1" {
			t.Errorf("dead letter %s txn header %q", b.raw, h)
		}
	}
	if got := counter(e.gw.metrics.deadLettered); got != float64(len(bad)) {
		t.Errorf("dead-lettered metric = %v", got)
	}
}

// TestTransactionHugeEvent: an event JetStream would refuse must not fail
// the transaction forever; it goes to the dead-letter stream.
func TestTransactionHugeEvent(t *testing.T) {
	e := newEnv(t, withConfig(func(c *config.Config) { c.MaxBodyBytes = 4 << 20 }))
	huge := fmt.Sprintf(`{"event_id":"$huge","type":"m.room.message","room_id":"!r:example.org","content":{"body":%q}}`, strings.Repeat("x", 1<<20))
	status, body := e.do(http.MethodPut, "/_matrix/app/v1/transactions/1", txnBody(message("$small", "!r:example.org"), huge))
	if status != 200 {
		t.Fatalf("status %d body %s", status, body)
	}
	if got := e.eventIDs(); !slices.Equal(got, []string{"$small"}) {
		t.Fatalf("event stream holds %v", got)
	}
	// The homeserver retries the same transaction: nothing is stored twice.
	if status, body := e.do(http.MethodPut, "/_matrix/app/v1/transactions/1", txnBody(message("$small", "!r:example.org"), huge)); status != 200 {
		t.Fatalf("retry: status %d body %s", status, body)
	}
	dl := e.stored(bus.StreamDLQ)
	if len(dl) != 1 {
		t.Fatalf("dead letters: %d, want 1", len(dl))
	}
	// Kept in part, with its real size: NATS could not carry it whole.
	if !strings.HasPrefix(huge, string(dl[0].Data)) || len(dl[0].Data) != bus.MaxDeadLetterData ||
		dl[0].Header.Get(bus.HeaderTruncated) != strconv.Itoa(len(huge)) ||
		!strings.Contains(dl[0].Header.Get(bus.HeaderReason), "larger than") {
		t.Fatalf("dead letter: %d bytes, truncated %q, reason %q", len(dl[0].Data), dl[0].Header.Get(bus.HeaderTruncated), dl[0].Header.Get(bus.HeaderReason))
	}
}

// TestTransactionBadBodies: bodies refused before they are whole (too
// large) get an error; a good chunked body is stored.
func TestTransactionBadBodies(t *testing.T) {
	e := newEnv(t, withConfig(func(c *config.Config) { c.MaxBodyBytes = 4096 }))
	big := txnBody(message("$big", "!r:example.org"), `{"pad":"`+strings.Repeat("x", 4096)+`"}`)
	tests := []struct {
		name    string
		body    []byte
		chunked bool
		status  int
		code    string
	}{
		{"too large", big, false, 413, "M_TOO_LARGE"},
		{"too large, chunked", big, true, 413, "M_TOO_LARGE"},
		{"small, chunked", txnBody(message("$chunked", "!r:example.org")), true, 200, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, out := e.putTxn(strings.ReplaceAll(tt.name, " ", "-"), tt.body, tt.chunked)
			if status != tt.status {
				t.Fatalf("status %d, want %d (%s)", status, tt.status, out)
			}
			if tt.status != 200 {
				if code := errcode(t, out); code != tt.code {
					t.Fatalf("errcode %s, want %s", code, tt.code)
				}
			}
		})
	}
	if got := e.eventIDs(); !slices.Equal(got, []string{"$chunked"}) {
		t.Fatalf("event stream holds %v, want only the good chunked transaction", got)
	}
}

// TestTransactionSlowJetStream: something takes the transaction message
// and never acknowledges it (a stuck JetStream): 503 at the publish
// timeout.
func TestTransactionSlowJetStream(t *testing.T) {
	e := newEnv(t, withConfig(func(c *config.Config) { c.PublishTimeout = 300 * time.Millisecond }))
	if err := e.rt.JS.DeleteStream(context.Background(), bus.StreamTxns); err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(e.ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	swallowed := make(chan *nats.Msg, 10)
	if _, err := nc.ChanSubscribe(bus.SubjectTxns, swallowed); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	status, body := e.do(http.MethodPut, "/_matrix/app/v1/transactions/1", txnBody(message("$slow", "!r:example.org")))
	if status != http.StatusServiceUnavailable {
		t.Fatalf("status %d body %s", status, body)
	}
	if code := errcode(t, body); code != "M_UNKNOWN" {
		t.Fatalf("errcode %s", code)
	}
	// Not a timing threshold: the answer must come from the publish
	// timeout, not from some other limit far beyond it.
	if d := time.Since(start); d < 300*time.Millisecond {
		t.Fatalf("answered after %v, before the publish timeout", d)
	}
	if len(swallowed) != 1 {
		t.Fatalf("%d transaction messages published, want 1", len(swallowed))
	}
	if got := counter(e.gw.metrics.publishFailures.WithLabelValues("timeout")); got != 1 {
		t.Fatalf("timeout failures = %v", got)
	}
}

// TestTransactionStreamMissing: JetStream refuses the transaction (no
// stream captures it): 503, nothing stored; once the topology is back, the
// retry is stored.
func TestTransactionStreamMissing(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	if err := e.rt.JS.DeleteStream(ctx, bus.StreamTxns); err != nil {
		t.Fatal(err)
	}
	body := txnBody(message("$x1", "!r:example.org"), message("$x2", "!r:example.org"))
	status, out := e.do(http.MethodPut, "/_matrix/app/v1/transactions/7", body)
	if status != http.StatusServiceUnavailable {
		t.Fatalf("status %d body %s", status, out)
	}
	if err := service.Topology(e.cfg).Ensure(ctx, e.rt.JS); err != nil {
		t.Fatal(err)
	}
	if got := counter(e.gw.metrics.publishFailures.WithLabelValues("refused")); got != 1 {
		t.Errorf("refused failures = %v", got)
	}
	if got := e.eventIDs(); len(got) != 0 {
		t.Fatalf("stream holds %v after a refused transaction", got)
	}
	status, out = e.do(http.MethodPut, "/_matrix/app/v1/transactions/7", body)
	if status != 200 {
		t.Fatalf("retry: status %d body %s", status, out)
	}
	if got := e.eventIDs(); !slices.Equal(got, []string{"$x1", "$x2"}) {
		t.Fatalf("stream holds %v", got)
	}
}

// TestTransactionNATSOutage: NATS down means 503 and nothing acknowledged;
// once NATS is back, the homeserver's retry is accepted and stored once.
func TestTransactionNATSOutage(t *testing.T) {
	e := newEnv(t)
	body := txnBody(message("$o1", "!r:example.org"), message("$o2", "!r:example.org"))
	if status, out := e.do(http.MethodPut, "/_matrix/app/v1/transactions/1", txnBody(message("$before", "!r:example.org"))); status != 200 {
		t.Fatalf("before the outage: %d %s", status, out)
	}

	e.ns.Stop()
	waitFor(t, "the client to notice the outage", func() bool { return !e.rt.NC.IsConnected() })
	for range 2 {
		status, out := e.do(http.MethodPut, "/_matrix/app/v1/transactions/2", body)
		if status != http.StatusServiceUnavailable {
			t.Fatalf("during the outage: %d %s", status, out)
		}
		if code := errcode(t, out); code != "M_UNKNOWN" {
			t.Fatalf("errcode %s", code)
		}
	}

	ns, err := e.ns.Restart()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ns.Shutdown)
	e.ns = ns
	waitFor(t, "the client to reconnect", e.rt.NC.IsConnected)
	if got := e.eventIDs(); !slices.Equal(got, []string{"$before"}) {
		t.Fatalf("after the outage the stream holds %v: events of refused transactions were stored", got)
	}
	status, out := e.do(http.MethodPut, "/_matrix/app/v1/transactions/2", body)
	if status != 200 {
		t.Fatalf("after the outage: %d %s", status, out)
	}
	if got := e.eventIDs(); !slices.Equal(got, []string{"$before", "$o1", "$o2"}) {
		t.Fatalf("stream holds %v", got)
	}
}

// TestTransactionsConcurrent: several homeservers (or a homeserver and its
// retries) at once; every event is stored exactly once.
func TestTransactionsConcurrent(t *testing.T) {
	e := newEnv(t)
	const senders, txns, perTxn = 4, 10, 20
	var wg sync.WaitGroup
	errs := make(chan error, senders*txns)
	for s := range senders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := range txns {
				var events []string
				for i := range perTxn {
					// Senders overlap: sender s repeats sender s-1's events.
					events = append(events, message(fmt.Sprintf("$c%d-%d-%d", (s/2)*2, n, i), "!r:example.org"))
				}
				req, _ := http.NewRequest(http.MethodPut, fmt.Sprintf("%s/_matrix/app/v1/transactions/%d-%d", e.srv.URL, s, n), bytes.NewReader(txnBody(events...)))
				req.Header.Set("Authorization", "Bearer "+testHSToken)
				resp, err := e.srv.Client().Do(req)
				if err != nil {
					errs <- err
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					errs <- fmt.Errorf("sender %d txn %d: status %d", s, n, resp.StatusCode)
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	ids := e.eventIDs()
	if want := senders / 2 * txns * perTxn; len(ids) != want {
		t.Fatalf("stored %d events, want %d", len(ids), want)
	}
	seen := map[string]bool{}
	for _, id := range ids {
		if seen[id] {
			t.Fatalf("%s stored twice", id)
		}
		seen[id] = true
	}
}

// waitFor polls cond: used only where NATS offers no signal to wait on.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestChunkedBodyAtTheLimit: without a Content-Length, a body of exactly
// the size limit is stored and one byte more is too large (413), as with a
// Content-Length; neither is mistaken for a busy gateway (503) when the
// budget holds twice the limit, as the default configuration does.
func TestChunkedBodyAtTheLimit(t *testing.T) {
	const limit = 32 << 10
	e := newEnv(t, withConfig(func(c *config.Config) { c.MaxBodyBytes, c.BodyBytesInFlight = limit, 2*limit }))
	ev := message("$full", "!r:example.org")
	pad := limit - len(txnBody(ev)) - len(`,{"pad":""}`)
	full := txnBody(ev, `{"pad":"`+strings.Repeat("x", pad)+`"}`)
	if len(full) != limit {
		t.Fatalf("body of %d bytes", len(full))
	}
	over := append(bytes.Clone(full[:len(full)-1]), ' ', '}')
	for _, c := range []struct {
		name    string
		body    []byte
		chunked bool
		status  int
	}{
		{"full, chunked", full, true, 200},
		{"full", full, false, 200},
		{"one byte over, chunked", over, true, 413},
		{"one byte over", over, false, 413},
		{"far over, chunked", append(bytes.Clone(full), bytes.Repeat([]byte(" "), limit)...), true, 413},
	} {
		if status, out := e.putTxn(strings.ReplaceAll(c.name, " ", "-"), c.body, c.chunked); status != c.status {
			t.Errorf("%s: status %d, want %d (%s)", c.name, status, c.status, out)
		}
	}
	if got := counter(e.gw.metrics.transactions.WithLabelValues(outcomeBusy)); got != 0 {
		t.Errorf("busy = %v", got)
	}
	if got := counter(e.gw.metrics.transactions.WithLabelValues(outcomeTooLarge)); got != 3 {
		t.Errorf("too_large = %v, want 3", got)
	}
}
