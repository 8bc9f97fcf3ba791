package main

import (
	"context"
	"errors"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// explanations say what an operator should know instead of the raw error
// a library returns. describe replaces the raw text within the message, so
// the context the command added ("read dead letter 5: ...") stays.
var explanations = []struct {
	is   func(error) (error, bool)
	text func(error) string
}{
	{sentinel(context.DeadlineExceeded), fixed("no answer in time (see --timeout): is NATS up, with JetStream enabled?")},
	{sentinel(nats.ErrTimeout), fixed("no answer in time (see --timeout): is NATS up, with JetStream enabled?")},
	{sentinel(nats.ErrNoServers), fixed("no NATS server answered (is it running, and is CACTUS_NATS_URL right?)")},
	{sentinel(nats.ErrAuthorization), fixed("NATS refused our credentials (CACTUS_NATS_USER and CACTUS_NATS_PASSWORD, _CREDS, _NKEY or _TOKEN)")},
	{sentinel(nats.ErrAuthExpired), fixed("our NATS credentials have expired")},
	{sentinel(nats.ErrPermissionViolation), fixed("NATS does not allow this identity to do that: run it with the operator's NATS credentials")},
	{sentinel(nats.ErrNoResponders), fixed("nothing in NATS answered: is JetStream enabled on the server (-js)?")},
	{sentinel(jetstream.ErrJetStreamNotEnabled), fixed("JetStream is not enabled on the NATS server (start it with -js)")},
	{sentinel(jetstream.ErrJetStreamNotEnabledForAccount), fixed("JetStream is not enabled for this NATS account")},
	{sentinel(jetstream.ErrMsgNotFound), fixed("not found")},
	{sentinel(jetstream.ErrConsumerNotFound), fixed("the consumer does not exist (cactusctl topology ensure creates it)")},
	{apiError, func(err error) string { return "NATS refused: " + err.(*jetstream.APIError).Description }},
}

func sentinel(target error) func(error) (error, bool) {
	return func(err error) (error, bool) {
		for e := err; e != nil; e = errors.Unwrap(e) {
			if errors.Is(e, target) && !errors.Is(errors.Unwrap(e), target) {
				return e, true // the innermost error that is target
			}
		}
		if errors.Is(err, target) {
			return target, true // inside a joined error
		}
		return nil, false
	}
}

func apiError(err error) (error, bool) {
	var ae *jetstream.APIError
	if errors.As(err, &ae) {
		return ae, true
	}
	return nil, false
}

func fixed(s string) func(error) string { return func(error) string { return s } }

// describe is err as one line an operator can act on.
func describe(err error) string {
	msg := err.Error()
	for _, x := range explanations {
		inner, ok := x.is(err)
		if !ok {
			continue
		}
		if raw := inner.Error(); strings.Contains(msg, raw) {
			msg = strings.Replace(msg, raw, x.text(inner), 1)
		} else {
			msg = x.text(inner)
		}
		break
	}
	msg = strings.ReplaceAll(msg, "nats: ", "")
	return strings.Join(strings.Fields(msg), " ")
}
