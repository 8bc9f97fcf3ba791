package worker

import (
	"context"
	"errors"
	"strconv"
	"time"

	"github.com/cactus-comments/appservice/pkg/bus"
	"github.com/cactus-comments/appservice/pkg/cas"
)

// attemptInfo is what a handler may ask about the attempt it is in.
type attemptInfo struct {
	n        int  // 1 for the first attempt at a message
	last     bool // a transient failure now is dead-lettered
	replay   *bus.Origin
	done     *cas.Bucket
	consumer string

	markerID string // set by CheckDone: write a marker on success
	wasDone  bool   // CheckDone found a marker
}

type attemptKey struct{}

func withAttempt(ctx context.Context, a *attemptInfo) context.Context {
	return context.WithValue(ctx, attemptKey{}, a)
}

func attemptOf(ctx context.Context) *attemptInfo {
	a, _ := ctx.Value(attemptKey{}).(*attemptInfo)
	return a
}

// Attempt is the number of the attempt at the handler's message, over
// every delivery and every retry in place: 1 the first time. Outside a
// worker (a direct call) it is 1.
func Attempt(ctx context.Context) int {
	if a := attemptOf(ctx); a != nil {
		return a.n
	}
	return 1
}

// Retried reports whether an earlier attempt at the message may have got
// part of the way: the handler should check what is done already rather
// than assume nothing is.
func Retried(ctx context.Context) bool { return Attempt(ctx) > 1 || Replay(ctx) != nil }

// LastAttempt reports that a transient failure of this attempt would be
// past the retry horizon: the message is dead-lettered instead of being
// tried again, so a handler that owes someone an answer should give one.
func LastAttempt(ctx context.Context) bool {
	a := attemptOf(ctx)
	return a != nil && a.last
}

// Replay is where a replayed dead letter was first stored, or nil for a
// message that is not a replay. A replay is a forced re-run of the whole
// effect: CheckDone says not done, and the handler should redo what a
// first attempt does even where its bookkeeping says it is done.
func Replay(ctx context.Context) *bus.Origin {
	if a := attemptOf(ctx); a != nil {
		return a.replay
	}
	return nil
}

// CheckDone reports whether the event id was finished before by this
// consumer (a done marker exists), and arranges for a marker to be written
// once this attempt succeeds. Handlers call it once they know the message
// has an effect (cheap filtering first), and return nil at once when it
// says done. A replay is never done. Without a done-marker bucket it
// always says not done.
//
// The markers outlast the stream's duplicate window by far (bus.DoneTTL),
// so an event the homeserver stores again after a long outage has no
// second effect even where the effect itself is not idempotent.
func CheckDone(ctx context.Context, id string) (bool, error) {
	a := attemptOf(ctx)
	if a == nil || a.done == nil || id == "" {
		return false, nil
	}
	a.markerID = id
	if a.replay != nil {
		return false, nil
	}
	_, err := a.done.Get(ctx, markerKey(a.consumer, id))
	switch {
	case err == nil:
		a.wasDone = true
		return true, nil
	case errors.Is(err, cas.ErrNotFound):
		return false, nil
	}
	return false, err
}

// markerKey is the done marker of id for consumer.
func markerKey(consumer, id string) string { return bus.Token(consumer) + "." + bus.Token(id) }

// writeMarker records that the marked event is done, with the stream
// sequence that did it and when.
func (a *attemptInfo) writeMarker(ctx context.Context, seq uint64) error {
	if a.wasDone {
		return nil
	}
	v := strconv.FormatUint(seq, 10) + " " + time.Now().UTC().Format(time.RFC3339)
	// A marker that exists already (a replay, or two copies racing) is
	// just as good.
	_, err := a.done.Create(ctx, markerKey(a.consumer, a.markerID), []byte(v))
	return err
}
