package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/cactus-comments/appservice/pkg/bus"
	"github.com/cactus-comments/appservice/pkg/mxid"
	"github.com/cactus-comments/appservice/pkg/namespace"
)

// aliasQuery handles GET /rooms/{roomAlias}: the homeserver asks whether a
// comment room alias exists, and a provisioner creates the room if the
// site is registered. What needs no registry is decided here, without a
// NATS round trip.
func (g *Gateway) aliasQuery(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	outcome := g.answerAlias(w, r)
	g.metrics.aliasQueries.WithLabelValues(outcome).Inc()
	g.metrics.aliasDuration.WithLabelValues(outcome).Observe(time.Since(start).Seconds())
}

func (g *Gateway) answerAlias(w http.ResponseWriter, r *http.Request) string {
	raw, ok := pathRest(r)
	if !ok {
		writeError(w, http.StatusBadRequest, codeInvalidParam, "room alias is not a valid path segment")
		return queryInvalid
	}
	alias, err := mxid.ParseRoomAlias(raw)
	if err != nil {
		writeError(w, http.StatusNotFound, codeNotFound, "not a room alias")
		return queryInvalid
	}
	parsed := g.cfg.Namespace().ParseAlias(alias)
	if parsed.Refused != "" {
		writeError(w, http.StatusNotFound, codeNotFound, parsed.Refused)
		return queryNotOurs
	}
	if !g.cfg.InNamespace(raw) || parsed.Kind != namespace.Comments {
		writeError(w, http.StatusNotFound, codeNotFound, "not a comment section alias of this application service")
		return queryNotOurs
	}
	ctx, cancel := context.WithTimeout(r.Context(), g.aliasTimeout)
	defer cancel()
	ans, err := g.ask(ctx, raw)
	if err != nil {
		g.log.Error("alias query failed; answered 503", "alias", logID(raw), "err", err)
		if errors.Is(err, errUnanswered) {
			g.queueResolve(r.Context(), parsed)
		}
		writeError(w, http.StatusServiceUnavailable, codeUnknown, "no answer from the comment service, try again")
		return queryUnavailable
	}
	if ans.Exists {
		writeJSON(w, http.StatusOK, emptyObject)
		return queryExists
	}
	reason := ans.Error
	if reason == "" {
		reason = "no such comment section"
	}
	g.log.Info("alias query: room not created", "alias", logID(raw), "reason", reason)
	writeError(w, http.StatusNotFound, codeNotFound, reason)
	return queryNotFound
}

// errUnanswered: the query reached NATS but no answer came back. A
// provisioner may have taken it and died (or lost its connection) after
// its createRoom went out: the room may exist, and the homeserver will
// not ask about its alias again.
var errUnanswered = errors.New("alias query unanswered")

// queueResolve hands an alias whose query went unanswered to a durable
// resolve job: a provisioner looks the alias up for a while and, if the
// room exists, records it and applies the site's bans. Without it a
// provisioner killed between its createRoom and its bookkeeping would
// leave a room nobody knows about.
func (g *Gateway) queueResolve(ctx context.Context, parsed namespace.Parsed) {
	if g.js == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), resolveQueueTimeout)
	defer cancel()
	log := g.log.With("alias", logID(parsed.Alias.String()))
	m, err := bus.ResolveJob(parsed.Site, parsed.Section, parsed.Alias.String()).Msg()
	if err == nil {
		_, err = g.js.PublishMsg(ctx, m)
	}
	if err != nil {
		log.Error("alias query unanswered and its resolve job not queued: if a provisioner created the room before it failed, the room lacks its registry entry and the site's bans until a registry rebuild", "err", err)
		return
	}
	log.Warn("alias query unanswered; a resolve job will look the alias up")
}

// resolveQueueTimeout bounds queueing a resolve job, which delays the
// homeserver's 503.
const resolveQueueTimeout = 2 * time.Second

// askNATS sends an alias query to the provisioner queue group. Its errors
// are written for the operator's log.
func (g *Gateway) askNATS(ctx context.Context, alias string) (bus.AliasAnswer, error) {
	var ans bus.AliasAnswer
	if !g.nc.IsConnected() {
		return ans, fmt.Errorf("NATS is %s, cannot ask a provisioner", g.nc.Status())
	}
	req, err := json.Marshal(bus.AliasQuery{Alias: alias})
	if err != nil {
		return ans, fmt.Errorf("encoding the request: %w", err)
	}
	msg, err := g.nc.RequestWithContext(ctx, bus.SubjectAliasQuery, req)
	switch {
	case errors.Is(err, nats.ErrNoResponders):
		return ans, fmt.Errorf("no provisioner is running: nobody subscribes to %s", bus.SubjectAliasQuery)
	case errors.Is(err, context.DeadlineExceeded):
		return ans, fmt.Errorf("%w: no provisioner answered within %v", errUnanswered, g.aliasTimeout)
	case err != nil:
		return ans, fmt.Errorf("%w: request to the provisioners failed: %w", errUnanswered, err)
	}
	if err := json.Unmarshal(msg.Data, &ans); err != nil {
		return ans, fmt.Errorf("a provisioner answered something that is not an AliasAnswer: %w", err)
	}
	return ans, nil
}
