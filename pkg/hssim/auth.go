package hssim

import (
	"crypto/subtle"
	"net/http"
	"strings"
	"time"
)

// requester is who made a client-server call.
type requester struct {
	userID   string
	as       *appservice // set when the as_token authenticated the call
	guest    bool
	token    string
	deviceID string
}

func hasToken(r *http.Request) bool {
	return r.Header.Get("Authorization") != "" || r.URL.Query().Has("access_token")
}

func tokenFrom(r *http.Request) (string, bool) {
	if h := r.Header.Get("Authorization"); h != "" {
		t, ok := strings.CutPrefix(h, "Bearer ")
		if !ok {
			return "", false
		}
		return strings.TrimSpace(t), true
	}
	if t := r.URL.Query().Get("access_token"); t != "" {
		return t, true
	}
	return "", false
}

// authenticate resolves the access token: an appservice's as_token (with
// optional user_id masquerading) or a user's session.
func (s *Server) authenticate(r *http.Request) (*requester, *matrixError) {
	tok, ok := tokenFrom(r)
	if !ok {
		return nil, errf(http.StatusUnauthorized, "M_MISSING_TOKEN", "Missing access token")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, as := range s.apps {
		if subtle.ConstantTimeCompare([]byte(tok), []byte(as.reg.ASToken)) == 1 {
			return s.masqueradeLocked(as, tok, r.URL.Query().Get("user_id"))
		}
	}
	sess, ok := s.sessions[tok]
	if !ok {
		e := errf(http.StatusUnauthorized, "M_UNKNOWN_TOKEN", "Invalid access token passed.")
		e.Extra = map[string]any{"soft_logout": false}
		return nil, e
	}
	return &requester{userID: sess.userID, guest: sess.guest, token: tok, deviceID: sess.deviceID}, nil
}

// masqueradeLocked applies user_id: the user must be the appservice's
// sender, or in its users namespace and registered.
func (s *Server) masqueradeLocked(as *appservice, tok, userID string) (*requester, *matrixError) {
	if userID == "" || userID == as.sender {
		return &requester{userID: as.sender, as: as, token: tok}, nil
	}
	if in, _ := as.match.User(userID); !in {
		return nil, errForbidden("Application service cannot masquerade as this user (%s).", userID)
	}
	if !s.isRegisteredLocked(userID) {
		return nil, errForbidden("Application service has not registered this user (%s)", userID)
	}
	return &requester{userID: userID, as: as, token: tok}, nil
}

// bucket is a token bucket per rate-limited identity.
type bucket struct {
	tokens float64
	last   time.Time
}

// checkRateLimit charges one request to the caller's bucket. Appservices
// whose registration says rate_limited: false are exempt, as on Synapse.
func (s *Server) checkRateLimit(who *requester, r *http.Request) *matrixError {
	s.mu.Lock()
	defer s.mu.Unlock()
	rl := s.rateLimit
	if rl.PerSecond <= 0 {
		return nil
	}
	key := "ip:" + r.RemoteAddr
	if who != nil {
		key = "user:" + who.userID
		if who.as != nil {
			if !who.as.rateLimited {
				return nil
			}
			key = "as:" + who.as.reg.ID
		}
	}
	burst := float64(rl.Burst)
	if burst < 1 {
		burst = 1
	}
	now := time.Now()
	b, ok := s.buckets[key]
	if !ok {
		b = &bucket{tokens: burst, last: now}
		s.buckets[key] = b
	}
	b.tokens = min(burst, b.tokens+now.Sub(b.last).Seconds()*rl.PerSecond)
	b.last = now
	if b.tokens >= 1 {
		b.tokens--
		return nil
	}
	wait := time.Duration((1 - b.tokens) / rl.PerSecond * float64(time.Second))
	return s.errLimit(wait)
}

// SetRateLimit changes the rate limit of users and rate-limited
// appservices; a zero PerSecond disables it.
func (s *Server) SetRateLimit(rl RateLimit) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rateLimit = rl
	s.buckets = map[string]*bucket{}
}

// SetAppserviceRateLimited overrides the registration's rate_limited flag.
func (s *Server) SetAppserviceRateLimited(id string, limited bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, as := range s.apps {
		if as.reg.ID == id {
			as.rateLimited = limited
		}
	}
}
