package gateway

import (
	"crypto/sha256"
	"crypto/subtle"
	"net/http"
	"strings"
)

// authResult is the outcome of checking the homeserver's token.
type authResult int

const (
	authOK authResult = iota
	authMissing
	authWrong
)

// tokenChecker compares tokens in constant time. Comparing digests rather
// than the tokens themselves keeps even the token's length secret
// (subtle.ConstantTimeCompare returns early on a length mismatch).
type tokenChecker struct{ want [sha256.Size]byte }

func newTokenChecker(token string) tokenChecker {
	return tokenChecker{want: sha256.Sum256([]byte(token))}
}

func (c tokenChecker) match(got string) bool {
	sum := sha256.Sum256([]byte(got))
	return subtle.ConstantTimeCompare(sum[:], c.want[:]) == 1
}

// check authenticates a request from the homeserver. The token may come
// in the Authorization header (current spec) or the access_token query
// parameter (legacy); continuwuity sends both, and then both must match.
func (c tokenChecker) check(r *http.Request) authResult {
	var tokens []string
	if h := r.Header.Get("Authorization"); h != "" {
		scheme, tok, ok := strings.Cut(h, " ")
		if ok && strings.EqualFold(scheme, "Bearer") {
			if tok = strings.TrimSpace(tok); tok != "" {
				tokens = append(tokens, tok)
			}
		}
	}
	if r.URL.RawQuery != "" { // Synapse sends none: skip the parse
		for _, tok := range r.URL.Query()["access_token"] {
			if tok != "" {
				tokens = append(tokens, tok)
			}
		}
	}
	if len(tokens) == 0 {
		return authMissing
	}
	ok := true
	for _, tok := range tokens {
		// No early exit: every token costs the same whatever matched.
		ok = c.match(tok) && ok
	}
	if !ok {
		return authWrong
	}
	return authOK
}

// auth rejects requests without the homeserver's token: 401 without one,
// 403 with a wrong one.
func (g *Gateway) auth(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch g.token.check(r) {
		case authOK:
			next.ServeHTTP(w, r)
		case authMissing:
			g.metrics.authFailures.WithLabelValues("missing").Inc()
			writeError(w, http.StatusUnauthorized, codeMissingToken, "missing the homeserver's token (hs_token)")
		default:
			g.metrics.authFailures.WithLabelValues("wrong").Inc()
			g.log.Warn("request with a wrong homeserver token", "method", r.Method, "path", logID(r.URL.Path), "remote", r.RemoteAddr)
			writeError(w, http.StatusForbidden, codeForbidden, "wrong homeserver token (hs_token)")
		}
	})
}
