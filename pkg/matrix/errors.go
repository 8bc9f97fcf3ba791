package matrix

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// Error codes this package gives meaning to. The homeserver may send others;
// they end up in Error.ErrCode unchanged.
const (
	CodeForbidden         = "M_FORBIDDEN"
	CodeNotFound          = "M_NOT_FOUND"
	CodeLimitExceeded     = "M_LIMIT_EXCEEDED"
	CodeRoomInUse         = "M_ROOM_IN_USE"
	CodeUserInUse         = "M_USER_IN_USE"
	CodeExclusive         = "M_EXCLUSIVE"
	CodeUnrecognized      = "M_UNRECOGNIZED"
	CodeUnknownToken      = "M_UNKNOWN_TOKEN"
	CodeMissingToken      = "M_MISSING_TOKEN"
	CodeBadStatus         = "M_BAD_STATUS"
	CodeConnectionFailed  = "M_CONNECTION_FAILED"
	CodeConnectionTimeout = "M_CONNECTION_TIMEOUT"
	CodeURLNotSet         = "M_URL_NOT_SET"
	CodeUnknown           = "M_UNKNOWN"
)

// maxErrorBody bounds how much of a non-JSON error body is quoted in an
// error message: a proxy's HTML page is useless beyond its first lines and
// would flood logs.
const maxErrorBody = 200

// Error is a non-2xx answer from the homeserver.
type Error struct {
	Status     int           // HTTP status code
	ErrCode    string        // Matrix errcode, "" when the body was not a Matrix error
	Message    string        // the "error" field, or a description of the unexpected body
	RetryAfter time.Duration // from Retry-After or retry_after_ms; 0 if absent
	Endpoint   string        // stable endpoint name such as "createRoom"
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("matrix: ")
	if e.Endpoint != "" {
		b.WriteString(e.Endpoint)
		b.WriteString(": ")
	}
	b.WriteString("HTTP ")
	b.WriteString(strconv.Itoa(e.Status))
	if e.ErrCode != "" {
		b.WriteString(" ")
		b.WriteString(e.ErrCode)
	}
	if e.Message != "" {
		b.WriteString(": ")
		b.WriteString(e.Message)
	}
	if e.RetryAfter > 0 {
		fmt.Fprintf(&b, " (retry after %v)", e.RetryAfter)
	}
	return b.String()
}

// ErrCode returns the Matrix errcode of err, or "" if err is not (and does
// not wrap) an *Error.
func ErrCode(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.ErrCode
	}
	return ""
}

// Status returns the HTTP status of err, or 0 if err is not an *Error.
func Status(err error) int {
	var e *Error
	if errors.As(err, &e) {
		return e.Status
	}
	return 0
}

// IsRoomInUse reports M_ROOM_IN_USE: the alias of a createRoom is taken,
// which for an idempotent createRoom (including our own retry after a lost
// response) means the room exists.
func IsRoomInUse(err error) bool { return ErrCode(err) == CodeRoomInUse }

// IsUserInUse reports M_USER_IN_USE from registration.
func IsUserInUse(err error) bool { return ErrCode(err) == CodeUserInUse }

// IsNotFound reports M_NOT_FOUND, or a 404 without a Matrix errcode (from a
// proxy). A 404 M_UNRECOGNIZED is not "not found": the homeserver does not
// know the endpoint (Dendrite and the appservice ping), and treating that as
// an absent resource would hide a missing feature.
func IsNotFound(err error) bool {
	var e *Error
	return errors.As(err, &e) && (e.ErrCode == CodeNotFound || e.Status == http.StatusNotFound && e.ErrCode == "")
}

// IsUnrecognized reports M_UNRECOGNIZED: the homeserver does not implement
// the endpoint or method.
func IsUnrecognized(err error) bool { return ErrCode(err) == CodeUnrecognized }

// IsForbidden reports M_FORBIDDEN or a 403.
func IsForbidden(err error) bool {
	var e *Error
	return errors.As(err, &e) && (e.ErrCode == CodeForbidden || e.Status == http.StatusForbidden)
}

// IsLimitExceeded reports a rate limit (429 or M_LIMIT_EXCEEDED) that was
// still in force when the client gave up.
func IsLimitExceeded(err error) bool {
	var e *Error
	return errors.As(err, &e) && (e.ErrCode == CodeLimitExceeded || e.Status == http.StatusTooManyRequests)
}

// IsPermanent reports a 4xx answer other than 429 and 408: the request was
// understood and refused, so sending it again will not help. Network errors,
// 5xx and context errors are not permanent, and neither is a 2xx answer we
// could not read (the call may well have taken effect).
func IsPermanent(err error) bool {
	var e *Error
	if !errors.As(err, &e) {
		return false
	}
	return e.Status >= 400 && e.Status < 500 &&
		e.Status != http.StatusTooManyRequests && e.Status != http.StatusRequestTimeout &&
		e.ErrCode != CodeLimitExceeded
}

// parseError turns a non-2xx response into an *Error. It never fails: any
// body (empty, HTML, truncated JSON, binary) yields a usable message.
func parseError(endpoint string, status int, header http.Header, body []byte, now time.Time) *Error {
	e := &Error{Status: status, Endpoint: endpoint}
	var m struct {
		ErrCode      any `json:"errcode"`
		Error        any `json:"error"`
		RetryAfterMS any `json:"retry_after_ms"`
	}
	isJSON := json.Valid(body)
	if json.Unmarshal(body, &m) == nil {
		if s, ok := m.ErrCode.(string); ok {
			e.ErrCode = clean(s, 64)
		}
		if s, ok := m.Error.(string); ok {
			e.Message = clean(s, maxErrorBody)
		}
		if f, ok := m.RetryAfterMS.(float64); ok {
			e.RetryAfter = msDuration(f)
		}
	}
	if e.ErrCode == "" && e.Message == "" {
		switch {
		case len(body) == 0:
			e.Message = "empty response body"
		case isJSON:
			e.Message = "unexpected JSON body: " + clean(string(body), maxErrorBody)
		default:
			e.Message = "non-JSON response body: " + clean(string(body), maxErrorBody)
		}
	}
	// The spec makes the header authoritative; retry_after_ms is the
	// fallback older servers send.
	if d, ok := parseRetryAfter(header.Get("Retry-After"), now); ok {
		e.RetryAfter = d
	}
	return e
}

// maxRetryAfterValue keeps absurd server values from overflowing a
// time.Duration; anything this long is capped by MaxRetryAfter anyway.
const maxRetryAfterValue = 365 * 24 * time.Hour

func msDuration(ms float64) time.Duration {
	if math.IsNaN(ms) || ms <= 0 {
		return 0
	}
	if ms >= float64(maxRetryAfterValue/time.Millisecond) {
		return maxRetryAfterValue
	}
	return time.Duration(ms * float64(time.Millisecond))
}

// parseRetryAfter reads an HTTP Retry-After value: delay-seconds or an
// HTTP-date. ok is false when the header is absent or unusable.
func parseRetryAfter(v string, now time.Time) (time.Duration, bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	if v[0] >= '0' && v[0] <= '9' {
		n, err := strconv.ParseUint(v, 10, 64)
		if errors.Is(err, strconv.ErrRange) {
			return maxRetryAfterValue, true
		}
		if err != nil {
			return 0, false
		}
		if n >= uint64(maxRetryAfterValue/time.Second) {
			return maxRetryAfterValue, true
		}
		return time.Duration(n) * time.Second, true
	}
	t, err := http.ParseTime(v)
	if err != nil {
		return 0, false
	}
	d := t.Sub(now)
	if d < 0 {
		d = 0
	}
	if d > maxRetryAfterValue {
		d = maxRetryAfterValue
	}
	return d, true
}

// clean makes untrusted text safe to put in a one-line message: valid UTF-8,
// no control characters, at most max bytes.
func clean(s string, max int) string {
	truncated := false
	if len(s) > max {
		s = s[:max]
		truncated = true
	}
	s = strings.ToValidUTF8(s, "")
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f || r == utf8.RuneError {
			return ' '
		}
		return r
	}, s)
	s = strings.TrimSpace(s)
	if truncated {
		s += "…"
	}
	return s
}
