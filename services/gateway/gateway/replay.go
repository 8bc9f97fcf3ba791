package gateway

import (
	"context"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/cactus-comments/appservice/pkg/bus"
)

// Route is where the gateway stores an event that passes its checks.
type Route struct {
	Subject string
	EventID string
	Type    string
	Class   bus.Class
}

// RouteEvent judges one event exactly as the gateway judges every event
// of a transaction (the same decoder, checkEvent, classification), for
// the bot user id bot. It returns the event's route and bytes (without
// surrounding whitespace), or why it cannot go to the event stream.
func RouteEvent(raw []byte, bot string) (Route, []byte, error) {
	e := decodeEvent(raw)
	if e.Problem == "" {
		e.class, e.Problem = checkEvent(&e, string(e.RoomID), bot, maxEventSize(nil))
	}
	if e.Problem != "" {
		return Route{}, nil, errors.New(e.Problem)
	}
	return Route{Subject: bus.EventSubject(e.class, string(e.RoomID)), EventID: e.EventID, Type: e.Type, Class: e.class}, e.Raw, nil
}

// decodeEvent decodes one event alone, as decodeTransaction decodes each
// element of the events array.
func decodeEvent(raw []byte) rawEvent {
	// An event is at depth 3 of a transaction; the limit is the same.
	d := decoder{b: raw, depth: 2}
	i := d.ws(0)
	if i >= len(raw) || raw[i] != '{' {
		v, err := d.value(i)
		if err != nil {
			return rawEvent{Raw: raw, Problem: "not JSON: " + err.Error()}
		}
		return rawEvent{Raw: raw, Problem: "the event is " + v.kind.String() + ", not an object"}
	}
	e, end, err := d.eventObject(i)
	if err != nil {
		return rawEvent{Raw: raw, Problem: "not JSON: " + err.Error()}
	}
	if j := d.ws(end); j != len(raw) {
		return rawEvent{Raw: raw, Problem: fmt.Sprintf("not JSON: offset %d: data after the event", j)}
	}
	return e
}

// ReplayDeadLetter sends a gateway dead letter back through the gateway's
// own checks (RouteEvent): if the event now passes (a stream limit was
// raised, a bug fixed), it is stored on its event subject as the splitter
// stores it, and deduplicated by its event id; if not, the error says why and
// nothing is published. bot is the bot's user id (CACTUS_USER_ID), which
// routing depends on. The caller deletes the dead letter once this
// succeeds.
func ReplayDeadLetter(ctx context.Context, js jetstream.JetStream, bot string, d bus.DeadLetter) (Route, error) {
	if d.Source != "gateway" {
		return Route{}, fmt.Errorf("a dead letter of %q, not of the gateway", d.Source)
	}
	if d.Truncated > 0 {
		return Route{}, fmt.Errorf("only part of the original %d bytes was kept; cannot replay (drop it)", d.Truncated)
	}
	if d.Header.Get(headerWholeBody) != "" {
		return replayBody(ctx, js, bot, d)
	}
	route, raw, err := RouteEvent(d.Data, bot)
	if err != nil {
		return Route{}, fmt.Errorf("still refused by the gateway's checks: %w", err)
	}
	return route, publishRoute(ctx, js, route, raw, d.Header.Get(bus.HeaderTxnID))
}

func publishRoute(ctx context.Context, js jetstream.JetStream, route Route, raw []byte, txnID string) error {
	m := &nats.Msg{Subject: route.Subject, Data: raw}
	setHeaders(m, route.EventID, headerValue(txnID), route.Type)
	// Replays are few: deduplicated by event id within the stream's
	// window, a replay repeated after a failure stores nothing twice.
	m.Header.Set(bus.HeaderMsgID, route.EventID)
	if _, err := js.PublishMsg(ctx, m); err != nil {
		return fmt.Errorf("publish to %s: %w", route.Subject, err)
	}
	return nil
}

// replayBody replays the dead letter of a whole transaction body: read as
// a transaction again, it is refused with the reason unless it now reads
// and every event of it passes the gateway's checks; then every event is
// stored (each deduplicated by its event id, so a replay repeated after a
// failure stores nothing twice). It returns the last event's route.
func replayBody(ctx context.Context, js jetstream.JetStream, bot string, d bus.DeadLetter) (Route, error) {
	events, err := decodeTransaction(d.Data, nil)
	if err != nil {
		return Route{}, fmt.Errorf("still refused by the gateway's checks: %w", err)
	}
	routes := make([]Route, len(events))
	raws := make([][]byte, len(events))
	for i, e := range events {
		if e.Problem == "" {
			routes[i], raws[i], err = RouteEvent(e.Raw, bot)
		} else {
			err = errors.New(e.Problem)
		}
		if err != nil {
			return Route{}, fmt.Errorf("still refused by the gateway's checks: event %d of %d: %w", i+1, len(events), err)
		}
	}
	var last Route
	for i, route := range routes {
		if err := publishRoute(ctx, js, route, raws[i], d.Header.Get(bus.HeaderTxnID)); err != nil {
			return Route{}, err
		}
		last = route
	}
	return last, nil
}
