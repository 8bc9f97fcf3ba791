package hssim

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"time"
)

// matrixError is an error answer in the spec's shape: errcode and error,
// plus the extra keys some codes carry.
type matrixError struct {
	Status     int
	ErrCode    string
	Message    string
	Extra      map[string]any
	RetryAfter time.Duration // for M_LIMIT_EXCEEDED: header and retry_after_ms
	// NoRetryHeader leaves the Retry-After header out (Dendrite writes
	// only retry_after_ms).
	NoRetryHeader bool
}

func (e *matrixError) Error() string {
	return fmt.Sprintf("%d %s: %s", e.Status, e.ErrCode, e.Message)
}

func errf(status int, code, format string, args ...any) *matrixError {
	return &matrixError{Status: status, ErrCode: code, Message: fmt.Sprintf(format, args...)}
}

func errForbidden(format string, args ...any) *matrixError {
	return errf(http.StatusForbidden, "M_FORBIDDEN", format, args...)
}

func errNotFound(format string, args ...any) *matrixError {
	return errf(http.StatusNotFound, "M_NOT_FOUND", format, args...)
}

func errBadJSON(format string, args ...any) *matrixError {
	return errf(http.StatusBadRequest, "M_BAD_JSON", format, args...)
}

// errLimit is a 429 as the simulated server writes it: Synapse (since
// 1.104, MSC4041) and continuwuity (ruma) send retry_after_ms and the
// Retry-After header in whole seconds, Dendrite only retry_after_ms.
func (s *Server) errLimit(d time.Duration) *matrixError {
	return &matrixError{Status: http.StatusTooManyRequests, ErrCode: "M_LIMIT_EXCEEDED", Message: "Too Many Requests", RetryAfter: d,
		NoRetryHeader: s.opts.Mode == Dendrite}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		status = http.StatusInternalServerError
		body = []byte(`{"errcode":"M_UNKNOWN","error":"cannot encode response"}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

func writeError(w http.ResponseWriter, e *matrixError) {
	body := map[string]any{}
	for k, v := range e.Extra {
		body[k] = v
	}
	body["errcode"] = e.ErrCode
	body["error"] = e.Message
	if e.ErrCode == "M_LIMIT_EXCEEDED" {
		ms := e.RetryAfter.Milliseconds()
		body["retry_after_ms"] = ms
		if !e.NoRetryHeader {
			secs := (ms + 999) / 1000
			w.Header().Set("Retry-After", strconv.FormatInt(secs, 10))
		}
	}
	writeJSON(w, e.Status, body)
}
