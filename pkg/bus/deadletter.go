package bus

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// DeadLetter is what an operator sees of a message that failed for good.
type DeadLetter struct {
	Source    string // consumer name or "gateway"
	Stream    string // stream the message came from, "" if never stored
	Sequence  uint64 // its sequence in Stream, 0 if never stored
	Subject   string // subject to replay to
	Reason    string
	Delivered int
	Data      []byte
	Header    nats.Header
	// ID names this failure. A second dead letter with the same ID within
	// the duplicate window is dropped: a homeserver retrying a transaction
	// with a malformed event, or a worker whose Term was lost, would
	// otherwise store the same failure twice. Empty: no deduplication.
	ID string
	// Truncated is the original size when Data was cut to
	// MaxDeadLetterData; 0 otherwise.
	Truncated int
}

// MaxDeadLetterData bounds what a dead letter keeps of the message. A
// Matrix event is at most 64 KiB, so real events are kept whole; a larger
// hostile one is kept in part, with its size, because NATS could not carry
// it whole (its default payload limit is 1 MiB) and refusing it would make
// the homeserver resend its transaction for ever.
const MaxDeadLetterData = 256 << 10

// PublishDeadLetter stores a dead letter with its reason (DeadLetterMsg).
func PublishDeadLetter(ctx context.Context, js jetstream.JetStream, d DeadLetter) error {
	if _, err := js.PublishMsg(ctx, DeadLetterMsg(d)); err != nil {
		return fmt.Errorf("dead-letter from %s: %w", d.Source, err)
	}
	return nil
}

// DeadLetterMsg is the message that stores d. The original headers are
// kept, except the message id, so a replay is not dropped as a duplicate
// of the original.
func DeadLetterMsg(d DeadLetter) *nats.Msg {
	m := nats.NewMsg(DLQSubject(d.Source))
	for k, vs := range d.Header {
		// Nats-Msg-Id would make a replay a duplicate of the original;
		// other Nats-* headers (expected stream or sequence, rollup, TTL)
		// would make JetStream refuse or misapply this publish.
		if strings.HasPrefix(strings.ToLower(k), "nats-") {
			continue
		}
		for _, v := range vs {
			// Bounded: a header JetStream cannot store would make the
			// dead letter itself fail for ever.
			m.Header.Add(k, headerValue(v))
		}
	}
	m.Header.Set(HeaderReason, headerValue(d.Reason))
	m.Header.Set(HeaderSource, headerValue(d.Subject))
	m.Header.Set(HeaderStream, d.Stream)
	if d.Sequence > 0 {
		m.Header.Set(HeaderSequence, strconv.FormatUint(d.Sequence, 10))
	}
	m.Header.Set(HeaderConsumer, d.Source)
	m.Header.Set(HeaderDelivered, strconv.Itoa(d.Delivered))
	m.Header.Set(HeaderFailedAt, time.Now().UTC().Format(time.RFC3339Nano))
	if d.ID != "" {
		m.Header.Set(HeaderMsgID, "dlq:"+headerValue(d.ID))
	}
	m.Data = d.Data
	if len(m.Data) > MaxDeadLetterData {
		m.Header.Set(HeaderTruncated, strconv.Itoa(len(m.Data)))
		m.Data = m.Data[:MaxDeadLetterData]
	}
	return m
}

// errCodeHeaderTooLarge is JetStream's refusal of headers over 64 KiB.
const errCodeHeaderTooLarge jetstream.ErrorCode = 10097

// IsPermanentPublishError reports whether JetStream or the NATS client
// refused a message in a way no retry can change: a message or headers
// larger than the stream or server takes, or a subject that is not one. A
// publisher should dead-letter such a message rather than fail for ever.
func IsPermanentPublishError(err error) bool {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		switch apiErr.ErrorCode {
		case jetstream.JSErrCodeStreamMessageExceedsMaximum, errCodeHeaderTooLarge:
			return true
		}
	}
	return errors.Is(err, nats.ErrMaxPayload) || errors.Is(err, nats.ErrBadSubject) || errors.Is(err, nats.ErrBadHeaderMsg)
}

// maxReason bounds every header value of a dead letter: handler errors can
// quote whole response bodies, and the gateway's headers quote what a
// homeserver sent.
const maxReason = 2048

// headerValue makes s safe as a NATS header value: a line break would end
// the header block early and corrupt the message, and JetStream refuses
// headers over 64 KiB.
func headerValue(s string) string {
	s = strings.Map(func(r rune) rune {
		if r == '\r' || r == '\n' {
			return ' '
		}
		return r
	}, s)
	if len(s) > maxReason {
		s = strings.ToValidUTF8(s[:maxReason], "") + "…"
	}
	return s
}

// ReadDeadLetter decodes a stored dead letter.
func ReadDeadLetter(m jetstream.Msg) DeadLetter {
	h := m.Headers()
	n, _ := strconv.Atoi(h.Get(HeaderDelivered))
	truncated, _ := strconv.Atoi(h.Get(HeaderTruncated))
	seq, _ := strconv.ParseUint(h.Get(HeaderSequence), 10, 64)
	return DeadLetter{
		Source:    h.Get(HeaderConsumer),
		Stream:    h.Get(HeaderStream),
		Sequence:  seq,
		Subject:   h.Get(HeaderSource),
		Reason:    h.Get(HeaderReason),
		Delivered: n,
		Data:      m.Data(),
		Header:    h,
		ID:        strings.TrimPrefix(h.Get(HeaderMsgID), "dlq:"),
		Truncated: truncated,
	}
}

// Origin is where a replayed message was first stored and who failed it.
type Origin struct {
	Stream   string
	Sequence uint64
	Consumer string
}

// SetReplayOrigin marks h as the replay of a message first stored at o.
func SetReplayOrigin(h nats.Header, o Origin) {
	h.Set(HeaderReplayStream, o.Stream)
	h.Set(HeaderReplaySequence, strconv.FormatUint(o.Sequence, 10))
	h.Set(HeaderReplayConsumer, o.Consumer)
}

// ReplayOrigin reports whether h marks a replayed dead letter, and where
// its original was stored. A replay of a message whose sequence was not
// recorded still counts as a replay, with Sequence 0.
func ReplayOrigin(h nats.Header) (Origin, bool) {
	if h == nil || h.Get(HeaderReplayConsumer) == "" && h.Get(HeaderReplayStream) == "" {
		return Origin{}, false
	}
	seq, _ := strconv.ParseUint(h.Get(HeaderReplaySequence), 10, 64)
	return Origin{Stream: h.Get(HeaderReplayStream), Sequence: seq, Consumer: h.Get(HeaderReplayConsumer)}, true
}
