package jspub

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/cactus-comments/appservice/pkg/embednats"
)

// setUp starts a server with stream T on t.> (messages of at most 1 KiB,
// deduplicated by Nats-Msg-Id) and a Publisher on a connection that, like
// the services', does not buffer while disconnected.
func setUp(t *testing.T) (*embednats.Server, *nats.Conn, jetstream.JetStream, *Publisher) {
	t.Helper()
	s, _, js := embednats.JetStreamTest(t)
	_, err := js.CreateStream(context.Background(), jetstream.StreamConfig{
		Name: "T", Subjects: []string{"t.>"}, MaxMsgSize: 1024, Duplicates: time.Minute, Storage: jetstream.MemoryStorage,
	})
	if err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(s.ClientURL(), nats.ReconnectBufSize(-1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	p, err := New(nc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return s, nc, js, p
}

func msgs(subject, run string, first, last int) []*nats.Msg {
	var out []*nats.Msg
	for i := first; i <= last; i++ {
		m := nats.NewMsg(subject)
		m.Header.Set(jetstream.MsgIDHeader, fmt.Sprintf("%s-%d", run, i))
		m.Data = []byte(strconv.Itoa(i))
		out = append(out, m)
	}
	return out
}

func wait(t *testing.T, b *Batch) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	return b.Wait(ctx)
}

// storedIDs lists the message ids of stream T in stream order.
func storedIDs(t *testing.T, js jetstream.JetStream) []string {
	t.Helper()
	ctx := context.Background()
	s, err := js.Stream(ctx, "T")
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for seq := info.State.FirstSeq; info.State.Msgs > 0 && seq <= info.State.LastSeq; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, m.Header.Get(jetstream.MsgIDHeader))
	}
	return ids
}

func TestStoredOnceAndDuplicatesCounted(t *testing.T) {
	_, _, js, p := setUp(t)
	b := p.Publish(msgs("t.a", "r", 0, 99))
	if err := wait(t, b); err != nil {
		t.Fatal(err)
	}
	if b.Duplicates() != 0 || b.Len() != 100 {
		t.Fatalf("%d duplicates of %d messages, want 0 of 100", b.Duplicates(), b.Len())
	}
	// A retry holding 50 stored messages and 50 new ones.
	b = p.Publish(msgs("t.a", "r", 50, 149))
	if err := wait(t, b); err != nil {
		t.Fatal(err)
	}
	if b.Duplicates() != 50 || !b.Duplicate(0) || b.Duplicate(50) {
		t.Fatalf("%d duplicates (first %v, 51st %v), want 50 (true, false)", b.Duplicates(), b.Duplicate(0), b.Duplicate(50))
	}
	for i := range b.Len() {
		if err := b.MessageErr(i); err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
	}
	if n := len(storedIDs(t, js)); n != 150 {
		t.Fatalf("%d messages stored, want 150", n)
	}
}

// TestOrderAcrossBatchesInFlight: batches published from one goroutine
// without waiting are stored in publish order.
func TestOrderAcrossBatchesInFlight(t *testing.T) {
	_, _, js, p := setUp(t)
	var batches []*Batch
	var want []string
	for k := range 50 {
		ms := msgs("t.room"+strconv.Itoa(k%7), "o"+strconv.Itoa(k), 0, 9)
		for _, m := range ms {
			want = append(want, m.Header.Get(jetstream.MsgIDHeader))
		}
		batches = append(batches, p.Publish(ms))
	}
	for _, b := range batches {
		if err := wait(t, b); err != nil {
			t.Fatal(err)
		}
	}
	got := storedIDs(t, js)
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("stored in another order than published:\n got %v\nwant %v", got, want)
	}
}

// TestOutcomesPerMessage: a message JetStream refuses fails alone, with
// JetStream's error; one the connection refuses likewise.
func TestOutcomesPerMessage(t *testing.T) {
	_, nc, js, p := setUp(t)
	ms := msgs("t.a", "m", 0, 4)
	ms[1].Data = make([]byte, 2048)                 // larger than the stream takes
	ms[3].Data = make([]byte, nc.MaxPayload()+1024) // larger than the server takes
	b := p.Publish(ms)
	err := wait(t, b)
	if err == nil {
		t.Fatal("no error for a batch with refused messages")
	}
	var apiErr *jetstream.APIError
	if e := b.MessageErr(1); !errors.As(e, &apiErr) || apiErr.ErrorCode != jetstream.JSErrCodeStreamMessageExceedsMaximum {
		t.Errorf("message 1: %v, want JetStream's too-large error", e)
	}
	if e := b.MessageErr(3); !errors.Is(e, nats.ErrMaxPayload) {
		t.Errorf("message 3: %v, want nats.ErrMaxPayload", e)
	}
	for _, i := range []int{0, 2, 4} {
		if e := b.MessageErr(i); e != nil {
			t.Errorf("message %d: %v", i, e)
		}
	}
	if got := storedIDs(t, js); fmt.Sprint(got) != "[m-0 m-2 m-4]" {
		t.Errorf("stored %v", got)
	}
}

func TestNoStream(t *testing.T) {
	_, _, _, p := setUp(t)
	b := p.Publish(msgs("nostream.a", "n", 0, 2))
	if err := wait(t, b); !errors.Is(err, ErrNoStream) {
		t.Fatalf("Wait = %v, want ErrNoStream", err)
	}
	for i := range 3 {
		if !errors.Is(b.MessageErr(i), ErrNoStream) {
			t.Errorf("message %d: %v", i, b.MessageErr(i))
		}
	}
}

// TestAbandonedAfterDeadline: something takes the messages but never
// acknowledges them in time (a stuck JetStream): Wait fails at its
// context's end, and an ack arriving after that changes nothing.
func TestAbandonedAfterDeadline(t *testing.T) {
	s, _, _, p := setUp(t)
	other, err := nats.Connect(s.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	held := make(chan *nats.Msg, 10)
	if _, err := other.ChanSubscribe("stuck.>", held); err != nil {
		t.Fatal(err)
	}
	if err := other.Flush(); err != nil {
		t.Fatal(err)
	}
	b := p.Publish(msgs("stuck.a", "s", 0, 1))
	first := <-held
	if err := first.Respond([]byte(`{"stream":"X","seq":1}`)); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	err = b.Wait(ctx)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Wait = %v, want the deadline", err)
	}
	if b.MessageErr(0) != nil {
		t.Errorf("the acknowledged message failed: %v", b.MessageErr(0))
	}
	second := <-held
	if err := second.Respond([]byte(`{"stream":"X","seq":2}`)); err != nil {
		t.Fatal(err)
	}
	if err := other.Flush(); err != nil {
		t.Fatal(err)
	}
	// The late ack is dropped: the batch stays failed.
	if err := p.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	if b.MessageErr(1) == nil {
		t.Error("a late ack revived an abandoned message")
	}
}

func TestNATSDown(t *testing.T) {
	s, _, _, p := setUp(t)
	s.Stop()
	b := p.Publish(msgs("t.a", "d", 0, 2))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := b.Wait(ctx); err == nil || errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Wait = %v, want the connection's refusal at once", err)
	}
}

func TestClose(t *testing.T) {
	s, _, _, p := setUp(t)
	other, err := nats.Connect(s.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if _, err := other.Subscribe("silent.>", func(*nats.Msg) {}); err != nil {
		t.Fatal(err)
	}
	if err := other.Flush(); err != nil {
		t.Fatal(err)
	}
	b := p.Publish(msgs("silent.a", "c", 0, 1))
	p.Close()
	if err := wait(t, b); !errors.Is(err, ErrClosed) {
		t.Fatalf("Wait = %v, want ErrClosed", err)
	}
	if err := wait(t, p.Publish(msgs("t.a", "c", 2, 2))); !errors.Is(err, ErrClosed) {
		t.Fatalf("Publish after Close: %v, want ErrClosed", err)
	}
}

func TestConcurrentBatches(t *testing.T) {
	_, _, js, p := setUp(t)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for k := range 20 {
				b := p.Publish(msgs("t.c"+strconv.Itoa(g), fmt.Sprintf("g%d-%d", g, k), 0, 9))
				if err := wait(t, b); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if n := len(storedIDs(t, js)); n != 8*20*10 {
		t.Fatalf("%d stored, want %d", n, 8*20*10)
	}
	if len(p.batches) != 0 {
		t.Fatalf("%d batches still registered", len(p.batches))
	}
}

func TestScanAck(t *testing.T) {
	tests := []struct {
		data string
		seq  uint64
		dup  bool
		err  bool
	}{
		{`{"stream":"CACTUS_EVENTS","seq":12}`, 12, false, false},
		{`{"stream":"CACTUS_EVENTS","seq":12,"duplicate":true}`, 12, true, false},
		{`{"stream":"CACTUS_EVENTS","domain":"hub","seq":12}`, 12, false, false},
		{`{"stream":"error","seq":3}`, 3, false, false},
		{`{"stream":"duplicate","seq":3}`, 3, false, false},
		{`{"stream":"seq","seq":18446744073709551615}`, 18446744073709551615, false, false},
		{`{"seq":3,"stream":"S","duplicate":true}`, 3, true, false},
		{`{"stream":"S","seq":1e3}`, 0, false, true}, // not digits: decoded, refused
		{`{"stream":"S","seq":-1}`, 0, false, true},
		{`{"error":{"code":503,"err_code":10077,"description":"maximum messages exceeded"},"stream":"CACTUS_EVENTS","seq":0}`, 0, false, true},
		{`{"stream":"S","error":{"code":400,"err_code":10054,"description":"message size exceeds maximum allowed"}}`, 0, false, true},
		{``, 0, false, true},
		{`not json`, 0, false, true},
		{`{"seq":1}`, 0, false, true},
	}
	for _, tt := range tests {
		seq, dup, err := scanAck(&nats.Msg{Data: []byte(tt.data)})
		if seq != tt.seq || dup != tt.dup || (err != nil) != tt.err {
			t.Errorf("%q: seq %d, duplicate %v, err %v; want %d, %v, error %v", tt.data, seq, dup, err, tt.seq, tt.dup, tt.err)
		}
	}
}

// TestPublishPartly: messages sent without a reply are stored in order
// between their confirmed neighbours, whose sequences tell how many were
// stored; one JetStream refuses is dropped without a word, and the gap
// shows.
func TestPublishPartly(t *testing.T) {
	_, _, js, p := setUp(t)
	confirm := make([]bool, 10)
	confirm[0], confirm[9] = true, true
	b := p.PublishPartly(msgs("t.a", "r", 0, 9), confirm)
	if err := wait(t, b); err != nil {
		t.Fatal(err)
	}
	if got := b.Seq(9) - b.Seq(0); got != 9 {
		t.Fatalf("sequences %d and %d: want 9 apart", b.Seq(0), b.Seq(9))
	}
	if !errors.Is(b.MessageErr(5), ErrUnconfirmed) || b.Seq(5) != 0 || b.MessageErr(9) != nil {
		t.Fatalf("unconfirmed message: err %v, seq %d; confirmed: %v", b.MessageErr(5), b.Seq(5), b.MessageErr(9))
	}
	if n := len(storedIDs(t, js)); n != 10 {
		t.Fatalf("%d stored, want 10", n)
	}

	// The stream takes at most 1 KiB: the third message is refused.
	ms := msgs("t.a", "s", 0, 4)
	ms[2].Data = make([]byte, 2048)
	b = p.PublishPartly(ms, []bool{true, false, false, false, true})
	if err := wait(t, b); err != nil {
		t.Fatal(err)
	}
	if got := b.Seq(4) - b.Seq(0); got != 3 {
		t.Fatalf("sequences %d apart around a refused unconfirmed message, want 3", got)
	}

	// Every message unconfirmed: the batch is done at once.
	b = p.PublishPartly(msgs("t.a", "u", 0, 2), make([]bool, 3))
	select {
	case <-b.Done():
	default:
		t.Fatal("a batch without confirmed messages is not done")
	}
}

func TestParseReply(t *testing.T) {
	tests := []struct {
		subject string
		id      uint64
		i       int
		ok      bool
	}{
		{"_INBOX.x.12.0", 12, 0, true},
		{"_INBOX.x.1.99", 1, 99, true},
		{"_INBOX.x.1", 0, 0, false},
		{"_INBOX.x..1", 0, 0, false},
		{"_INBOX.x.1.", 0, 0, false},
		{"_INBOX.x.a.1", 0, 0, false},
		{"_INBOX.y.1.1", 0, 0, false},
		{"_INBOX.x.1.2.3", 0, 0, false},
		{"_INBOX.x.99999999999999999999.1", 0, 0, false},
	}
	for _, tt := range tests {
		id, i, ok := parseReply(tt.subject, "_INBOX.x.")
		if id != tt.id || i != tt.i || ok != tt.ok {
			t.Errorf("%s: %d %d %v, want %d %d %v", tt.subject, id, i, ok, tt.id, tt.i, tt.ok)
		}
	}
	if got := string(appendUint(nil, 1234567890)); got != "1234567890" {
		t.Errorf("appendUint = %s", got)
	}
}
