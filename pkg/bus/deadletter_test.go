package bus

import (
	"bytes"
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/cactus-comments/appservice/pkg/embednats"
)

func TestDeadLetterIDDeduplicatesAndLargeDataIsTruncated(t *testing.T) {
	ctx := context.Background()
	_, _, js := embednats.JetStreamTest(t)
	if err := (Topology{Memory: true}).Ensure(ctx, js); err != nil {
		t.Fatal(err)
	}
	big := bytes.Repeat([]byte("x"), MaxDeadLetterData+10)
	for _, d := range []DeadLetter{
		{Source: "gateway", Reason: "no event_id", Data: []byte(`{"type":"m.room.message"}`), ID: "gateway:abc"},
		{Source: "gateway", Reason: "no event_id", Data: []byte(`{"type":"m.room.message"}`), ID: "gateway:abc"}, // the retried transaction
		{Source: "gateway", Reason: "too large", Data: big, ID: "gateway:big"},
		{Source: "botworker", Reason: "boom", Data: []byte("1"), Stream: StreamEvents, Sequence: 7}, // no ID: never deduplicated
		{Source: "botworker", Reason: "boom", Data: []byte("1")},
	} {
		if err := PublishDeadLetter(ctx, js, d); err != nil {
			t.Fatal(err)
		}
	}
	s, err := js.Stream(ctx, StreamDLQ)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 4 {
		t.Fatalf("dead letters stored: %d, want 4 (one per distinct ID, every one without)", info.State.Msgs)
	}
	raw, err := s.GetMsg(ctx, 2)
	if err != nil {
		t.Fatal(err)
	}
	if len(raw.Data) != MaxDeadLetterData || raw.Header.Get(HeaderTruncated) != strconv.Itoa(len(big)) {
		t.Fatalf("large dead letter kept %d bytes, truncated header %q", len(raw.Data), raw.Header.Get(HeaderTruncated))
	}
}

// TestDeadLetterHugeHeaderStored: a header value copied from the failed
// message (a 70 KB event type, a 65k transaction id) would make JetStream
// refuse the dead letter for good; it is kept in part.
func TestDeadLetterHugeHeaderStored(t *testing.T) {
	ctx := context.Background()
	_, _, js := embednats.JetStreamTest(t)
	if err := (Topology{Memory: true}).Ensure(ctx, js); err != nil {
		t.Fatal(err)
	}
	huge := strings.Repeat("t", 70_000)
	err := PublishDeadLetter(ctx, js, DeadLetter{Source: "gateway", Reason: huge, Subject: huge, Data: []byte("{}"),
		Header: nats.Header{HeaderEventType: {huge}, HeaderTxnID: {huge}}})
	if err != nil {
		t.Fatal(err)
	}
	s, err := js.Stream(ctx, StreamDLQ)
	if err != nil {
		t.Fatal(err)
	}
	m, err := s.GetMsg(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	for k, vs := range m.Header {
		for _, v := range vs {
			if len(v) > maxReason+len("…") {
				t.Errorf("header %s: %d bytes", k, len(v))
			}
		}
	}
}

// TestIsPermanentPublishError asks a real server: what JetStream refuses
// for good is permanent; a stream that is merely not there is not.
func TestIsPermanentPublishError(t *testing.T) {
	ctx := context.Background()
	_, nc, js := embednats.JetStreamTest(t)
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "T", Subjects: []string{"t.>"}, MaxMsgSize: 1024, Storage: jetstream.MemoryStorage}); err != nil {
		t.Fatal(err)
	}
	publish := func(subject string, data []byte, h nats.Header) error {
		_, err := js.PublishMsg(ctx, &nats.Msg{Subject: subject, Data: data, Header: h})
		return err
	}
	permanent := map[string]error{
		"larger than the stream takes": publish("t.a", make([]byte, 2048), nil),
		"headers over 64 KiB":          publish("t.a", []byte("x"), nats.Header{"X": {strings.Repeat("h", 70_000)}}),
		"larger than the server takes": publish("t.a", make([]byte, nc.MaxPayload()+1), nil),
	}
	for name, err := range permanent {
		if err == nil || !IsPermanentPublishError(err) {
			t.Errorf("%s: %v is not permanent", name, err)
		}
	}
	shortCtx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	_, err := js.Publish(shortCtx, "nostream.a", []byte("x"))
	if err == nil || IsPermanentPublishError(err) {
		t.Errorf("no stream: %v counted permanent", err)
	}
}

func TestReplayOrigin(t *testing.T) {
	if _, ok := ReplayOrigin(nats.Header{HeaderTxnID: {"t"}}); ok {
		t.Fatal("a message without replay headers read as a replay")
	}
	if _, ok := ReplayOrigin(nil); ok {
		t.Fatal("no header read as a replay")
	}
	h := nats.Header{}
	want := Origin{Stream: StreamEvents, Sequence: 42, Consumer: ConsumerModeration}
	SetReplayOrigin(h, want)
	if got, ok := ReplayOrigin(h); !ok || got != want {
		t.Fatalf("ReplayOrigin = %+v, %v; want %+v", got, ok, want)
	}
	// The sequence is what orders a replayed decision; one that cannot be
	// read is 0 (older than anything), never a guess.
	h.Set(HeaderReplaySequence, "not a number")
	if got, ok := ReplayOrigin(h); !ok || got.Sequence != 0 {
		t.Fatalf("ReplayOrigin with a bad sequence = %+v, %v", got, ok)
	}
}
