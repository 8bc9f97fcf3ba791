// Package dlq puts dead letters back to work: a replay sends a dead letter
// back through the path that would have handled it, and deletes it only
// once that path has it.
//
// How depends on where it failed (its source):
//
//   - A worker consumer (botworker, provisioner-moderation,
//     provisioner-jobs): the message goes back to the subject it failed on,
//     carrying where it was first stored (bus.SetReplayOrigin). The
//     handler treats it as a forced full re-run: past its done marker, and
//     a moderation event fans out to every room of its site again, ordered
//     by its original stream sequence, so replaying an old ban after a
//     newer unban cannot ban again.
//   - The gateway: an event the homeserver sent that could not be stored
//     or read. It can only go back through the gateway's own checks, which
//     the caller supplies (Replayers["gateway"]; cactusctl plugs in the
//     gateway's); without them it is refused with the reason and kept.
package dlq

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/cactus-comments/appservice/pkg/bus"
)

// ErrNotReplayable means the dead letter was kept: replaying it cannot
// work as it is (the reason says why).
var ErrNotReplayable = errors.New("not replayable")

// Letter is a stored dead letter.
type Letter struct {
	Seq    uint64 // its sequence in the dead-letter stream
	Header nats.Header
	Data   []byte
}

// Source is the consumer (or "gateway") that gave up on the letter.
func (l Letter) Source() string { return l.Header.Get(bus.HeaderConsumer) }

// Replayer republishes one dead letter and returns the subject it went to.
type Replayer func(ctx context.Context, js jetstream.JetStream, l Letter) (string, error)

// Replayers are the ways back by source, for sources that are not worker
// consumers of the topology (those go back with ToWorker).
type Replayers map[string]Replayer

// Get reads one stored dead letter.
func Get(ctx context.Context, s jetstream.Stream, seq uint64) (Letter, error) {
	raw, err := s.GetMsg(ctx, seq)
	if err != nil {
		return Letter{}, err
	}
	return Letter{Seq: raw.Sequence, Header: raw.Header, Data: raw.Data}, nil
}

// Replay republishes the dead letter through the path for its source (a
// worker's, or one of rs) and deletes it from s once the republish is
// acknowledged. It returns the subject the letter went to. A letter that
// cannot be replayed is kept (ErrNotReplayable).
func (rs Replayers) Replay(ctx context.Context, js jetstream.JetStream, s jetstream.Stream, l Letter) (string, error) {
	r, ok := rs[l.Source()]
	switch {
	case ok:
	case isWorker(l.Source()):
		r = ToWorker
	case l.Source() == "gateway":
		return "", fmt.Errorf("%w: an event the homeserver sent, which only the gateway's checks can route", ErrNotReplayable)
	default:
		return "", fmt.Errorf("%w: unknown source %q", ErrNotReplayable, l.Source())
	}
	to, err := r(ctx, js, l)
	if err != nil {
		return "", err
	}
	if err := s.DeleteMsg(ctx, l.Seq); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
		return to, fmt.Errorf("replayed to %s, but deleting the dead letter failed: %w (replaying it again within %s is harmless)", to, err, bus.DuplicateWindow)
	}
	return to, nil
}

func isWorker(source string) bool {
	for _, c := range (bus.Topology{}).Consumers() {
		if c.Config.Durable == source {
			return true
		}
	}
	return false
}

// dlqHeaders are the headers PublishDeadLetter adds; a replay removes them.
var dlqHeaders = []string{bus.HeaderReason, bus.HeaderSource, bus.HeaderStream, bus.HeaderSequence,
	bus.HeaderConsumer, bus.HeaderDelivered, bus.HeaderFailedAt, bus.HeaderTruncated}

// MsgID is the message id of the replay of dead letter seq: if the ack is
// lost and the replay is retried, or the dead letter could not be deleted
// and is replayed again, the stream's duplicate window drops the copy.
func MsgID(seq uint64) string { return "cactus-dlq-replay-" + strconv.FormatUint(seq, 10) }

// ToWorker republishes a worker's dead letter to the subject it failed on,
// with its original headers and payload and where it was first stored.
func ToWorker(ctx context.Context, js jetstream.JetStream, l Letter) (string, error) {
	h := l.Header
	subject := h.Get(bus.HeaderSource)
	if subject == "" {
		return "", fmt.Errorf("%w: no original subject recorded", ErrNotReplayable)
	}
	if n := h.Get(bus.HeaderTruncated); n != "" {
		return "", fmt.Errorf("%w: only part of the original %s bytes was kept (drop it)", ErrNotReplayable, n)
	}
	if !strings.HasPrefix(subject, "cactus.") || strings.HasPrefix(subject, "cactus.dlq.") {
		return "", fmt.Errorf("%w: original subject %q is not a cactus work subject", ErrNotReplayable, subject)
	}
	m := nats.NewMsg(subject)
	for k, vs := range h {
		if strings.EqualFold(k, bus.HeaderMsgID) || contains(dlqHeaders, k) {
			continue
		}
		for _, v := range vs {
			m.Header.Add(k, v)
		}
	}
	// A replay that failed again keeps the origin of the first failure:
	// that is the event's place in the homeserver's order.
	if _, again := bus.ReplayOrigin(h); !again {
		seq, _ := strconv.ParseUint(h.Get(bus.HeaderSequence), 10, 64)
		bus.SetReplayOrigin(m.Header, bus.Origin{Stream: h.Get(bus.HeaderStream), Sequence: seq, Consumer: h.Get(bus.HeaderConsumer)})
	}
	m.Header.Set(bus.HeaderMsgID, MsgID(l.Seq))
	m.Data = l.Data
	if _, err := js.PublishMsg(ctx, m); err != nil {
		return "", fmt.Errorf("republish to %s: %w (the dead letter is kept)", subject, err)
	}
	return subject, nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if strings.EqualFold(x, s) {
			return true
		}
	}
	return false
}
