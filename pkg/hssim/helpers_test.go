package hssim

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cactus-comments/appservice/pkg/event"
	"github.com/cactus-comments/appservice/pkg/registration"
)

const (
	testServer  = "example.org"
	testASToken = "as-secret"
	testHSToken = "hs-secret"
)

// fakeAS is an appservice on 127.0.0.1 that records what the homeserver
// sends it and can be told to fail.
type fakeAS struct {
	srv *httptest.Server

	mu       sync.Mutex
	txns     []seenTxn
	requests []seenRequest
	failN    int // fail the next N transaction pushes
	failWith int // status for failures (default 500)
	txnReply func(w http.ResponseWriter) bool
	onAlias  func(alias string) int // status for alias queries (default 404)
	onUser   func(userID string) int
	onPing   func(w http.ResponseWriter)
	block    chan struct{} // when non-nil, transaction pushes wait on it
	changed  chan struct{}
	inflight int
	maxIn    int
}

// waitFor blocks until cond (run under f.mu) holds.
func (f *fakeAS) waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	ctx := ctxT(t)
	for {
		f.mu.Lock()
		ok := cond()
		ch := f.changed
		f.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-ch:
		case <-ctx.Done():
			t.Fatal("fake appservice: condition not reached")
		}
	}
}

type seenTxn struct {
	ID        string
	Events    []event.Event
	Raw       []byte // the body as received
	Body      map[string]json.RawMessage
	AuthHdr   string
	AuthQuery string
	Status    int
}

type seenRequest struct {
	Method, RawPath, Query, Auth string
}

func newFakeAS(t *testing.T) *fakeAS { return newFakeASB(t) }

func regsFor(f *fakeAS) []*registration.Registration {
	return []*registration.Registration{testRegistration(f.srv.URL)}
}

func newFakeASB(t testing.TB) *fakeAS {
	t.Helper()
	f := &fakeAS{changed: make(chan struct{})}
	f.srv = httptest.NewUnstartedServer(http.HandlerFunc(f.serve))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f.srv.Listener = ln
	f.srv.Start()
	t.Cleanup(func() {
		f.mu.Lock()
		if f.block != nil {
			close(f.block)
			f.block = nil
		}
		f.mu.Unlock()
		f.srv.Close()
	})
	return f
}

func (f *fakeAS) signalLocked() {
	close(f.changed)
	f.changed = make(chan struct{})
}

func (f *fakeAS) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	f.mu.Lock()
	f.requests = append(f.requests, seenRequest{Method: r.Method, RawPath: r.URL.EscapedPath(), Query: r.URL.RawQuery, Auth: r.Header.Get("Authorization")})
	f.signalLocked()
	path := r.URL.EscapedPath()
	switch {
	case strings.HasPrefix(path, "/_matrix/app/v1/transactions/"):
		block := f.block
		f.inflight++
		f.maxIn = max(f.maxIn, f.inflight)
		f.mu.Unlock()
		if block != nil {
			select {
			case <-block:
			case <-r.Context().Done():
			}
		}
		f.mu.Lock()
		defer f.mu.Unlock()
		f.inflight--
		id, _ := url.PathUnescape(strings.TrimPrefix(path, "/_matrix/app/v1/transactions/"))
		var parsed struct {
			Events []event.Event `json:"events"`
		}
		_ = json.Unmarshal(body, &parsed)
		var raw map[string]json.RawMessage
		_ = json.Unmarshal(body, &raw)
		st := seenTxn{ID: id, Events: parsed.Events, Raw: body, Body: raw, AuthHdr: r.Header.Get("Authorization"), AuthQuery: r.URL.Query().Get("access_token")}
		switch {
		case f.failN > 0:
			f.failN--
			st.Status = f.failWith
			if st.Status == 0 {
				st.Status = 500
			}
			w.WriteHeader(st.Status)
			_, _ = w.Write([]byte(`{"errcode":"M_UNKNOWN","error":"told to fail"}`))
		case f.txnReply != nil && f.txnReply(w):
			st.Status = -1
		default:
			st.Status = 200
			_, _ = w.Write([]byte(`{}`))
		}
		f.txns = append(f.txns, st)
		f.signalLocked()
	case strings.HasPrefix(path, "/_matrix/app/v1/rooms/"):
		alias, _ := url.PathUnescape(strings.TrimPrefix(path, "/_matrix/app/v1/rooms/"))
		cb := f.onAlias
		f.mu.Unlock()
		status := 404
		if cb != nil {
			status = cb(alias)
		}
		w.WriteHeader(status)
		_, _ = w.Write([]byte(`{}`))
	case strings.HasPrefix(path, "/_matrix/app/v1/users/"):
		uid, _ := url.PathUnescape(strings.TrimPrefix(path, "/_matrix/app/v1/users/"))
		cb := f.onUser
		f.mu.Unlock()
		status := 404
		if cb != nil {
			status = cb(uid)
		}
		w.WriteHeader(status)
		_, _ = w.Write([]byte(`{}`))
	case path == "/_matrix/app/v1/ping":
		cb := f.onPing
		f.mu.Unlock()
		if cb != nil {
			cb(w)
			return
		}
		_, _ = w.Write([]byte(`{}`))
	case strings.HasPrefix(path, "/_matrix/app/v1/thirdparty/"):
		f.mu.Unlock()
		_, _ = w.Write([]byte(`[]`))
	default:
		f.mu.Unlock()
		w.WriteHeader(404)
		_, _ = w.Write([]byte(`{"errcode":"M_UNRECOGNIZED","error":"?"}`))
	}
}

func (f *fakeAS) transactions() []seenTxn {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]seenTxn(nil), f.txns...)
}

func (f *fakeAS) requestsTo(prefix string) []seenRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []seenRequest
	for _, r := range f.requests {
		if strings.HasPrefix(r.RawPath, prefix) {
			out = append(out, r)
		}
	}
	return out
}

// mu runs fn under the fake appservice's lock.
func (e *env) mu(fn func()) {
	e.as.mu.Lock()
	defer e.as.mu.Unlock()
	fn()
	e.as.signalLocked()
}

func (f *fakeAS) setFail(n, status int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failN, f.failWith = n, status
}

func testRegistration(asURL string) *registration.Registration {
	u := asURL
	f := false
	return &registration.Registration{
		ID: "cactus", URL: &u, ASToken: testASToken, HSToken: testHSToken, SenderLocalpart: "cactusbot",
		RateLimited: &f,
		Namespaces: registration.Namespaces{
			Users:   []registration.Namespace{{Exclusive: true, Regex: `@cactusbot:example\.org`}, {Exclusive: true, Regex: `@ascomments_.*:example\.org`}},
			Aliases: []registration.Namespace{{Exclusive: true, Regex: `#comments_.*`}},
		},
	}
}

type env struct {
	t  *testing.T
	hs *Server
	as *fakeAS
}

func startEnv(t *testing.T, mode Mode, mutate ...func(*Options)) *env {
	t.Helper()
	as := newFakeAS(t)
	opts := Options{ServerName: testServer, Mode: mode, TimeUnit: time.Millisecond, PushTimeout: 5 * time.Second, QueryTimeout: 5 * time.Second,
		Registrations: []*registration.Registration{testRegistration(as.srv.URL)}}
	for _, m := range mutate {
		m(&opts)
	}
	hs, err := Start(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = hs.Close() })
	return &env{t: t, hs: hs, as: as}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// resp is a decoded client-server answer.
type resp struct {
	Status int
	Header http.Header
	Body   map[string]any
	Raw    []byte
}

func (r resp) errcode() string { s, _ := r.Body["errcode"].(string); return s }
func (r resp) str(k string) string {
	s, _ := r.Body[k].(string)
	return s
}

// do calls the simulator; path is appended raw (already escaped).
func (e *env) do(method, path, token string, body any) resp {
	e.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	default:
		j, _ := json.Marshal(b)
		rd = bytes.NewReader(j)
	}
	req, err := http.NewRequest(method, e.hs.URL()+path, rd)
	if err != nil {
		e.t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer res.Body.Close()
	raw, _ := io.ReadAll(res.Body)
	out := resp{Status: res.StatusCode, Header: res.Header, Raw: raw}
	_ = json.Unmarshal(raw, &out.Body)
	return out
}

func (e *env) mustOK(r resp) resp {
	e.t.Helper()
	if r.Status != 200 {
		e.t.Fatalf("want 200, got %d %s", r.Status, r.Raw)
	}
	return r
}

func (e *env) user(localpart string) (string, string) {
	e.t.Helper()
	uid, tok, err := e.hs.RegisterUser(localpart, "pw-"+localpart)
	if err != nil {
		e.t.Fatal(err)
	}
	return uid, tok
}

func (e *env) createRoom(token string, body map[string]any) string {
	e.t.Helper()
	r := e.mustOK(e.do("POST", "/_matrix/client/v3/createRoom", token, body))
	return r.str("room_id")
}

func esc(s string) string { return url.PathEscape(s) }

func wantErr(t *testing.T, r resp, status int, code string) {
	t.Helper()
	if r.Status != status || r.errcode() != code {
		t.Fatalf("want %d %s, got %d %s", status, code, r.Status, r.Raw)
	}
	if _, ok := r.Body["error"].(string); !ok {
		t.Fatalf("error body lacks the error key: %s", r.Raw)
	}
}

func t0(tb testing.TB) context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	tb.Cleanup(cancel)
	return ctx
}

// unsignedOf decodes an event's unsigned data.
func unsignedOf(t *testing.T, ev event.Event) map[string]any {
	t.Helper()
	u := map[string]any{}
	if len(ev.Unsigned) > 0 {
		if err := json.Unmarshal(ev.Unsigned, &u); err != nil {
			t.Fatalf("unsigned of %s: %v", ev.EventID, err)
		}
	}
	return u
}
