package gateway

import (
	"log/slog"
	"net/http"

	"github.com/go-chi/chi/v5"
)

// Path prefixes. The spec's paths live under /_matrix/app/v1; homeservers
// in legacy mode call the same paths without a prefix, and Dendrite's
// legacy third-party lookups use /_matrix/app/unstable.
var (
	apiPrefixes        = []string{"/_matrix/app/v1", ""}
	thirdPartyPrefixes = []string{"/_matrix/app/v1", "/_matrix/app/unstable", ""}
)

func (g *Gateway) routes() http.Handler {
	r := chi.NewRouter()
	r.Use(rawPath, g.bodyDeadline, g.logRequest)
	notFound := func(w http.ResponseWriter, _ *http.Request) {
		writeError(w, http.StatusNotFound, codeUnrecognized, "unrecognized request")
	}
	r.NotFound(notFound)
	r.MethodNotAllowed(func(w http.ResponseWriter, _ *http.Request) {
		writeError(w, http.StatusMethodNotAllowed, codeUnrecognized, "method not allowed on this path")
	})
	authed := r.With(g.auth)
	for _, p := range apiPrefixes {
		// The parameter is the whole rest of the path: Synapse escapes
		// ids with Python's urllib.parse.quote, which leaves '/' alone,
		// so a comment section "/posts/hello" arrives as raw slashes
		// (Dendrite sends %2F). Both decode to the same alias.
		for _, empty := range []string{"/transactions/", "/users/", "/rooms/"} {
			r.HandleFunc(p+empty, notFound) // "*" would match nothing
		}
		authed.Put(p+"/transactions/*", g.transaction)
		authed.Get(p+"/users/*", g.userQuery)
		authed.Get(p+"/rooms/*", g.aliasQuery)
		authed.Post(p+"/ping", g.ping)
	}
	for _, p := range thirdPartyPrefixes {
		// We declare no third-party protocols. Dendrite still asks every
		// appservice for locations and users and expects a JSON array.
		authed.Get(p+"/thirdparty/location", thirdPartyEmpty)
		authed.Get(p+"/thirdparty/user", thirdPartyEmpty)
		authed.Get(p+"/thirdparty/protocol/{protocol}", thirdPartyUnknown)
		authed.Get(p+"/thirdparty/location/{protocol}", thirdPartyUnknown)
		authed.Get(p+"/thirdparty/user/{protocol}", thirdPartyUnknown)
	}
	return r
}

// rawPath makes chi route on the escaped path, always. By default chi
// routes on URL.RawPath when Go kept one (the client escaped something
// that did not need it, or sent %2F) and on the decoded URL.Path
// otherwise, so a parameter would arrive decoded or not depending on the
// client. Routing on the escaped form means pathParam decodes every
// parameter exactly once.
func rawPath(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if rctx := chi.RouteContext(r.Context()); rctx != nil {
			rctx.RoutePath = r.URL.EscapedPath()
		}
		next.ServeHTTP(w, r)
	})
}

// logRequest logs every request at debug level. The query may hold the
// legacy access_token; the logger's redactor removes it.
func (g *Gateway) logRequest(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if g.log.Enabled(r.Context(), slog.LevelDebug) {
			g.log.DebugContext(r.Context(), "request", "method", r.Method, "path", logID(r.URL.EscapedPath()),
				"query", r.URL.RawQuery, "remote", r.RemoteAddr)
		}
		next.ServeHTTP(w, r)
	})
}

func thirdPartyEmpty(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, emptyArray)
}

func thirdPartyUnknown(w http.ResponseWriter, _ *http.Request) {
	writeError(w, http.StatusNotFound, codeUnrecognized, "this application service declares no third-party protocols")
}
