package bus

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// DeadLetter is what an operator sees of a message that failed for good.
type DeadLetter struct {
	Source    string // consumer name or "gateway"
	Stream    string // stream the message came from, "" if never stored
	Subject   string // subject to replay to
	Reason    string
	Delivered int
	Data      []byte
	Header    nats.Header
}

// PublishDeadLetter stores a dead letter with its reason. The original
// headers are kept, except the message id, so a replay is not dropped as a
// duplicate of the original.
func PublishDeadLetter(ctx context.Context, js jetstream.JetStream, d DeadLetter) error {
	m := nats.NewMsg(DLQSubject(d.Source))
	for k, vs := range d.Header {
		if k == HeaderMsgID {
			continue
		}
		for _, v := range vs {
			m.Header.Add(k, v)
		}
	}
	m.Header.Set(HeaderReason, d.Reason)
	m.Header.Set(HeaderSource, d.Subject)
	m.Header.Set(HeaderStream, d.Stream)
	m.Header.Set(HeaderConsumer, d.Source)
	m.Header.Set(HeaderDelivered, strconv.Itoa(d.Delivered))
	m.Header.Set(HeaderFailedAt, time.Now().UTC().Format(time.RFC3339Nano))
	m.Data = d.Data
	if _, err := js.PublishMsg(ctx, m); err != nil {
		return fmt.Errorf("dead-letter from %s: %w", d.Source, err)
	}
	return nil
}

// ReadDeadLetter decodes a stored dead letter.
func ReadDeadLetter(m jetstream.Msg) DeadLetter {
	h := m.Headers()
	n, _ := strconv.Atoi(h.Get(HeaderDelivered))
	return DeadLetter{
		Source:    h.Get(HeaderConsumer),
		Stream:    h.Get(HeaderStream),
		Subject:   h.Get(HeaderSource),
		Reason:    h.Get(HeaderReason),
		Delivered: n,
		Data:      m.Data(),
		Header:    h,
	}
}
