package matrix

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cactus-comments/appservice/pkg/mxid"
)

const testToken = "syt_secret_as_token_0123456789"

type recorded struct {
	Method     string
	RequestURI string
	Path       string // decoded
	Query      url.Values
	Auth       string
	Body       []byte
}

// fakeHS is a scripted homeserver: respond is called with the 1-based
// request number.
type fakeHS struct {
	srv     *httptest.Server
	mu      sync.Mutex
	reqs    []recorded
	respond func(n int, w http.ResponseWriter, r *http.Request)
	conns   atomic.Int32 // connections accepted
}

func newFakeHS(t *testing.T, respond func(n int, w http.ResponseWriter, r *http.Request)) *fakeHS {
	t.Helper()
	f := &fakeHS{respond: respond}
	f.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		f.mu.Lock()
		f.reqs = append(f.reqs, recorded{
			Method: r.Method, RequestURI: r.RequestURI, Path: r.URL.Path, Query: r.URL.Query(),
			Auth: r.Header.Get("Authorization"), Body: body,
		})
		n := len(f.reqs)
		f.mu.Unlock()
		f.respond(n, w, r)
	}))
	f.srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			f.conns.Add(1)
		}
	}
	f.srv.Start()
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeHS) requests() []recorded {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]recorded(nil), f.reqs...)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func merr(code, msg string) map[string]any { return map[string]any{"errcode": code, "error": msg} }

// sleepRecorder replaces the client's waits so retry tests neither sleep
// nor depend on timing; it still honours ctx.
type sleepRecorder struct {
	mu    sync.Mutex
	waits []time.Duration
}

func (s *sleepRecorder) sleep(ctx context.Context, d time.Duration) error {
	s.mu.Lock()
	s.waits = append(s.waits, d)
	s.mu.Unlock()
	return ctx.Err()
}

func (s *sleepRecorder) get() []time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]time.Duration(nil), s.waits...)
}

func newTestClient(t *testing.T, base string, mod func(*Config)) (*Client, *sleepRecorder) {
	t.Helper()
	cfg := Config{HomeserverURL: base, Token: testToken, MinBackoff: 10 * time.Millisecond, MaxBackoff: 80 * time.Millisecond}
	if mod != nil {
		mod(&cfg)
	}
	c, err := NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	rec := &sleepRecorder{}
	c.s.sleep = rec.sleep
	return c, rec
}

var (
	testRoom = mxid.MustRoomID("!room:example.org")
	testUser = mxid.MustUserID("@alice:example.org")
)

func TestRetryPolicy(t *testing.T) {
	okSend := func(w http.ResponseWriter) { writeJSON(w, 200, map[string]string{"event_id": "$ev"}) }
	tests := []struct {
		name        string
		maxAttempts int
		respond     func(n int, w http.ResponseWriter)
		wantReqs    int
		wantWaits   []time.Duration // exact waits; nil: check count and bounds only
		wantNWaits  int
		wantStatus  int // 0: success expected
		wantCode    string
		wantMsg     string
	}{
		{
			name: "429 Retry-After header then success",
			respond: func(n int, w http.ResponseWriter) {
				if n == 1 {
					w.Header().Set("Retry-After", "2")
					writeJSON(w, 429, map[string]any{"errcode": "M_LIMIT_EXCEEDED", "error": "slow down", "retry_after_ms": 10})
					return
				}
				okSend(w)
			},
			wantReqs:  2,
			wantWaits: []time.Duration{2 * time.Second}, // header wins over the body
		},
		{
			name: "429 retry_after_ms only then success",
			respond: func(n int, w http.ResponseWriter) {
				if n <= 2 {
					writeJSON(w, 429, map[string]any{"errcode": "M_LIMIT_EXCEEDED", "retry_after_ms": 30})
					return
				}
				okSend(w)
			},
			wantReqs:  3,
			wantWaits: []time.Duration{30 * time.Millisecond, 30 * time.Millisecond},
		},
		{
			name: "429 without any hint backs off",
			respond: func(n int, w http.ResponseWriter) {
				if n == 1 {
					writeJSON(w, 429, merr("M_LIMIT_EXCEEDED", "no hint"))
					return
				}
				okSend(w)
			},
			wantReqs:   2,
			wantNWaits: 1,
		},
		{
			name: "5xx then success",
			respond: func(n int, w http.ResponseWriter) {
				switch n {
				case 1:
					writeJSON(w, 502, merr("", "bad gateway"))
				case 2:
					w.WriteHeader(503)
				default:
					okSend(w)
				}
			},
			wantReqs:   3,
			wantNWaits: 2,
		},
		{
			name: "408 is retried",
			respond: func(n int, w http.ResponseWriter) {
				if n == 1 {
					w.WriteHeader(408)
					return
				}
				okSend(w)
			},
			wantReqs:   2,
			wantNWaits: 1,
		},
		{
			name:       "400 not retried",
			respond:    func(n int, w http.ResponseWriter) { writeJSON(w, 400, merr("M_BAD_JSON", "nope")) },
			wantReqs:   1,
			wantStatus: 400, wantCode: "M_BAD_JSON", wantMsg: "nope",
		},
		{
			name:       "403 not retried",
			respond:    func(n int, w http.ResponseWriter) { writeJSON(w, 403, merr("M_FORBIDDEN", "not in room")) },
			wantReqs:   1,
			wantStatus: 403, wantCode: "M_FORBIDDEN", wantMsg: "not in room",
		},
		{
			name:       "404 not retried",
			respond:    func(n int, w http.ResponseWriter) { writeJSON(w, 404, merr("M_NOT_FOUND", "no such room")) },
			wantReqs:   1,
			wantStatus: 404, wantCode: "M_NOT_FOUND", wantMsg: "no such room",
		},
		{
			name:       "501 not retried",
			respond:    func(n int, w http.ResponseWriter) { writeJSON(w, 501, merr("M_UNRECOGNIZED", "no")) },
			wantReqs:   1,
			wantStatus: 501, wantCode: "M_UNRECOGNIZED",
		},
		{
			name:        "attempts exhausted returns the last error",
			maxAttempts: 3,
			respond: func(n int, w http.ResponseWriter) {
				writeJSON(w, 500, merr("M_UNKNOWN", "failure number "+string(rune('0'+n))))
			},
			wantReqs:   3,
			wantNWaits: 2,
			wantStatus: 500, wantCode: "M_UNKNOWN", wantMsg: "failure number 3",
		},
		{
			name:        "MaxAttempts 1 disables retries",
			maxAttempts: 1,
			respond:     func(n int, w http.ResponseWriter) { w.WriteHeader(503) },
			wantReqs:    1,
			wantStatus:  503,
		},
		{
			name: "429 longer than MaxRetryAfter is returned at once",
			respond: func(n int, w http.ResponseWriter) {
				w.Header().Set("Retry-After", "3600")
				writeJSON(w, 429, merr("M_LIMIT_EXCEEDED", "way too fast"))
			},
			wantReqs:   1,
			wantStatus: 429, wantCode: "M_LIMIT_EXCEEDED",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			hs := newFakeHS(t, func(n int, w http.ResponseWriter, r *http.Request) { tc.respond(n, w) })
			c, rec := newTestClient(t, hs.srv.URL, func(cfg *Config) { cfg.MaxAttempts = tc.maxAttempts })
			ev, err := c.SendText(context.Background(), testRoom, "txn1", "hello")
			if got := len(hs.requests()); got != tc.wantReqs {
				t.Errorf("requests = %d, want %d", got, tc.wantReqs)
			}
			for i, r := range hs.requests() {
				if r.RequestURI != hs.requests()[0].RequestURI || string(r.Body) != string(hs.requests()[0].Body) {
					t.Errorf("attempt %d differs from the first: %s %s", i+1, r.RequestURI, r.Body)
				}
			}
			waits := rec.get()
			if tc.wantWaits != nil {
				if len(waits) != len(tc.wantWaits) {
					t.Fatalf("waits = %v, want %v", waits, tc.wantWaits)
				}
				for i := range waits {
					if waits[i] != tc.wantWaits[i] {
						t.Errorf("wait %d = %v, want %v", i, waits[i], tc.wantWaits[i])
					}
				}
			} else {
				if len(waits) != tc.wantNWaits {
					t.Errorf("waits = %v, want %d of them", waits, tc.wantNWaits)
				}
				for _, w := range waits {
					if w < c.s.minBackoff || w > c.s.maxBackoff {
						t.Errorf("backoff %v outside [%v, %v]", w, c.s.minBackoff, c.s.maxBackoff)
					}
				}
			}
			if tc.wantStatus == 0 {
				if err != nil {
					t.Fatalf("err = %v", err)
				}
				if ev.String() != "$ev" {
					t.Errorf("event id = %q", ev)
				}
				return
			}
			var me *Error
			if !errors.As(err, &me) {
				t.Fatalf("err = %v (%T), want *Error", err, err)
			}
			if me.Status != tc.wantStatus || me.ErrCode != tc.wantCode || me.Endpoint != "send" {
				t.Errorf("error = %+v, want status %d code %q endpoint send", me, tc.wantStatus, tc.wantCode)
			}
			if tc.wantMsg != "" && me.Message != tc.wantMsg {
				t.Errorf("message = %q, want %q", me.Message, tc.wantMsg)
			}
		})
	}
}

func TestRetryAfterLimitKeepsHint(t *testing.T) {
	hs := newFakeHS(t, func(n int, w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Retry-After", "3600")
		writeJSON(w, 429, merr("M_LIMIT_EXCEEDED", "later"))
	})
	c, _ := newTestClient(t, hs.srv.URL, nil)
	_, err := c.JoinedRooms(context.Background())
	var me *Error
	if !errors.As(err, &me) || me.RetryAfter != time.Hour {
		t.Fatalf("err = %#v, want RetryAfter 1h", err)
	}
	if !IsLimitExceeded(err) || IsPermanent(err) || !IsTransient(err) {
		t.Errorf("classification wrong: limit=%v permanent=%v transient=%v", IsLimitExceeded(err), IsPermanent(err), IsTransient(err))
	}
}

// The real timer: the call succeeds after waiting at least what the server
// asked for (a lower bound, which cannot flake).
func TestRetryAfterRealWait(t *testing.T) {
	hs := newFakeHS(t, func(n int, w http.ResponseWriter, r *http.Request) {
		if n == 1 {
			writeJSON(w, 429, map[string]any{"errcode": "M_LIMIT_EXCEEDED", "retry_after_ms": 40})
			return
		}
		writeJSON(w, 200, map[string]any{"joined_rooms": []string{"!a:example.org"}})
	})
	c, err := NewClient(Config{HomeserverURL: hs.srv.URL, Token: testToken})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	rooms, err := c.JoinedRooms(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if el := time.Since(start); el < 40*time.Millisecond {
		t.Errorf("returned after %v, before the 40ms the server asked for", el)
	}
	if len(rooms) != 1 || len(hs.requests()) != 2 {
		t.Errorf("rooms = %v, requests = %d", rooms, len(hs.requests()))
	}
}

func TestContextCancelledMidBackoff(t *testing.T) {
	first := make(chan struct{})
	var once sync.Once
	hs := newFakeHS(t, func(n int, w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 503, merr("M_UNKNOWN", "down"))
	})
	// Real sleeps with an hour of backoff: only cancellation can end the
	// call. Observe runs once the first answer has been read.
	c, err := NewClient(Config{
		HomeserverURL: hs.srv.URL, Token: testToken, MinBackoff: time.Hour, MaxBackoff: time.Hour,
		Observe: func(string, int, time.Duration) { once.Do(func() { close(first) }) },
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := c.CreateRoom(ctx, &CreateRoomRequest{Name: "x"})
		done <- err
	}()
	<-first
	cancel()
	select {
	case err = <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("CreateRoom did not return after its context was cancelled")
	}
	if !errors.Is(err, context.Canceled) {
		t.Errorf("err = %v, want context.Canceled", err)
	}
	if Status(err) != 503 {
		t.Errorf("err = %v should carry the last homeserver error too", err)
	}
	if n := len(hs.requests()); n != 1 {
		t.Errorf("requests = %d, want 1", n)
	}
}

func TestDeadlineShorterThanWaitReturnsAtOnce(t *testing.T) {
	hs := newFakeHS(t, func(n int, w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Retry-After", "30")
		writeJSON(w, 429, merr("M_LIMIT_EXCEEDED", "later"))
	})
	c, rec := newTestClient(t, hs.srv.URL, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := c.JoinedRooms(ctx)
	if !IsLimitExceeded(err) || len(rec.get()) != 0 || len(hs.requests()) != 1 {
		t.Errorf("err = %v, waits = %v, requests = %d; want the 429 at once", err, rec.get(), len(hs.requests()))
	}
}

func TestPerAttemptTimeoutIsRetried(t *testing.T) {
	hs := newFakeHS(t, func(n int, w http.ResponseWriter, r *http.Request) {
		if n == 1 {
			<-r.Context().Done() // hang until the client gives up on this attempt
			return
		}
		writeJSON(w, 200, map[string]string{"user_id": "@bot:example.org"})
	})
	c, rec := newTestClient(t, hs.srv.URL, func(cfg *Config) { cfg.RequestTimeout = 50 * time.Millisecond })
	u, err := c.Whoami(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if u.String() != "@bot:example.org" || len(rec.get()) != 1 {
		t.Errorf("user = %v, waits = %v", u, rec.get())
	}
}

func TestNetworkErrorIsRetried(t *testing.T) {
	hs := newFakeHS(t, func(n int, w http.ResponseWriter, r *http.Request) {
		if n == 1 {
			conn, _, err := w.(http.Hijacker).Hijack()
			if err == nil {
				conn.Close()
			}
			return
		}
		writeJSON(w, 200, map[string]string{"room_id": "!new:example.org"})
	})
	var observed []int
	var mu sync.Mutex
	c, _ := newTestClient(t, hs.srv.URL, func(cfg *Config) {
		cfg.Observe = func(ep string, status int, d time.Duration) {
			mu.Lock()
			defer mu.Unlock()
			if ep != "createRoom" {
				t.Errorf("observed endpoint %q", ep)
			}
			observed = append(observed, status)
		}
	})
	room, err := c.CreateRoom(context.Background(), &CreateRoomRequest{RoomAliasName: "comments_x"})
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if room.String() != "!new:example.org" || len(observed) != 2 || observed[0] != 0 || observed[1] != 200 {
		t.Errorf("room = %v, observed statuses = %v", room, observed)
	}
}

func TestNetworkErrorExhausted(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens here now: connection refused
	c, rec := newTestClient(t, "http://"+addr, func(cfg *Config) { cfg.MaxAttempts = 2 })
	_, err = c.As(testUser).JoinedRooms(context.Background())
	if err == nil || !IsTransient(err) || IsPermanent(err) || len(rec.get()) != 1 {
		t.Fatalf("err = %v, waits %v; want a transient error after 2 attempts", err, rec.get())
	}
	msg := err.Error()
	if strings.Contains(msg, testToken) || strings.Contains(msg, "user_id") || strings.Contains(msg, "alice") {
		t.Errorf("network error leaks the URL query or token: %s", msg)
	}
	if !strings.Contains(msg, "joinedRooms") {
		t.Errorf("network error does not name the endpoint: %s", msg)
	}
}

func TestNonJSONErrorBodies(t *testing.T) {
	long := "<html><body>" + strings.Repeat("Bad Gateway from nginx ", 100) + "</body></html>"
	tests := []struct {
		name, ctype, body string
		status            int
		wantIn            []string
	}{
		{"html from proxy", "text/html", long, 502, []string{"HTTP 502", "non-JSON", "<html>"}},
		{"empty body", "", "", 500, []string{"HTTP 500", "empty response body"}},
		{"json without errcode", "application/json", `{"foo":1}`, 400, []string{"HTTP 400", "unexpected JSON"}},
		{"json array", "application/json", `[1,2]`, 403, []string{"HTTP 403", "unexpected JSON"}},
		{"truncated json", "application/json", `{"errcode":"M_FORB`, 403, []string{"HTTP 403", "non-JSON"}},
		{"binary", "application/octet-stream", "\x00\xff\xfe\x01\x1b[31m", 400, []string{"HTTP 400"}},
		{"errcode wrong type", "application/json", `{"errcode":5,"error":"x"}`, 400, []string{"HTTP 400: x"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			hs := newFakeHS(t, func(n int, w http.ResponseWriter, r *http.Request) {
				if tc.ctype != "" {
					w.Header().Set("Content-Type", tc.ctype)
				}
				w.WriteHeader(tc.status)
				io.WriteString(w, tc.body)
			})
			c, _ := newTestClient(t, hs.srv.URL, func(cfg *Config) { cfg.MaxAttempts = 1 })
			err := c.Ban(context.Background(), testRoom, testUser, "spam")
			var me *Error
			if !errors.As(err, &me) {
				t.Fatalf("err = %v, want *Error", err)
			}
			if me.ErrCode != "" || me.Status != tc.status || ErrCode(err) != "" {
				t.Errorf("error = %+v", me)
			}
			if len(me.Message) > maxErrorBody+40 {
				t.Errorf("message not truncated: %d bytes", len(me.Message))
			}
			for _, want := range tc.wantIn {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not contain %q", err, want)
				}
			}
			if strings.ContainsAny(err.Error(), "\x00\x1b\n") {
				t.Errorf("error has control characters: %q", err)
			}
		})
	}
}

func TestTokenNeverInErrors(t *testing.T) {
	// A hostile or debugging proxy echoing the request back, including the
	// Authorization header, at the start and far beyond the truncation point
	// (where a cut token could otherwise leak its prefix).
	hs := newFakeHS(t, func(n int, w http.ResponseWriter, r *http.Request) {
		auth := r.Header.Get("Authorization")
		switch r.URL.Path {
		case "/_matrix/client/v3/joined_rooms":
			writeJSON(w, 403, merr("M_FORBIDDEN", "bad token "+auth))
		case "/_matrix/client/v3/account/whoami":
			w.WriteHeader(502)
			io.WriteString(w, strings.Repeat("x", maxErrorBody-20)+auth+strings.Repeat("y", 300))
		default:
			w.WriteHeader(200)
			io.WriteString(w, "not json "+auth)
		}
	})
	c, _ := newTestClient(t, hs.srv.URL, func(cfg *Config) { cfg.MaxAttempts = 1 })
	_, err1 := c.JoinedRooms(context.Background())
	_, err2 := c.Whoami(context.Background())
	_, err3 := c.CreateRoom(context.Background(), nil)
	for i, err := range []error{err1, err2, err3} {
		if err == nil {
			t.Fatalf("call %d: no error", i)
		}
		if strings.Contains(err.Error(), testToken) || strings.Contains(err.Error(), testToken[:10]) {
			t.Errorf("call %d: token in error: %s", i, err)
		}
	}
	for _, r := range hs.requests() {
		if r.Auth != "Bearer "+testToken {
			t.Errorf("Authorization = %q", r.Auth)
		}
		if strings.Contains(r.RequestURI, testToken) || r.Query.Has("access_token") {
			t.Errorf("token in URL: %s", r.RequestURI)
		}
	}
}

func TestMasquerade(t *testing.T) {
	hs := newFakeHS(t, func(n int, w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 200, map[string]any{"chunk": []any{}})
	})
	c, _ := newTestClient(t, hs.srv.URL, nil)
	ctx := context.Background()
	if _, err := c.Members(ctx, testRoom, MembershipBan); err != nil {
		t.Fatal(err)
	}
	odd := mxid.MustUserID("@we+ird/=&?:example.org")
	if _, err := c.As(odd).Members(ctx, testRoom, MembershipBan); err != nil {
		t.Fatal(err)
	}
	if _, err := c.As(odd).As(mxid.UserID{}).Members(ctx, testRoom, ""); err != nil {
		t.Fatal(err)
	}
	reqs := hs.requests()
	want := []url.Values{
		{"membership": {"ban"}},
		{"membership": {"ban"}, "user_id": {odd.String()}},
		{},
	}
	for i, r := range reqs {
		if len(r.Query) != len(want[i]) {
			t.Errorf("request %d query = %v, want %v", i, r.Query, want[i])
		}
		for k := range want[i] {
			if r.Query.Get(k) != want[i].Get(k) {
				t.Errorf("request %d %s = %q, want %q", i, k, r.Query.Get(k), want[i].Get(k))
			}
		}
		if r.Auth != "Bearer "+testToken {
			t.Errorf("request %d Authorization = %q", i, r.Auth)
		}
	}
}

// TestPathEncoding routes through net/http's ServeMux, which matches on the
// escaped path and decodes each wildcard: an id that escaped badly would
// match another route, split into two segments or decode to something else.
func TestPathEncoding(t *testing.T) {
	type got struct{ room, typ, txn, user, alias, raw string }
	var (
		mu   sync.Mutex
		last got
	)
	mux := http.NewServeMux()
	set := func(r *http.Request, g got) {
		mu.Lock()
		defer mu.Unlock()
		g.raw = r.RequestURI
		last = g
	}
	mux.HandleFunc("PUT /_matrix/client/v3/rooms/{room}/send/{type}/{txn}", func(w http.ResponseWriter, r *http.Request) {
		set(r, got{room: r.PathValue("room"), typ: r.PathValue("type"), txn: r.PathValue("txn")})
		writeJSON(w, 200, map[string]string{"event_id": "$e"})
	})
	mux.HandleFunc("GET /_matrix/client/v3/rooms/{room}/state/{type}/{key}", func(w http.ResponseWriter, r *http.Request) {
		set(r, got{room: r.PathValue("room"), typ: r.PathValue("type"), txn: r.PathValue("key")})
		writeJSON(w, 200, map[string]string{})
	})
	mux.HandleFunc("POST /_matrix/client/v3/rooms/{room}/ban", func(w http.ResponseWriter, r *http.Request) {
		var b struct {
			UserID string `json:"user_id"`
		}
		json.NewDecoder(r.Body).Decode(&b)
		set(r, got{room: r.PathValue("room"), user: b.UserID})
		writeJSON(w, 200, map[string]string{})
	})
	mux.HandleFunc("PUT /_matrix/client/v3/profile/{user}/displayname", func(w http.ResponseWriter, r *http.Request) {
		set(r, got{user: r.PathValue("user")})
		writeJSON(w, 200, map[string]string{})
	})
	mux.HandleFunc("GET /_matrix/client/v3/directory/room/{alias}", func(w http.ResponseWriter, r *http.Request) {
		set(r, got{alias: r.PathValue("alias")})
		writeJSON(w, 200, map[string]string{"room_id": "!r:example.org"})
	})
	mux.HandleFunc("POST /_matrix/client/v3/join/{target}", func(w http.ResponseWriter, r *http.Request) {
		set(r, got{alias: r.PathValue("target")})
		writeJSON(w, 200, map[string]string{"room_id": "!r:example.org"})
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		set(r, got{})
		writeJSON(w, 404, merr("M_UNRECOGNIZED", "unrouted "+r.URL.EscapedPath()))
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	// A base URL with a path prefix, as behind a reverse proxy.
	prefixed := http.NewServeMux()
	prefixed.Handle("/hs/", http.StripPrefix("/hs", mux))
	psrv := httptest.NewServer(prefixed)
	t.Cleanup(psrv.Close)

	ctx := context.Background()
	weirdRoom := "!a/b?c#d%e&f=g+h!:example.org"
	weirdTxn := "txn with spaces/and/slashes?q=1#frag%2F..%00é😀"
	weirdType := "org.example.ty pe/../x"
	weirdUser := "@us/er?#%:example.org"
	weirdAlias := "#comments_日本語 x/y?z#%25:example.org"

	tests := []struct {
		name string
		call func(c *Client) error
		want got
		raw  string // expected RequestURI (without the base prefix)
	}{
		{
			name: "send",
			call: func(c *Client) error {
				_, err := c.SendEvent(ctx, mxid.MustRoomID(weirdRoom), weirdType, weirdTxn, map[string]string{})
				return err
			},
			want: got{room: weirdRoom, typ: weirdType, txn: weirdTxn},
			raw: "/_matrix/client/v3/rooms/%21a%2Fb%3Fc%23d%25e%26f%3Dg%2Bh%21%3Aexample.org/send/" +
				"org.example.ty%20pe%2F..%2Fx/txn%20with%20spaces%2Fand%2Fslashes%3Fq%3D1%23frag%252F..%2500%C3%A9%F0%9F%98%80",
		},
		{
			name: "get state with dot-dot key",
			call: func(c *Client) error {
				return c.GetStateEvent(ctx, mxid.MustRoomID("!r:example.org"), "m.room.member", "..", nil)
			},
			want: got{room: "!r:example.org", typ: "m.room.member", txn: ".."},
			raw:  "/_matrix/client/v3/rooms/%21r%3Aexample.org/state/m.room.member/%2E%2E",
		},
		{
			name: "ban",
			call: func(c *Client) error {
				return c.Ban(ctx, mxid.MustRoomID(weirdRoom), mxid.MustUserID(weirdUser), "")
			},
			want: got{room: weirdRoom, user: weirdUser},
			raw:  "/_matrix/client/v3/rooms/%21a%2Fb%3Fc%23d%25e%26f%3Dg%2Bh%21%3Aexample.org/ban",
		},
		{
			name: "displayname",
			call: func(c *Client) error { return c.SetDisplayName(ctx, mxid.MustUserID(weirdUser), "n") },
			want: got{user: weirdUser},
			raw:  "/_matrix/client/v3/profile/%40us%2Fer%3F%23%25%3Aexample.org/displayname",
		},
		{
			name: "alias",
			call: func(c *Client) error {
				_, err := c.ResolveAlias(ctx, mxid.MustRoomAlias(weirdAlias))
				return err
			},
			want: got{alias: weirdAlias},
			raw:  "/_matrix/client/v3/directory/room/%23comments_%E6%97%A5%E6%9C%AC%E8%AA%9E%20x%2Fy%3Fz%23%2525%3Aexample.org",
		},
		{
			name: "join",
			call: func(c *Client) error {
				_, err := c.JoinRoom(ctx, weirdAlias)
				return err
			},
			want: got{alias: weirdAlias},
			raw:  "/_matrix/client/v3/join/%23comments_%E6%97%A5%E6%9C%AC%E8%AA%9E%20x%2Fy%3Fz%23%2525%3Aexample.org",
		},
	}
	for _, base := range []struct{ name, url, prefix string }{
		{"root", srv.URL, ""},
		{"prefixed", psrv.URL + "/hs/", "/hs"},
	} {
		for _, tc := range tests {
			t.Run(base.name+"/"+tc.name, func(t *testing.T) {
				c, _ := newTestClient(t, base.url, func(cfg *Config) { cfg.MaxAttempts = 1 })
				if err := tc.call(c); err != nil {
					t.Fatal(err)
				}
				mu.Lock()
				g := last
				mu.Unlock()
				if g.raw != base.prefix+tc.raw {
					t.Errorf("RequestURI\n got %s\nwant %s", g.raw, base.prefix+tc.raw)
				}
				g.raw = ""
				if g != tc.want {
					t.Errorf("server decoded %+v, want %+v", g, tc.want)
				}
			})
		}
	}
}

func TestEscapeSegmentRoundTrip(t *testing.T) {
	for _, s := range []string{"", "plain", "/", "..", "%", "%2F", "a b", "!x:y", "?#&=+;,@$", "é😀", "\x00\xff"} {
		e := escapeSegment(s)
		if strings.ContainsAny(e, "/?#:! ") {
			t.Errorf("escapeSegment(%q) = %q keeps a delimiter", s, e)
		}
		d, err := url.PathUnescape(e)
		if err != nil || d != s {
			t.Errorf("PathUnescape(%q) = %q, %v; want %q", e, d, err, s)
		}
	}
}

func TestConnectionsReused(t *testing.T) {
	hs := newFakeHS(t, func(n int, w http.ResponseWriter, r *http.Request) {
		switch n % 3 {
		case 0:
			writeJSON(w, 200, map[string]any{"joined_rooms": []string{}})
		case 1:
			w.WriteHeader(404)
			io.WriteString(w, strings.Repeat("<p>not found</p>", 2000)) // far more than we quote
		default:
			writeJSON(w, 403, merr("M_FORBIDDEN", "no"))
		}
	})
	c, _ := newTestClient(t, hs.srv.URL, nil)
	for i := 0; i < 30; i++ {
		c.JoinedRooms(context.Background())
	}
	if len(hs.requests()) != 30 {
		t.Fatalf("requests = %d", len(hs.requests()))
	}
	if n := hs.conns.Load(); n != 1 {
		t.Errorf("30 sequential requests used %d connections, want 1", n)
	}
}

func TestResponseSizeLimit(t *testing.T) {
	hs := newFakeHS(t, func(n int, w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(200)
		io.WriteString(w, `{"joined_rooms":["`+strings.Repeat("a", 5000)+`"]}`)
	})
	c, rec := newTestClient(t, hs.srv.URL, nil)
	c.s.maxBody = 1024
	_, err := c.JoinedRooms(context.Background())
	if !errors.Is(err, errTooLarge) || len(rec.get()) != 0 {
		t.Errorf("err = %v, waits = %v; want a size error without retries", err, rec.get())
	}
}

func TestNewClientValidation(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		ok   bool
	}{
		{"ok", Config{HomeserverURL: "https://hs.example.org/", Token: "t"}, true},
		{"ok with path", Config{HomeserverURL: "http://127.0.0.1:8008/prefix", Token: "t"}, true},
		{"empty url", Config{Token: "t"}, false},
		{"bad scheme", Config{HomeserverURL: "ftp://x", Token: "t"}, false},
		{"no host", Config{HomeserverURL: "http://", Token: "t"}, false},
		{"query", Config{HomeserverURL: "http://x/?access_token=t", Token: "t"}, false},
		{"userinfo", Config{HomeserverURL: "http://u:p@x", Token: "t"}, false},
		{"no token", Config{HomeserverURL: "http://x"}, false},
		{"token with newline", Config{HomeserverURL: "http://x", Token: "t\nX-Evil: 1"}, false},
		{"negative attempts", Config{HomeserverURL: "http://x", Token: "t", MaxAttempts: -1}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := NewClient(tc.cfg)
			if (err == nil) != tc.ok {
				t.Fatalf("err = %v, want ok=%v", err, tc.ok)
			}
			if err != nil && tc.cfg.Token != "" && strings.Contains(err.Error(), tc.cfg.Token+"\n") {
				t.Errorf("token in error: %v", err)
			}
			if c != nil && (c.s.maxAttempts != DefaultMaxAttempts || c.s.timeout != DefaultRequestTimeout) {
				t.Errorf("defaults not applied: %+v", c.s)
			}
		})
	}
}

func TestBackoffBounds(t *testing.T) {
	c, err := NewClient(Config{HomeserverURL: "http://x", Token: "t", MinBackoff: 100 * time.Millisecond, MaxBackoff: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	for attempt := 1; attempt <= 12; attempt++ {
		ceil := 100 * time.Millisecond << (attempt - 1)
		if ceil > time.Second {
			ceil = time.Second
		}
		for i := 0; i < 200; i++ {
			d := c.backoff(attempt)
			if d < 100*time.Millisecond || d > ceil {
				t.Fatalf("attempt %d: backoff %v outside [100ms, %v]", attempt, d, ceil)
			}
		}
	}
}

func TestConcurrentUseAndLogging(t *testing.T) {
	hs := newFakeHS(t, func(n int, w http.ResponseWriter, r *http.Request) {
		if n%2 == 1 {
			writeJSON(w, 503, merr("M_UNKNOWN", "busy, token was "+r.Header.Get("Authorization")))
			return
		}
		writeJSON(w, 200, map[string]string{"event_id": "$ok"})
	})
	var logs strings.Builder
	var logMu sync.Mutex
	c, _ := newTestClient(t, hs.srv.URL, func(cfg *Config) {
		cfg.MaxAttempts = 20
		cfg.Logger = slog.New(slog.NewTextHandler(lockedWriter{&logMu, &logs}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	})
	const workers = 40
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for i := 0; i < workers; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			user := mxid.MustUserID("@u" + strconv.Itoa(i) + ":example.org")
			_, err := c.As(user).SendText(context.Background(), testRoom, "txn"+strconv.Itoa(i), "hi")
			errs <- err
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	logMu.Lock()
	out := logs.String()
	logMu.Unlock()
	if !strings.Contains(out, "retrying") || !strings.Contains(out, "endpoint=send") {
		t.Errorf("retries not logged: %q", out)
	}
	if strings.Contains(out, testToken) || strings.Contains(out, "user_id") {
		t.Errorf("log leaks token or query: %s", out)
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func TestRedirectNotFollowed(t *testing.T) {
	hs := newFakeHS(t, func(n int, w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/elsewhere", http.StatusFound)
	})
	c, _ := newTestClient(t, hs.srv.URL, nil)
	_, err := c.CreateRoom(context.Background(), &CreateRoomRequest{Name: "x"})
	if Status(err) != http.StatusFound || len(hs.requests()) != 1 || hs.requests()[0].Method != "POST" {
		t.Errorf("err = %v, requests = %+v; want the 302 returned, not followed", err, hs.requests())
	}
}

func TestCancelledDuringAttempt(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	hs := newFakeHS(t, func(n int, w http.ResponseWriter, r *http.Request) {
		cancel()
		<-r.Context().Done()
	})
	c, rec := newTestClient(t, hs.srv.URL, nil)
	_, err := c.JoinedRooms(ctx)
	if !errors.Is(err, context.Canceled) || len(rec.get()) != 0 || len(hs.requests()) != 1 {
		t.Errorf("err = %v, waits = %v, requests = %d", err, rec.get(), len(hs.requests()))
	}
}
