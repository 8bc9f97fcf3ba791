package gateway

import (
	"net/http"
	"time"
)

// userQuery handles GET /users/{userId}. The only user of our namespace is
// the bot, whose registration the workers ensure, so the answer is local
// and immediate: Synapse holds back all delivery to us while it waits for
// it.
func (g *Gateway) userQuery(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	user, ok := pathRest(r)
	outcome := queryNotFound
	switch {
	case !ok:
		outcome = queryInvalid
		writeError(w, http.StatusBadRequest, codeInvalidParam, "user id is not a valid path segment")
	case user == g.bot:
		outcome = queryExists
		writeJSON(w, http.StatusOK, emptyObject)
	default:
		writeError(w, http.StatusNotFound, codeNotFound, "this application service has no such user")
	}
	g.metrics.userQueries.WithLabelValues(outcome).Inc()
	g.metrics.userDuration.Observe(time.Since(start).Seconds())
}
