// Package matrix is a client for the parts of the Matrix client-server API an
// application service needs: registering its users, creating and joining
// rooms, sending messages, reading and writing state, moderating members.
//
// Every call goes through one retry policy. A 429 waits as long as the
// homeserver says (Retry-After, else retry_after_ms); 5xx answers and network
// errors back off exponentially with full jitter; other 4xx answers are
// returned at once as *Error. Attempts are bounded and every wait honours the
// caller's context.
//
// Retries resend the identical request, so callers must make requests
// idempotent: SendEvent and SetStateEvent are (a send reuses its txnID, which
// the homeserver deduplicates; a state event replaces itself), but a
// CreateRoom whose response was lost and that is then retried fails with
// M_ROOM_IN_USE because the first attempt already took the alias. Callers
// that create rooms with an alias must treat IsRoomInUse as success.
// Likewise RegisterAppserviceUser reports created=false after such a retry.
//
// The access token is only ever sent in the Authorization header; it never
// appears in a URL, in a log line or in an error returned by this package.
package matrix

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/cactus-comments/appservice/pkg/event"
	"github.com/cactus-comments/appservice/pkg/mxid"
)

// Defaults for Config fields left zero.
const (
	DefaultRequestTimeout = 20 * time.Second
	DefaultMaxAttempts    = 5
	DefaultMinBackoff     = 200 * time.Millisecond
	DefaultMaxBackoff     = 10 * time.Second
	DefaultMaxRetryAfter  = 60 * time.Second
	// MaxResponseSize bounds every response body read; a /state of a huge
	// room is a few MiB, anything beyond this is a broken or hostile server.
	MaxResponseSize = 16 << 20
)

// Config configures a Client. Only HomeserverURL and Token are required.
type Config struct {
	HomeserverURL string // base URL such as https://matrix.example.org; a trailing slash is ignored
	Token         string // the appservice's as_token, or a user's access token
	// HTTPClient sends the requests. Nil: a client of its own whose
	// transport keeps many idle connections to the homeserver, since all
	// our traffic goes to that one host.
	HTTPClient     *http.Client
	RequestTimeout time.Duration // per attempt; default 20s
	MaxAttempts    int           // attempts per call including the first; default 5, 1 disables retries
	MinBackoff     time.Duration // lower bound of the 5xx/network backoff; default 200ms
	MaxBackoff     time.Duration // upper bound of the 5xx/network backoff; default 10s
	// MaxRetryAfter is the longest 429 wait we accept. A homeserver asking
	// for more gets its error returned at once (Error.RetryAfter says how
	// long it wanted) so the caller can reschedule instead of blocking.
	// Default 60s.
	MaxRetryAfter time.Duration
	// Observe, if set, is called after every attempt with a stable endpoint
	// name (such as "createRoom", "send"; never a path with ids in it), the
	// HTTP status (0 for a network error) and the attempt's duration.
	Observe func(endpoint string, status int, d time.Duration)
	Logger  *slog.Logger // retries are logged here; nil: not logged
}

// Client calls the homeserver's client-server API. It is safe for
// concurrent use. Clients made by As share the transport, configuration and
// jitter source of their parent.
type Client struct {
	s      *shared
	asUser mxid.UserID
}

// shared is what a Client and all its masquerading copies have in common.
type shared struct {
	base          *url.URL
	token         string
	hc            *http.Client
	timeout       time.Duration
	maxAttempts   int
	minBackoff    time.Duration
	maxBackoff    time.Duration
	maxRetryAfter time.Duration
	observe       func(string, int, time.Duration)
	log           *slog.Logger

	mu  sync.Mutex
	rnd *rand.Rand

	// Seams for tests; production values are set by NewClient.
	now     func() time.Time
	sleep   func(ctx context.Context, d time.Duration) error
	maxBody int64
}

// NewClient validates cfg and returns a client.
func NewClient(cfg Config) (*Client, error) {
	raw := strings.TrimRight(strings.TrimSpace(cfg.HomeserverURL), "/")
	if raw == "" {
		return nil, errors.New("matrix: homeserver URL is empty")
	}
	base, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("matrix: homeserver URL: %w", err)
	}
	if base.Scheme != "http" && base.Scheme != "https" {
		return nil, fmt.Errorf("matrix: homeserver URL must be http or https, not %q", base.Scheme)
	}
	if base.Host == "" {
		return nil, errors.New("matrix: homeserver URL has no host")
	}
	if base.User != nil || base.RawQuery != "" || base.Fragment != "" {
		return nil, errors.New("matrix: homeserver URL must not carry credentials, a query or a fragment")
	}
	if cfg.Token == "" {
		return nil, errors.New("matrix: access token is empty")
	}
	if strings.ContainsAny(cfg.Token, "\r\n\t ") {
		return nil, errors.New("matrix: access token contains whitespace")
	}
	if cfg.MaxAttempts < 0 || cfg.RequestTimeout < 0 || cfg.MinBackoff < 0 || cfg.MaxBackoff < 0 || cfg.MaxRetryAfter < 0 {
		return nil, errors.New("matrix: negative timeout, backoff or attempt count")
	}
	s := &shared{
		base:          base,
		token:         cfg.Token,
		hc:            cfg.HTTPClient,
		timeout:       orDefault(cfg.RequestTimeout, DefaultRequestTimeout),
		maxAttempts:   cfg.MaxAttempts,
		minBackoff:    orDefault(cfg.MinBackoff, DefaultMinBackoff),
		maxBackoff:    orDefault(cfg.MaxBackoff, DefaultMaxBackoff),
		maxRetryAfter: orDefault(cfg.MaxRetryAfter, DefaultMaxRetryAfter),
		observe:       cfg.Observe,
		log:           cfg.Logger,
		rnd:           rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64())),
		now:           time.Now,
		sleep:         sleepCtx,
		maxBody:       MaxResponseSize,
	}
	if s.maxAttempts == 0 {
		s.maxAttempts = DefaultMaxAttempts
	}
	if s.maxBackoff < s.minBackoff {
		s.maxBackoff = s.minBackoff
	}
	if s.hc == nil {
		s.hc = &http.Client{Transport: newTransport(), CheckRedirect: noRedirects}
	}
	return &Client{s: s}, nil
}

func orDefault(d, def time.Duration) time.Duration {
	if d == 0 {
		return def
	}
	return d
}

// newTransport is tuned for many concurrent requests to a single host: the
// default transport keeps only 2 idle connections per host, which under
// fan-out load means a new TCP (and TLS) handshake for most requests.
func newTransport() *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConns = 256
	t.MaxIdleConnsPerHost = 128
	t.IdleConnTimeout = 90 * time.Second
	t.ResponseHeaderTimeout = 0 // the per-attempt context bounds the whole exchange
	t.DialContext = (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext
	return t
}

// noRedirects makes a 3xx an error: the client-server API does not
// redirect, and following one would turn a POST into a bodiless GET.
func noRedirects(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }

// As returns a client that acts as user (appservice masquerading: every
// request carries ?user_id=). The zero UserID returns a client acting as the
// token's own user.
func (c *Client) As(user mxid.UserID) *Client {
	return &Client{s: c.s, asUser: user}
}

// User returns the user this client masquerades as, or the zero UserID.
func (c *Client) User() mxid.UserID { return c.asUser }

// segmentUnreserved reports the bytes left as they are in a path segment.
// Everything else, including sub-delimiters like ':' '!' '@' that RFC 3986
// would allow, is escaped: routers differ in what they decode before
// matching, and only unreserved characters mean the same to all of them.
func segmentUnreserved(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
		c == '-' || c == '.' || c == '_' || c == '~'
}

// escapeSegment percent-encodes s so that it is exactly one path segment.
// A segment of only dots is encoded fully, since "." and ".." would
// otherwise be removed or resolved by URL normalisation (in the client, a
// proxy or the server's router): state keys may legitimately be "..".
func escapeSegment(s string) string {
	const hex = "0123456789ABCDEF"
	if s == "." || s == ".." {
		return strings.ReplaceAll(s, ".", "%2E")
	}
	var b strings.Builder
	b.Grow(len(s) * 3)
	for i := 0; i < len(s); i++ {
		c := s[i]
		if segmentUnreserved(c) {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('%')
		b.WriteByte(hex[c>>4])
		b.WriteByte(hex[c&15])
	}
	return b.String()
}

// apiPath fills each "{}" in tmpl with the next segment, escaped. tmpl
// itself is a constant of this package and needs no escaping.
func apiPath(tmpl string, segs ...string) (decoded, escaped string) {
	var d, e strings.Builder
	for _, seg := range segs {
		i := strings.Index(tmpl, "{}")
		if i < 0 {
			panic("matrix: more segments than placeholders in " + tmpl)
		}
		d.WriteString(tmpl[:i])
		e.WriteString(tmpl[:i])
		d.WriteString(seg)
		e.WriteString(escapeSegment(seg))
		tmpl = tmpl[i+2:]
	}
	if strings.Contains(tmpl, "{}") {
		panic("matrix: fewer segments than placeholders in " + tmpl)
	}
	d.WriteString(tmpl)
	e.WriteString(tmpl)
	return d.String(), e.String()
}

// request is one API call, resent unchanged on every attempt.
type request struct {
	endpoint string
	method   string
	path     string // decoded
	rawPath  string // escaped
	query    url.Values
	body     []byte // nil: no body
}

func (c *Client) newRequest(endpoint, method string, query url.Values, body any, tmpl string, segs ...string) (*request, error) {
	r := &request{endpoint: endpoint, method: method, query: query}
	r.path, r.rawPath = apiPath(tmpl, segs...)
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, fmt.Errorf("matrix: %s: encoding request body: %w", endpoint, err)
		}
		r.body = b
	}
	return r, nil
}

func (c *Client) url(r *request) *url.URL {
	u := *c.s.base
	u.Path = c.s.base.Path + r.path
	u.RawPath = c.s.base.EscapedPath() + r.rawPath
	q := url.Values{}
	for k, v := range r.query {
		q[k] = v
	}
	if !c.asUser.IsZero() {
		q.Set("user_id", c.asUser.String())
	}
	u.RawQuery = q.Encode()
	return &u
}

// call builds and runs a request; out, if not nil, receives the JSON of a
// 2xx answer.
func (c *Client) call(ctx context.Context, endpoint, method string, query url.Values, body, out any, tmpl string, segs ...string) error {
	r, err := c.newRequest(endpoint, method, query, body, tmpl, segs...)
	if err != nil {
		return err
	}
	return c.do(ctx, r, out)
}

// do runs r with the retry policy.
func (c *Client) do(ctx context.Context, r *request, out any) error {
	u := c.url(r).String()
	for attempt := 1; ; attempt++ {
		err := c.attempt(ctx, r, u, out)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			// Keep the homeserver's answer if there was one: it says more
			// than "context canceled" about why the call did not succeed.
			var me *Error
			if errors.As(err, &me) {
				return fmt.Errorf("matrix: %s: %w (last error: %w)", r.endpoint, ctx.Err(), err)
			}
			return fmt.Errorf("matrix: %s: %w", r.endpoint, ctx.Err())
		}
		wait, retry := c.retryWait(err, attempt)
		if !retry || attempt >= c.s.maxAttempts {
			return err
		}
		// Waiting past the caller's deadline only to fail then is pointless;
		// the homeserver's answer is the more useful error.
		if dl, ok := ctx.Deadline(); ok && c.s.now().Add(wait).After(dl) {
			return err
		}
		if c.s.log != nil {
			c.s.log.LogAttrs(ctx, slog.LevelWarn, "matrix: retrying homeserver request",
				slog.String("endpoint", r.endpoint), slog.Int("attempt", attempt),
				slog.Duration("wait", wait), slog.String("error", err.Error()))
		}
		if werr := c.s.sleep(ctx, wait); werr != nil {
			return fmt.Errorf("matrix: %s: gave up waiting to retry: %w (last error: %w)", r.endpoint, werr, err)
		}
	}
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// retryWait decides whether err is worth another attempt, and after how long.
func (c *Client) retryWait(err error, attempt int) (time.Duration, bool) {
	var me *Error
	if errors.As(err, &me) {
		switch {
		case me.Status == http.StatusTooManyRequests || me.ErrCode == CodeLimitExceeded:
			if me.RetryAfter > 0 {
				if me.RetryAfter > c.s.maxRetryAfter {
					return 0, false
				}
				return me.RetryAfter, true
			}
			return c.backoff(attempt), true
		case me.ErrCode == CodeBadStatus || me.ErrCode == CodeConnectionFailed || me.ErrCode == CodeConnectionTimeout:
			// The ping's verdict on the appservice, not a homeserver fault.
			return 0, false
		case me.Status >= 500 && !notImplemented(me.Status),
			me.Status == http.StatusRequestTimeout:
			return c.backoff(attempt), true
		}
		return 0, false
	}
	var te *transportError
	if errors.As(err, &te) {
		return c.backoff(attempt), true
	}
	return 0, false
}

// backoff is "full jitter": uniform between MinBackoff and an exponentially
// growing ceiling capped at MaxBackoff, so that many workers hit by the same
// outage do not come back in lockstep.
func (c *Client) backoff(attempt int) time.Duration {
	ceil := c.s.minBackoff
	for i := 1; i < attempt && ceil < c.s.maxBackoff; i++ {
		ceil *= 2
	}
	if ceil > c.s.maxBackoff {
		ceil = c.s.maxBackoff
	}
	span := ceil - c.s.minBackoff
	if span <= 0 {
		return c.s.minBackoff
	}
	c.s.mu.Lock()
	j := c.s.rnd.Int64N(int64(span) + 1)
	c.s.mu.Unlock()
	return c.s.minBackoff + time.Duration(j)
}

// transportError is a failure to get a response at all. Its message names
// the endpoint but not the URL, whose query may identify users.
type transportError struct {
	endpoint, method string
	err              error
}

func (e *transportError) Error() string {
	return fmt.Sprintf("matrix: %s: %s request failed: %v", e.endpoint, e.method, e.err)
}

func (e *transportError) Unwrap() error { return e.err }

// IsTransient reports an error worth retrying later: a network failure,
// a 5xx other than 501 and 505, a 408 or a rate limit. An unreadable 2xx
// answer is neither transient nor permanent (see IsPermanent).
func IsTransient(err error) bool {
	var te *transportError
	if errors.As(err, &te) {
		return true
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Status >= 500 && !notImplemented(e.Status) ||
			e.Status == http.StatusTooManyRequests || e.Status == http.StatusRequestTimeout || e.ErrCode == CodeLimitExceeded
	}
	return false
}

// notImplemented reports the 5xx statuses that describe the request rather
// than the server's health, so retrying them is useless.
func notImplemented(status int) bool {
	return status == http.StatusNotImplemented || status == http.StatusHTTPVersionNotSupported
}

func (c *Client) attempt(ctx context.Context, r *request, u string, out any) error {
	actx, cancel := context.WithTimeout(ctx, c.s.timeout)
	defer cancel()
	var body io.Reader
	if r.body != nil {
		body = bytes.NewReader(r.body)
	}
	req, err := http.NewRequestWithContext(actx, r.method, u, body)
	if err != nil {
		return fmt.Errorf("matrix: %s: building request: %w", r.endpoint, c.redact(unwrapURLError(err)))
	}
	req.Header.Set("Authorization", "Bearer "+c.s.token)
	req.Header.Set("Accept", "application/json")
	if r.body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	start := time.Now()
	resp, err := c.s.hc.Do(req)
	if err != nil {
		c.observe(r.endpoint, 0, time.Since(start))
		return &transportError{endpoint: r.endpoint, method: r.method, err: c.redact(unwrapURLError(err))}
	}
	data, readErr := readBody(resp.Body, c.s.maxBody)
	c.observe(r.endpoint, resp.StatusCode, time.Since(start))
	if readErr != nil {
		if errors.Is(readErr, errTooLarge) {
			return fmt.Errorf("matrix: %s: HTTP %d: %w", r.endpoint, resp.StatusCode, readErr)
		}
		return &transportError{endpoint: r.endpoint, method: r.method, err: fmt.Errorf("reading response: %w", c.redact(readErr))}
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		// Redact before parseError truncates, or a cut token could leak.
		return parseError(r.endpoint, resp.StatusCode, resp.Header, []byte(c.redactString(string(data))), c.s.now())
	}
	if out == nil {
		return nil
	}
	// Answers carry events and contents: they are read as strictly as
	// every event is (see package event).
	if err := event.DecodeContent(data, out); err != nil {
		return fmt.Errorf("matrix: %s: HTTP %d with an unreadable body (%s): %w", r.endpoint, resp.StatusCode, clean(c.redactString(string(data)), maxErrorBody), err)
	}
	return nil
}

func (c *Client) observe(endpoint string, status int, d time.Duration) {
	if c.s.observe != nil {
		c.s.observe(endpoint, status, d)
	}
}

var errTooLarge = errors.New("response body larger than the limit")

// readBody reads at most limit bytes, then drains a little more and closes
// the body so the connection can go back to the pool.
func readBody(rc io.ReadCloser, limit int64) ([]byte, error) {
	defer func() {
		// Draining a bounded amount lets the transport reuse the
		// connection; an endless body is cut off instead.
		_, _ = io.Copy(io.Discard, io.LimitReader(rc, 64<<10))
		rc.Close()
	}()
	data, err := io.ReadAll(io.LimitReader(rc, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > limit {
		return nil, errTooLarge
	}
	return data, nil
}

// unwrapURLError drops *url.Error's quoted URL from the message: the
// underlying cause is what matters and the URL carries the user_id query.
func unwrapURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// redact guards against a token leaking through text we do not control
// (a proxy echoing the request, a transport error quoting a header).
func (c *Client) redact(err error) error {
	if err == nil || !strings.Contains(err.Error(), c.s.token) {
		return err
	}
	return redactedError{msg: c.redactString(err.Error()), err: err}
}

func (c *Client) redactString(s string) string {
	return strings.ReplaceAll(s, c.s.token, "[REDACTED]")
}

type redactedError struct {
	msg string
	err error
}

func (e redactedError) Error() string { return e.msg }
func (e redactedError) Unwrap() error { return e.err }
