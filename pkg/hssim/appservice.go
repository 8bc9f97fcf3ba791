package hssim

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/go-json-experiment/json/jsontext"

	"github.com/cactus-comments/appservice/pkg/registration"
)

// appservice is one loaded registration and its pusher state.
type appservice struct {
	reg         *registration.Registration
	match       *registration.Matcher
	sender      string
	rateLimited bool

	queue    []queued // interesting events not yet in a transaction
	cur      *pendingTxn
	down     bool          // a push failed and the transactions formed since have not all gone through
	wake     chan struct{} // new events queued
	retryNow chan struct{} // a successful ping: retry the failed txn at once
}

func (s *Server) addAppservices(regs []*registration.Registration) error {
	anchor := registration.AnchorStart
	if s.opts.Mode != Synapse {
		anchor = registration.Anywhere
	}
	ids, tokens := map[string]bool{}, map[string]bool{}
	for _, reg := range regs {
		if err := reg.Validate(); err != nil {
			return fmt.Errorf("registration %q: %w", reg.ID, err)
		}
		if ids[reg.ID] || tokens[reg.ASToken] {
			return fmt.Errorf("registration %q: duplicate id or as_token", reg.ID)
		}
		ids[reg.ID], tokens[reg.ASToken] = true, true
		m, err := reg.Compile(anchor)
		if err != nil {
			return fmt.Errorf("registration %q: %w", reg.ID, err)
		}
		as := &appservice{
			reg:         reg,
			match:       m,
			sender:      "@" + reg.SenderLocalpart + ":" + s.opts.ServerName,
			rateLimited: reg.RateLimitedOrDefault(),
			wake:        make(chan struct{}, 1),
			retryNow:    make(chan struct{}, 1),
		}
		s.apps = append(s.apps, as)
		// Dendrite creates the sender's account at startup; Synapse and
		// continuwuity only know it once the appservice registers it.
		s.users[as.sender] = &user{id: as.sender, appservice: reg.ID, registered: s.opts.Mode == Dendrite}
	}
	return nil
}

func (s *Server) appByID(id string) *appservice {
	for _, as := range s.apps {
		if as.reg.ID == id {
			return as
		}
	}
	return nil
}

func poke(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// escapeSegment encodes an id for a path segment the way each server does:
// Synapse uses Python's urllib.parse.quote, which leaves '/' unescaped;
// Dendrite uses Go's url.PathEscape, which leaves ':' and '@' alone;
// continuwuity escapes everything but the unreserved characters.
func (s *Server) escapeSegment(v string) string {
	switch s.opts.Mode {
	case Dendrite:
		return url.PathEscape(v)
	case Synapse:
		return percentEncode(v, "_.-~/")
	}
	return percentEncode(v, "_.-~")
}

func percentEncode(v, safe string) string {
	var b strings.Builder
	for i := 0; i < len(v); i++ {
		c := v[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte(safe, c) >= 0 {
			b.WriteByte(c)
			continue
		}
		fmt.Fprintf(&b, "%%%02X", c)
	}
	return b.String()
}

// asRequest builds a request to an appservice with the authentication the
// imitated server sends: Synapse only the header, Dendrite the header,
// continuwuity the header and the legacy query parameter.
func (s *Server) asRequest(ctx context.Context, as *appservice, method, path string, query url.Values, body any) (*http.Request, error) {
	if query == nil {
		query = url.Values{}
	}
	if s.opts.Mode == Conduit {
		query.Set("access_token", as.reg.HSToken)
	}
	u := strings.TrimRight(*as.reg.URL, "/") + path
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	var rd io.Reader
	if body != nil {
		b, ok := body.(jsontext.Value) // already written
		if !ok {
			var err error
			if b, err = json.Marshal(body); err != nil {
				return nil, err
			}
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return nil, fmt.Errorf("build request to appservice %s: %w", as.reg.ID, err)
	}
	req.Header.Set("Authorization", "Bearer "+as.reg.HSToken)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	return req, nil
}

// asResult is the outcome of one call to an appservice.
type asResult struct {
	status  int
	body    []byte
	err     error
	timeout bool
}

func (s *Server) callAS(ctx context.Context, as *appservice, timeout time.Duration, method, path string, query url.Values, body any) asResult {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := s.asRequest(ctx, as, method, path, query, body)
	if err != nil {
		return asResult{err: err}
	}
	resp, err := s.client.Do(req)
	if err != nil {
		var ne interface{ Timeout() bool }
		to := errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout())
		// url.Error carries the full URL, which holds the hs_token in
		// continuwuity mode: keep only the path in what we record or log.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = fmt.Errorf("%s %s: %w", ue.Op, req.URL.Path, ue.Err)
		}
		return asResult{err: err, timeout: to}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return asResult{status: resp.StatusCode, err: err}
	}
	return asResult{status: resp.StatusCode, body: b}
}

func isJSON(b []byte) bool { return len(bytes.TrimSpace(b)) > 0 && json.Valid(b) }

// queryAlias asks an appservice whether an alias exists. Synapse counts a
// 200 with a JSON body; the others any 200.
func (s *Server) queryAlias(ctx context.Context, as *appservice, alias string) asResult {
	return s.callAS(ctx, as, s.opts.QueryTimeout, http.MethodGet, "/_matrix/app/v1/rooms/"+s.escapeSegment(alias), nil, nil)
}

func (s *Server) queryOK(r asResult) bool {
	if r.err != nil || r.status != http.StatusOK {
		return false
	}
	return s.opts.Mode != Synapse || isJSON(r.body)
}

// resolveAlias finds the room of an alias, asking the appservices whose
// alias namespace holds it when it is unknown, then looking again.
func (s *Server) resolveAlias(ctx context.Context, alias string, forJoin bool) (string, *matrixError) {
	s.mu.Lock()
	if e, ok := s.aliases[alias]; ok {
		s.mu.Unlock()
		return e.roomID, nil
	}
	var ask []*appservice
	if a := strings.SplitN(alias, ":", 2); len(a) == 2 && a[1] == s.opts.ServerName {
		for _, as := range s.apps {
			if in, _ := as.match.Alias(alias); in && as.reg.URL != nil {
				ask = append(ask, as)
			}
		}
	}
	s.mu.Unlock()
	connFailed := false
	for _, as := range ask {
		res := s.queryAlias(ctx, as, alias)
		s.log.Debug("alias query", "appservice", as.reg.ID, "alias", alias, "status", res.status, "err", res.err)
		if res.err != nil {
			connFailed = true
		}
		if !s.queryOK(res) {
			continue
		}
		s.mu.Lock()
		e, ok := s.aliases[alias]
		s.mu.Unlock()
		if ok {
			return e.roomID, nil
		}
		break
	}
	// Dendrite's join turns an unresolved alias into a plain error (500);
	// its directory lookup does so only when the appservice was
	// unreachable.
	if s.opts.Mode == Dendrite && (forJoin || connFailed) {
		return "", errf(http.StatusInternalServerError, "M_UNKNOWN", "Internal Server Error")
	}
	return "", errNotFound("Room alias %s not found", alias)
}

// queryUser asks the appservices that claim userID exclusively whether it
// exists (Synapse, before pushing events from or about unknown users).
func (s *Server) queryUser(ctx context.Context, as *appservice, userID string) bool {
	res := s.callAS(ctx, as, s.opts.QueryTimeout, http.MethodGet, "/_matrix/app/v1/users/"+s.escapeSegment(userID), nil, nil)
	s.mu.Lock()
	s.calls["as.users"]++
	s.mu.Unlock()
	return s.queryOK(res)
}

// handlePing is the client-server ping of Synapse and continuwuity;
// Dendrite has none. continuwuity refuses a user's token as unauthorised
// and answers every failure to call the appservice with 500 M_UNKNOWN,
// where Synapse says what failed; only Synapse retries the appservice's
// failed transaction at once after a successful ping.
func (s *Server) handlePing(q *request) (any, *matrixError) {
	mode := s.opts.Mode
	if mode == Dendrite {
		return nil, errf(http.StatusNotFound, "M_UNRECOGNIZED", "Unrecognized request")
	}
	var b struct {
		TransactionID *string `json:"transaction_id"`
	}
	if e := q.decode(&b, true); e != nil {
		return nil, e
	}
	id := q.param("appserviceId")
	s.mu.Lock()
	as := s.appByID(id)
	s.mu.Unlock()
	switch {
	case mode == Conduit && q.who.as == nil:
		return nil, errf(http.StatusUnauthorized, "M_UNAUTHORIZED", "Only appservice access tokens should be used on this endpoint.")
	case mode == Conduit && (as == nil || q.who.as != as):
		return nil, errForbidden("Appservices can only ping themselves (wrong appservice ID).")
	case as == nil || q.who.as != as:
		return nil, errForbidden("Provided access token is not the appservice's token")
	}
	if as.reg.URL == nil {
		if mode == Conduit {
			return nil, errf(http.StatusBadRequest, "M_URL_NOT_SET", "Appservice does not have a URL set, there is nothing to ping.")
		}
		return nil, errf(http.StatusBadRequest, "M_URL_NOT_SET", "Application service URL is not set")
	}
	body := map[string]any{}
	if b.TransactionID != nil {
		body["transaction_id"] = *b.TransactionID
	}
	start := time.Now()
	res := s.callAS(q.r.Context(), as, s.opts.QueryTimeout, http.MethodPost, "/_matrix/app/v1/ping", nil, body)
	failed := res.timeout || res.err != nil || res.status < 200 || res.status > 299 || !isJSON(res.body)
	switch {
	case failed && mode == Conduit:
		return nil, errf(http.StatusInternalServerError, "M_UNKNOWN", "Appservice %q could not be pinged", as.reg.ID)
	case res.timeout:
		return nil, errf(http.StatusGatewayTimeout, "M_CONNECTION_TIMEOUT", "Timeout while pinging the application service")
	case res.err != nil && res.status == 0:
		return nil, errf(http.StatusBadGateway, "M_CONNECTION_FAILED", "Connection to the application service failed")
	case failed:
		e := errf(http.StatusBadGateway, "M_BAD_STATUS", "Application service returned an error")
		e.Extra = map[string]any{"status": res.status, "body": string(res.body)}
		return nil, e
	}
	if mode == Synapse {
		poke(as.retryNow)
	}
	return map[string]any{"duration_ms": time.Since(start).Milliseconds()}, nil
}

// handleThirdparty implements the client-server third-party lookups.
// Dendrite asks every appservice (thirdparty/location?alias= and
// thirdparty/user?userid=) and merges their JSON arrays; the others ask
// only appservices declaring the protocol.
func (s *Server) handleThirdparty(q *request) (any, *matrixError) {
	kind := "location"
	if q.endpoint == EPThirdpartyUser {
		kind = "user"
	}
	protocol := q.param("protocol")
	s.mu.Lock()
	var ask []*appservice
	for _, as := range s.apps {
		if as.reg.URL == nil {
			continue
		}
		if protocol == "" && s.opts.Mode == Dendrite {
			ask = append(ask, as)
			continue
		}
		for _, p := range as.reg.Protocols {
			if p == protocol && protocol != "" {
				ask = append(ask, as)
			}
		}
	}
	s.mu.Unlock()
	if protocol == "" && s.opts.Mode != Dendrite {
		return nil, errf(http.StatusBadRequest, "M_MISSING_PARAM", "Missing protocol")
	}
	path := "/_matrix/app/v1/thirdparty/" + kind
	if protocol != "" {
		path += "/" + s.escapeSegment(protocol)
	}
	// Forward the lookup fields, never the caller's credentials.
	fields := q.r.URL.Query()
	fields.Del("access_token")
	fields.Del("user_id")
	out := []any{}
	for _, as := range ask {
		res := s.callAS(q.r.Context(), as, s.opts.QueryTimeout, http.MethodGet, path, maps.Clone(fields), nil)
		s.mu.Lock()
		s.calls["as.thirdparty."+kind]++
		s.mu.Unlock()
		if res.err != nil || res.status != http.StatusOK {
			continue
		}
		var list []any
		if json.Unmarshal(res.body, &list) == nil {
			out = append(out, list...)
		}
	}
	if protocol != "" && len(ask) == 0 {
		return nil, errNotFound("No application service provides protocol %s", protocol)
	}
	return out, nil
}
