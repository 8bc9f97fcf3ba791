package gateway

import (
	"encoding/json"
	"net/http"
	"net/url"

	"github.com/go-chi/chi/v5"
)

// Matrix error codes the gateway answers with.
const (
	codeUnrecognized = "M_UNRECOGNIZED"
	codeMissingToken = "M_MISSING_TOKEN"
	codeForbidden    = "M_FORBIDDEN"
	codeNotJSON      = "M_NOT_JSON"
	codeBadJSON      = "M_BAD_JSON"
	codeTooLarge     = "M_TOO_LARGE"
	codeNotFound     = "M_NOT_FOUND"
	codeInvalidParam = "M_INVALID_PARAM"
	// codeUnknown goes with 503: the spec has no code for "try again".
	codeUnknown = "M_UNKNOWN"
)

var (
	emptyObject = []byte("{}")
	emptyArray  = []byte("[]")
)

// writeJSON writes a JSON body. Every 2xx body is JSON: Synapse treats an
// empty 2xx body as a failed transaction.
func writeJSON(w http.ResponseWriter, status int, body []byte) {
	h := w.Header()
	h["Content-Type"] = []string{"application/json"}
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

// matrixError is the spec's error body; both keys are always present.
type matrixError struct {
	ErrCode string `json:"errcode"`
	Error   string `json:"error"`
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	b, err := json.Marshal(matrixError{ErrCode: code, Error: msg})
	if err != nil {
		b = []byte(`{"errcode":"M_UNKNOWN","error":"internal error"}`)
	}
	writeJSON(w, status, b)
}

// pathRest returns the rest of the path matched by a route's "*", decoded
// exactly once. The router matches on the escaped path (see rawPath), so
// the parameter arrives still escaped, whatever the client escaped.
func pathRest(r *http.Request) (string, bool) {
	v, err := url.PathUnescape(chi.URLParam(r, "*"))
	return v, err == nil
}
