package hssim

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// request is one client-server API call after routing.
type request struct {
	r        *http.Request
	w        http.ResponseWriter
	endpoint string
	params   map[string]string
	rawPath  string // escaped path, as Synapse keys its transaction cache
	body     []byte
	who      *requester
	// answered runs under the lock once the answer is written or the
	// client is gone.
	answered func()
}

// param is a path parameter, percent-decoded exactly once.
func (q *request) param(name string) string { return q.params[name] }

// decode parses the JSON body into v. An empty body counts as {} where the
// endpoint allows it (allowEmpty).
func (q *request) decode(v any, allowEmpty bool) *matrixError {
	if len(strings.TrimSpace(string(q.body))) == 0 {
		if allowEmpty {
			return nil
		}
		return errf(http.StatusBadRequest, "M_NOT_JSON", "Content not JSON.")
	}
	return decodeBody(q.body, v)
}

// decodeBody is the one place request bodies are parsed: it must be an
// object, and wrong field types are M_BAD_JSON as Synapse reports them.
func decodeBody(body []byte, v any) *matrixError {
	if !json.Valid(body) {
		return errf(http.StatusBadRequest, "M_NOT_JSON", "Content not JSON.")
	}
	trimmed := strings.TrimSpace(string(body))
	if !strings.HasPrefix(trimmed, "{") {
		return errBadJSON("Content must be a JSON object.")
	}
	if err := json.Unmarshal(body, v); err != nil {
		return errBadJSON("Invalid JSON body: %v", err)
	}
	return nil
}

type handlerFunc func(s *Server, q *request) (any, *matrixError)

type route struct {
	method   string
	segments []string // literal, "{name}" or "{cv}" (client version r0|v3)
	endpoint string
	auth     bool // needs an access token
	limited  bool // subject to rate limiting
	h        handlerFunc
}

// Endpoint names, as counted by Calls and addressed by SetLatency and
// InjectFault. "unknown" counts requests that matched no route.
const (
	EPVersions           = "versions"
	EPRegister           = "register"
	EPLogin              = "login"
	EPWhoami             = "whoami"
	EPProfile            = "profile"
	EPProfileGet         = "profile.get"
	EPCreateRoom         = "createRoom"
	EPJoin               = "join"
	EPInvite             = "invite"
	EPLeave              = "leave"
	EPKick               = "kick"
	EPBan                = "ban"
	EPUnban              = "unban"
	EPSend               = "send"
	EPStateGet           = "state.get"
	EPStatePut           = "state.put"
	EPStateAll           = "state.all"
	EPJoinedMembers      = "joined_members"
	EPMembers            = "members"
	EPMessages           = "messages"
	EPContext            = "context"
	EPRoomAliases        = "aliases"
	EPDirectoryGet       = "directory.get"
	EPDirectoryPut       = "directory.put"
	EPDirectoryDelete    = "directory.delete"
	EPDirectoryListGet   = "directory.list.get"
	EPDirectoryListPut   = "directory.list.put"
	EPJoinedRooms        = "joined_rooms"
	EPRedact             = "redact"
	EPPing               = "ping"
	EPThirdpartyLocation = "thirdparty.location"
	EPThirdpartyUser     = "thirdparty.user"
	EPCapabilities       = "capabilities"
	EPUpgrade            = "upgrade"
	EPUnknown            = "unknown"
)

func (s *Server) buildRoutes() []route {
	r := func(method, path, ep string, auth, limited bool, h handlerFunc) route {
		return route{method: method, segments: strings.Split(strings.TrimPrefix(path, "/"), "/"), endpoint: ep, auth: auth, limited: limited, h: h}
	}
	c := "/_matrix/client/{cv}"
	return []route{
		r("GET", "/_matrix/client/versions", EPVersions, false, false, (*Server).handleVersions),
		r("POST", c+"/register", EPRegister, false, true, (*Server).handleRegister),
		r("GET", c+"/login", EPLogin, false, false, (*Server).handleLoginFlows),
		r("POST", c+"/login", EPLogin, false, true, (*Server).handleLogin),
		r("GET", c+"/account/whoami", EPWhoami, true, false, (*Server).handleWhoami),
		r("GET", c+"/profile/{userId}", EPProfileGet, false, false, (*Server).handleProfileGet),
		r("GET", c+"/profile/{userId}/{field}", EPProfileGet, false, false, (*Server).handleProfileGetField),
		r("PUT", c+"/profile/{userId}/{field}", EPProfile, true, true, (*Server).handleProfilePut),
		r("POST", c+"/createRoom", EPCreateRoom, true, true, (*Server).handleCreateRoom),
		r("POST", c+"/join/{roomIdOrAlias}", EPJoin, true, true, (*Server).handleJoin),
		r("POST", c+"/rooms/{roomId}/join", EPJoin, true, true, (*Server).handleJoin),
		r("POST", c+"/rooms/{roomId}/invite", EPInvite, true, true, (*Server).handleInvite),
		r("POST", c+"/rooms/{roomId}/leave", EPLeave, true, true, (*Server).handleLeave),
		r("POST", c+"/rooms/{roomId}/kick", EPKick, true, true, (*Server).handleKick),
		r("POST", c+"/rooms/{roomId}/ban", EPBan, true, true, (*Server).handleBan),
		r("POST", c+"/rooms/{roomId}/unban", EPUnban, true, true, (*Server).handleUnban),
		r("PUT", c+"/rooms/{roomId}/send/{eventType}/{txnId}", EPSend, true, true, (*Server).handleSend),
		r("PUT", c+"/rooms/{roomId}/redact/{eventId}/{txnId}", EPRedact, true, true, (*Server).handleRedact),
		r("GET", c+"/rooms/{roomId}/state", EPStateAll, true, false, (*Server).handleStateAll),
		r("GET", c+"/rooms/{roomId}/state/{eventType}", EPStateGet, true, false, (*Server).handleStateGet),
		r("GET", c+"/rooms/{roomId}/state/{eventType}/{stateKey}", EPStateGet, true, false, (*Server).handleStateGet),
		r("PUT", c+"/rooms/{roomId}/state/{eventType}", EPStatePut, true, true, (*Server).handleStatePut),
		r("PUT", c+"/rooms/{roomId}/state/{eventType}/{stateKey}", EPStatePut, true, true, (*Server).handleStatePut),
		r("GET", c+"/rooms/{roomId}/joined_members", EPJoinedMembers, true, false, (*Server).handleJoinedMembers),
		r("GET", c+"/rooms/{roomId}/members", EPMembers, true, false, (*Server).handleMembers),
		r("GET", c+"/rooms/{roomId}/messages", EPMessages, true, false, (*Server).handleMessages),
		r("GET", c+"/rooms/{roomId}/context/{eventId}", EPContext, true, false, (*Server).handleContext),
		r("GET", c+"/rooms/{roomId}/aliases", EPRoomAliases, true, false, (*Server).handleRoomAliases),
		r("POST", c+"/rooms/{roomId}/upgrade", EPUpgrade, true, true, (*Server).handleUpgrade),
		r("GET", c+"/directory/room/{roomAlias}", EPDirectoryGet, false, false, (*Server).handleDirectoryGet),
		r("PUT", c+"/directory/room/{roomAlias}", EPDirectoryPut, true, false, (*Server).handleDirectoryPut),
		r("DELETE", c+"/directory/room/{roomAlias}", EPDirectoryDelete, true, false, (*Server).handleDirectoryDelete),
		r("GET", c+"/directory/list/room/{roomId}", EPDirectoryListGet, false, false, (*Server).handleDirectoryListGet),
		r("PUT", c+"/directory/list/room/{roomId}", EPDirectoryListPut, true, false, (*Server).handleDirectoryListPut),
		r("GET", c+"/joined_rooms", EPJoinedRooms, true, false, (*Server).handleJoinedRooms),
		r("GET", c+"/capabilities", EPCapabilities, true, false, (*Server).handleCapabilities),
		r("POST", "/_matrix/client/v1/appservice/{appserviceId}/ping", EPPing, true, false, (*Server).handlePing),
		r("GET", c+"/thirdparty/location", EPThirdpartyLocation, true, false, (*Server).handleThirdparty),
		r("GET", c+"/thirdparty/location/{protocol}", EPThirdpartyLocation, true, false, (*Server).handleThirdparty),
		r("GET", c+"/thirdparty/user", EPThirdpartyUser, true, false, (*Server).handleThirdparty),
		r("GET", c+"/thirdparty/user/{protocol}", EPThirdpartyUser, true, false, (*Server).handleThirdparty),
	}
}

// match finds the route for an escaped path. It never cleans the path or
// splits an encoded "/" (a %2F stays inside its segment).
func (s *Server) match(method, escapedPath string) (rt *route, params map[string]string, mismatch *route, bad *matrixError) {
	segs := strings.Split(strings.TrimPrefix(escapedPath, "/"), "/")
	for i := range s.routes {
		cand := &s.routes[i]
		if len(cand.segments) != len(segs) {
			continue
		}
		p := map[string]string{}
		ok := true
		var badSeg *matrixError
		for j, pat := range cand.segments {
			switch {
			case pat == "{cv}":
				if segs[j] != "r0" && segs[j] != "v3" {
					ok = false
				}
			case strings.HasPrefix(pat, "{"):
				v, err := url.PathUnescape(segs[j])
				if err != nil {
					badSeg = errf(http.StatusBadRequest, "M_INVALID_PARAM", "bad percent-encoding in path")
				}
				p[strings.Trim(pat, "{}")] = v
			default:
				if pat != segs[j] {
					ok = false
				}
			}
			if !ok {
				break
			}
		}
		if !ok {
			continue
		}
		if cand.method != method {
			if mismatch == nil {
				mismatch = cand
			}
			continue
		}
		return cand, p, nil, badSeg
	}
	return nil, nil, mismatch, nil
}

// ServeHTTP routes, counts, authenticates, rate limits and runs the
// handler, then answers after the endpoint's injected latency. The latency
// delays the answer, not the effect: a homeserver does not undo a write
// because the client stopped waiting (Synapse commits a createRoom whose
// client hung up), so a client that times out may find its change applied.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodOptions {
		w.Header().Set("Access-Control-Allow-Origin", "*")
		w.Header().Set("Access-Control-Allow-Methods", "GET, POST, PUT, DELETE, OPTIONS")
		w.Header().Set("Access-Control-Allow-Headers", "Authorization, Content-Type")
		writeJSON(w, http.StatusOK, map[string]any{})
		return
	}
	path := r.URL.EscapedPath()
	rt, params, mismatch, bad := s.match(r.Method, path)
	endpoint := EPUnknown
	if rt != nil {
		endpoint = rt.endpoint
	} else if mismatch != nil {
		endpoint = mismatch.endpoint
	}
	s.mu.Lock()
	s.calls[endpoint]++
	delay := s.latency[endpoint]
	fault := s.takeFaultLocked(endpoint, params["roomId"])
	s.mu.Unlock()

	// answer waits out the latency, unless the client is gone by then.
	answer := func(write func()) {
		if sleepCtx(r.Context(), delay) {
			write()
		}
	}
	fail := func(e *matrixError) { answer(func() { writeError(w, e) }) }
	if fault != nil {
		answer(func() { s.applyFault(w, fault) })
		return
	}
	if rt == nil {
		if mismatch != nil {
			fail(errf(http.StatusMethodNotAllowed, "M_UNRECOGNIZED", "Unrecognized request"))
			return
		}
		fail(errf(http.StatusNotFound, "M_UNRECOGNIZED", "Unrecognized request"))
		return
	}
	if bad != nil {
		fail(bad)
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, 10<<20+1))
	if err != nil {
		fail(errf(http.StatusBadRequest, "M_UNKNOWN", "cannot read body"))
		return
	}
	if len(body) > 10<<20 {
		fail(errf(http.StatusRequestEntityTooLarge, "M_TOO_LARGE", "Request body too large"))
		return
	}
	hr := r
	if r.Method != http.MethodGet {
		// A write runs to its end whatever the client does; only closing
		// the simulator stops the appservice calls it makes.
		hr = r.WithContext(s.ctx)
	}
	q := &request{r: hr, w: w, endpoint: endpoint, params: params, rawPath: path, body: body}
	defer func() {
		if q.answered != nil {
			s.mu.Lock()
			q.answered()
			s.mu.Unlock()
		}
	}()
	// A token that is present must be valid, even where none is needed,
	// as Synapse answers.
	if rt.auth || (hasToken(r) && rt.endpoint != EPVersions) {
		who, merr := s.authenticate(r)
		if merr != nil {
			fail(merr)
			return
		}
		q.who = who
	}
	if rt.limited {
		if merr := s.checkRateLimit(q.who, r); merr != nil {
			fail(merr)
			return
		}
	}
	resp, merr := rt.h(s, q)
	if r.Method != http.MethodGet {
		// Wake Wait callers: any write may have changed what they poll
		// (profiles, registrations and aliases change no room).
		s.mu.Lock()
		s.signalLocked()
		s.mu.Unlock()
	}
	if merr != nil {
		fail(merr)
		return
	}
	if resp == nil {
		resp = map[string]any{}
	}
	answer(func() { writeJSON(w, http.StatusOK, resp) })
}

// sleepCtx waits d or until ctx ends; it reports whether d elapsed.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

func (s *Server) handleVersions(*request) (any, *matrixError) {
	return map[string]any{"versions": []string{"r0.6.1", "v1.1", "v1.5", "v1.7", "v1.11"}, "unstable_features": map[string]bool{}}, nil
}
