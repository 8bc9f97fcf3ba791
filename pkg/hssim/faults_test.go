package hssim

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestFaultInjection(t *testing.T) {
	e := startEnv(t, Synapse)
	_, atok := e.user("alice")
	id := e.createRoom(atok, map[string]any{})
	send := func(txn string) resp {
		return e.do("PUT", "/_matrix/client/v3/rooms/"+esc(id)+"/send/m.room.message/"+txn, atok, map[string]any{"body": "x"})
	}

	e.hs.InjectFault(Fault{Endpoint: EPSend, Times: 2, Status: 503})
	wantErr(t, send("f1"), 503, "M_UNKNOWN")
	wantErr(t, send("f1"), 503, "M_UNKNOWN")
	e.mustOK(send("f1"))

	e.hs.InjectFault(Fault{Endpoint: EPSend, Times: 1, Status: 429, RetryAfter: 1500 * time.Millisecond})
	r := send("f2")
	wantErr(t, r, 429, "M_LIMIT_EXCEEDED")
	if r.Header.Get("Retry-After") != "2" || r.Body["retry_after_ms"] != float64(1500) {
		t.Fatalf("429 details: %v %s", r.Header, r.Raw)
	}

	// A fault for one room leaves the others alone.
	other := e.createRoom(atok, map[string]any{})
	e.hs.InjectFault(Fault{Endpoint: EPSend, Room: id, Status: 429, RetryAfter: time.Second})
	wantErr(t, send("f3"), 429, "M_LIMIT_EXCEEDED")
	e.mustOK(e.do("PUT", "/_matrix/client/v3/rooms/"+esc(other)+"/send/m.room.message/f3", atok, map[string]any{"body": "x"}))
	wantErr(t, send("f4"), 429, "M_LIMIT_EXCEEDED")
	e.hs.ClearFaults()
	e.mustOK(send("f4"))

	e.hs.InjectFault(Fault{Endpoint: EPWhoami, Times: 1, Drop: true})
	req, _ := http.NewRequest("GET", e.hs.URL()+"/_matrix/client/v3/account/whoami", nil)
	req.Header.Set("Authorization", "Bearer "+atok)
	// A fresh connection: Go's transport silently retries an idempotent
	// request whose reused keep-alive connection was dropped.
	fresh := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	if res, err := fresh.Do(req); err == nil {
		res.Body.Close()
		t.Fatalf("dropped connection answered %d", res.StatusCode)
	}
	e.mustOK(e.do("GET", "/_matrix/client/v3/account/whoami", atok, nil))

	e.hs.InjectFault(Fault{Endpoint: "*", Status: 502, ErrCode: "M_UNKNOWN", Probability: 0.5})
	failed, passed := 0, 0
	for i := 0; i < 200; i++ {
		if e.do("GET", "/_matrix/client/v3/account/whoami", atok, nil).Status == 502 {
			failed++
		} else {
			passed++
		}
	}
	if failed == 0 || passed == 0 {
		t.Fatalf("probability 0.5: %d failed, %d passed", failed, passed)
	}
	e.hs.ClearFaults()
	e.mustOK(e.do("GET", "/_matrix/client/v3/account/whoami", atok, nil))

	e.hs.SetLatency(EPWhoami, 30*time.Millisecond)
	start := time.Now()
	e.mustOK(e.do("GET", "/_matrix/client/v3/account/whoami", atok, nil))
	if time.Since(start) < 30*time.Millisecond {
		t.Fatal("latency not applied")
	}
	e.hs.SetLatency(EPWhoami, 0)

	if got := e.hs.Calls(EPSend); got != 8 {
		t.Fatalf("send calls %d, want 8 (faulted ones count)", got)
	}
	e.hs.ResetCalls()
	if e.hs.Calls(EPSend) != 0 {
		t.Fatal("reset")
	}
}

func TestRateLimiting(t *testing.T) {
	e := startEnv(t, Synapse)
	registerBot(t, e)
	_, atok := e.user("alice")
	id := e.createRoom(testASToken, map[string]any{"visibility": "public"})
	e.mustOK(e.do("POST", "/_matrix/client/v3/rooms/"+esc(id)+"/join", atok, map[string]any{}))
	e.hs.SetRateLimit(RateLimit{PerSecond: 0.01, Burst: 2})
	send := func(tok, txn string) resp {
		return e.do("PUT", "/_matrix/client/v3/rooms/"+esc(id)+"/send/m.room.message/"+txn, tok, map[string]any{"body": "x"})
	}
	e.mustOK(send(atok, "1"))
	e.mustOK(send(atok, "2"))
	r := send(atok, "3")
	wantErr(t, r, 429, "M_LIMIT_EXCEEDED")
	if r.Header.Get("Retry-After") == "" || r.Body["retry_after_ms"].(float64) <= 0 {
		t.Fatalf("no retry time: %s", r.Raw)
	}
	// rate_limited: false exempts the appservice...
	for i := 0; i < 5; i++ {
		e.mustOK(send(testASToken, "as"+string(rune('a'+i))))
	}
	// ...until switched on.
	e.hs.SetAppserviceRateLimited("cactus", true)
	limited := false
	for i := 0; i < 5; i++ {
		if send(testASToken, "lim"+string(rune('a'+i))).Status == 429 {
			limited = true
		}
	}
	if !limited {
		t.Fatal("appservice not limited after SetAppserviceRateLimited")
	}
}

func TestProfileChangeUpdatesRooms(t *testing.T) {
	e := startEnv(t, Synapse)
	alice, atok := e.user("alice")
	id := e.createRoom(atok, map[string]any{})
	e.mustOK(e.do("PUT", "/_matrix/client/v3/profile/"+esc(alice)+"/displayname", atok, map[string]any{"displayname": "Alice A"}))
	if stateContent(t, e, id, "m.room.member", alice)["displayname"] != "Alice A" {
		t.Fatal("member event not refreshed")
	}
	tl := e.hs.Timeline(id)
	last := tl[len(tl)-1]
	if u := unsignedOf(t, last); u["replaces_state"] == nil || u["prev_content"] == nil {
		t.Fatalf("replacing state lacks prev_content/replaces_state: %s", last.Unsigned)
	}
}

func TestMessagesAndMembers(t *testing.T) {
	e := startEnv(t, Synapse)
	_, atok := e.user("alice")
	id := e.createRoom(atok, map[string]any{})
	for i := 0; i < 5; i++ {
		e.mustOK(e.do("PUT", "/_matrix/client/v3/rooms/"+esc(id)+"/send/m.room.message/m"+string(rune('a'+i)), atok, map[string]any{"body": "x"}))
	}
	total := len(e.hs.Timeline(id))
	seen := 0
	from := ""
	for {
		p := "/_matrix/client/v3/rooms/" + esc(id) + "/messages?dir=b&limit=3"
		if from != "" {
			p += "&from=" + from
		}
		r := e.mustOK(e.do("GET", p, atok, nil))
		seen += len(r.Body["chunk"].([]any))
		end, ok := r.Body["end"].(string)
		if !ok {
			break
		}
		from = end
	}
	if seen != total {
		t.Fatalf("paged %d of %d events", seen, total)
	}
	m := e.mustOK(e.do("GET", "/_matrix/client/v3/rooms/"+esc(id)+"/joined_members", atok, nil))
	if len(m.Body["joined"].(map[string]any)) != 1 {
		t.Fatalf("joined_members %s", m.Raw)
	}
}

// FuzzRequests drives every parser of the simulator (path routing,
// percent-decoding, JSON bodies) and checks that whatever comes in, the
// answer is JSON and every error has errcode and error.
func FuzzRequests(f *testing.F) {
	hs, err := Start(t0(f), Options{ServerName: testServer, TimeUnit: time.Millisecond})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { _ = hs.Close() })
	_, tok, err := hs.RegisterUser("fuzzer", "pw")
	if err != nil {
		f.Fatal(err)
	}
	f.Add("POST", "/_matrix/client/v3/createRoom", `{"room_alias_name":"x","initial_state":[{"type":"a","content":{}}]}`)
	f.Add("POST", "/_matrix/client/v3/createRoom", `{"power_level_content_override":{"users":{"@a:b":"x"}}}`)
	f.Add("POST", "/_matrix/client/v3/register", `{"username":"a","auth":{"type":"m.login.dummy"}}`)
	f.Add("PUT", "/_matrix/client/v3/rooms/%21a%3Ab/state/m.room.power_levels/", `{"users":{"@a:b":1e400}}`)
	f.Add("GET", "/_matrix/client/v3/directory/room/%23a%2Fb%3Ac", ``)
	f.Add("POST", "/_matrix/client/v3/join/%ZZ", `{}`)
	f.Add("POST", "/_matrix/client/v3/login", `[]`)
	f.Add("POST", "/_matrix/client/v3/createRoom", `{"room_version":"12","preset":"trusted_private_chat","invite":["@a:b"],"creation_content":{"additional_creators":["@c:d",1]}}`)
	f.Add("POST", "/_matrix/client/v3/createRoom", `{"room_version":["12"],"initial_state":[{"type":"m.room.power_levels","content":{"users":{"@fuzzer:example.org":100}}}]}`)
	f.Add("POST", "/_matrix/client/v3/rooms/%21a%3Ab/upgrade", `{"new_version":"12","additional_creators":[{}]}`)
	f.Fuzz(func(t *testing.T, method, path, body string) {
		if !strings.HasPrefix(path, "/") || strings.ContainsAny(path, " \t\r\n#?") || len(method) == 0 || strings.ContainsAny(method, " \t\r\n/") {
			return
		}
		req := httptest.NewRequest("GET", "/", bytes.NewReader([]byte(body)))
		req.Method = method
		req.URL.Path, req.URL.RawPath = "", ""
		req.URL.Opaque = ""
		u := *req.URL
		u.RawPath = path
		u.Path = path
		req.URL = &u
		req.Header.Set("Authorization", "Bearer "+tok)
		rec := httptest.NewRecorder()
		hs.ServeHTTP(rec, req)
		if rec.Code == 200 {
			return
		}
		b := rec.Body.String()
		if !strings.Contains(b, `"errcode"`) || !strings.Contains(b, `"error"`) {
			t.Fatalf("%s %s -> %d without errcode/error: %s", method, path, rec.Code, b)
		}
	})
}

// A homeserver does not undo a write because the client stopped waiting:
// with latency injected, a client that times out gets no answer, yet the
// room and its alias exist, as on Synapse.
func TestLatencyAppliesWritesTheClientGaveUpOn(t *testing.T) {
	e := startEnv(t, Synapse)
	registerBot(t, e)
	e.hs.SetLatency(EPCreateRoom, time.Minute)
	ctx, cancel := context.WithTimeout(ctxT(t), 200*time.Millisecond)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "POST", e.hs.URL()+"/_matrix/client/v3/createRoom",
		strings.NewReader(`{"room_alias_name":"comments_slow"}`))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+testASToken)
	if res, err := http.DefaultClient.Do(req); err == nil {
		res.Body.Close()
		t.Fatalf("answered %d despite a minute of latency", res.StatusCode)
	}
	alias := "#comments_slow:" + testServer
	if err := e.hs.Wait(ctxT(t), func() bool { _, ok := e.hs.ResolveAliasLocal(alias); return ok }); err != nil {
		t.Fatalf("the room the client gave up on was not created: %v", err)
	}
	id, _ := e.hs.ResolveAliasLocal(alias)
	if e.hs.Membership(id, "@cactusbot:"+testServer) != "join" {
		t.Fatal("room created without its creator")
	}
}

func TestRateLimitAnswerPerMode(t *testing.T) {
	for _, tc := range []struct {
		mode   Mode
		header string // Retry-After for a 1.5 s wait
	}{
		{Synapse, "2"}, {Dendrite, ""}, {Conduit, "2"},
	} {
		t.Run(string(tc.mode), func(t *testing.T) {
			e := startEnv(t, tc.mode)
			_, atok := e.user("alice")
			e.hs.InjectFault(Fault{Endpoint: EPWhoami, Status: 429, RetryAfter: 1500 * time.Millisecond, Times: 1})
			r := e.do("GET", "/_matrix/client/v3/account/whoami", atok, nil)
			wantErr(t, r, 429, "M_LIMIT_EXCEEDED")
			if got := r.Header.Get("Retry-After"); got != tc.header || r.Body["retry_after_ms"] != float64(1500) {
				t.Fatalf("Retry-After %q retry_after_ms %v, want %q and 1500", got, r.Body["retry_after_ms"], tc.header)
			}
			e.hs.SetRateLimit(RateLimit{PerSecond: 0.01, Burst: 1})
			e.mustOK(e.do("PUT", "/_matrix/client/v3/profile/"+esc("@alice:example.org")+"/displayname", atok, map[string]any{"displayname": "A"}))
			r = e.do("PUT", "/_matrix/client/v3/profile/"+esc("@alice:example.org")+"/displayname", atok, map[string]any{"displayname": "B"})
			wantErr(t, r, 429, "M_LIMIT_EXCEEDED")
			if _, has := r.Header["Retry-After"]; has != (tc.header != "") {
				t.Fatalf("rate limiter: Retry-After present %v in mode %s", has, tc.mode)
			}
		})
	}
}
