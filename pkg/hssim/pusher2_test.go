package hssim

import (
	"context"
	"net"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cactus-comments/appservice/pkg/event"
	"github.com/cactus-comments/appservice/pkg/registration"
)

func TestBatchingAndOneInFlight(t *testing.T) {
	tests := []struct {
		mode  Mode
		sizes []int // sizes of the transactions after the blocked one
	}{
		{Synapse, []int{100, 50}},
		{Dendrite, []int{50, 50, 50}},
		{Conduit, []int{100, 50}},
	}
	for _, tc := range tests {
		t.Run(string(tc.mode), func(t *testing.T) {
			e := startEnv(t, tc.mode)
			id, atok := watchedRoom(t, e)
			ctx := ctxT(t)
			if err := e.hs.WaitIdle(ctx); err != nil {
				t.Fatal(err)
			}
			before := len(e.as.transactions())
			block := make(chan struct{})
			e.as.mu.Lock()
			e.as.block = block
			e.as.mu.Unlock()
			first := sendMessages(t, e, id, atok, 1, "first")
			e.as.waitFor(t, func() bool { return e.as.inflight == 1 })
			rest := sendMessages(t, e, id, atok, 150, "b")
			// Everything is queued behind the transaction in flight.
			if err := e.hs.Wait(ctx, func() bool {
				e.hs.mu.Lock()
				defer e.hs.mu.Unlock()
				return len(e.hs.apps[0].queue) == 150
			}); err != nil {
				t.Fatal(err)
			}
			e.as.mu.Lock()
			e.as.block = nil
			e.as.mu.Unlock()
			close(block)
			if err := e.hs.WaitDelivered(ctx, rest[149]); err != nil {
				t.Fatal(err)
			}
			txns := e.as.transactions()[before:]
			if !slices.Equal(eventIDs(txns[0].Events), first) {
				t.Fatalf("first txn %v", eventIDs(txns[0].Events))
			}
			var sizes []int
			var got []string
			for _, tx := range txns[1:] {
				sizes = append(sizes, len(tx.Events))
				got = append(got, eventIDs(tx.Events)...)
			}
			if !slices.Equal(sizes, tc.sizes) {
				t.Fatalf("batch sizes %v, want %v", sizes, tc.sizes)
			}
			if !slices.Equal(got, rest) {
				t.Fatal("events reordered or lost")
			}
			e.as.mu.Lock()
			maxIn := e.as.maxIn
			e.as.mu.Unlock()
			if maxIn != 1 {
				t.Fatalf("%d transactions in flight at once", maxIn)
			}
		})
	}
}

func TestRetryMergesOnlyOnDendrite(t *testing.T) {
	for _, mode := range []Mode{Synapse, Dendrite} {
		t.Run(string(mode), func(t *testing.T) {
			e := startEnv(t, mode)
			id, atok := watchedRoom(t, e)
			ctx := ctxT(t)
			if err := e.hs.WaitIdle(ctx); err != nil {
				t.Fatal(err)
			}
			before := len(e.as.transactions())
			e.as.setFail(1<<30, 503)
			a := sendMessages(t, e, id, atok, 1, "a")[0]
			e.as.waitFor(t, func() bool { return len(e.as.txns) > before })
			b := sendMessages(t, e, id, atok, 1, "b")[0]
			if err := e.hs.Wait(ctx, func() bool {
				e.hs.mu.Lock()
				defer e.hs.mu.Unlock()
				as := e.hs.apps[0]
				return len(as.queue) == 1 || (as.cur != nil && len(as.cur.events) == 2)
			}); err != nil {
				t.Fatal(err)
			}
			if mode == Dendrite {
				// The next retry carries both under the first txn id.
				e.as.waitFor(t, func() bool { return len(e.as.txns[len(e.as.txns)-1].Events) == 2 })
			}
			e.as.setFail(0, 0)
			if err := e.hs.WaitDelivered(ctx, b); err != nil {
				t.Fatal(err)
			}
			txns := e.as.transactions()[before:]
			firstID := txns[0].ID
			okTxns := []seenTxn{}
			for _, tx := range txns {
				if tx.Status == 200 {
					okTxns = append(okTxns, tx)
				}
			}
			switch mode {
			case Dendrite:
				for _, tx := range txns {
					if tx.ID != firstID {
						t.Fatalf("dendrite changed the txn id on retry: %s vs %s", tx.ID, firstID)
					}
				}
				if len(okTxns) != 1 || !slices.Equal(eventIDs(okTxns[0].Events), []string{a, b}) {
					t.Fatalf("dendrite did not merge: %+v", okTxns)
				}
			case Synapse:
				if len(okTxns) != 2 || !slices.Equal(eventIDs(okTxns[0].Events), []string{a}) || !slices.Equal(eventIDs(okTxns[1].Events), []string{b}) || okTxns[1].ID == firstID {
					t.Fatalf("synapse must retry the same events, later ones in a new txn: %+v", okTxns)
				}
				if okTxns[0].ID != firstID {
					t.Fatal("synapse changed the txn id on retry")
				}
			}
		})
	}
}

func TestConduitTxnIDIsContentHash(t *testing.T) {
	s := &Server{opts: Options{Mode: Conduit}}
	a := queued{live: &event.Event{EventID: "$a", Content: []byte(`{}`)}}
	b := queued{live: &event.Event{EventID: "$b", Content: []byte(`{}`)}}
	if s.newTxnIDLocked([]queued{a}) != s.newTxnIDLocked([]queued{a}) {
		t.Fatal("same contents, different ids")
	}
	if s.newTxnIDLocked([]queued{a}) == s.newTxnIDLocked([]queued{a, b}) {
		t.Fatal("different contents, same id")
	}
}

func TestSynapseQueriesUnknownUsersBeforeDelivery(t *testing.T) {
	for _, mode := range []Mode{Synapse, Dendrite} {
		t.Run(string(mode), func(t *testing.T) {
			e := startEnv(t, mode)
			registerBot(t, e)
			_, atok := e.user("alice")
			e.as.onUser = func(uid string) int {
				// The appservice creates the user, then answers.
				r := e.do("POST", "/_matrix/client/v3/register", testASToken, map[string]any{"type": asRegistrationType, "username": strings.TrimSuffix(strings.TrimPrefix(uid, "@"), ":example.org")})
				if r.Status != 200 {
					return 500
				}
				return 200
			}
			id := e.createRoom(atok, map[string]any{})
			newbie := "@ascomments_new:example.org"
			e.mustOK(e.do("POST", "/_matrix/client/v3/rooms/"+esc(id)+"/invite", atok, map[string]any{"user_id": newbie}))
			ctx := ctxT(t)
			if err := e.hs.WaitIdle(ctx); err != nil {
				t.Fatal(err)
			}
			users := e.as.requestsTo("/_matrix/app/v1/users/")
			if mode != Synapse {
				if len(users) != 0 {
					t.Fatal("only Synapse queries users before delivery")
				}
				return
			}
			if len(users) != 1 || users[0].RawPath != "/_matrix/app/v1/users/%40ascomments_new%3Aexample.org" {
				t.Fatalf("user queries %+v", users)
			}
			// The query came before the transaction with the invite.
			e.as.mu.Lock()
			order := []string{}
			for _, r := range e.as.requests {
				order = append(order, r.RawPath)
			}
			e.as.mu.Unlock()
			qi := slices.Index(order, users[0].RawPath)
			for i, p := range order {
				if strings.HasPrefix(p, "/_matrix/app/v1/transactions/") && i < qi {
					t.Fatalf("transaction before the user query: %v", order)
				}
			}
			if !e.hs.UserExists(newbie) {
				t.Fatal("appservice did not register the user")
			}
			// Known now: a second event about the user is not queried.
			e.mustOK(e.do("POST", "/_matrix/client/v3/rooms/"+esc(id)+"/kick", atok, map[string]any{"user_id": newbie}))
			if err := e.hs.WaitIdle(ctx); err != nil {
				t.Fatal(err)
			}
			if n := len(e.as.requestsTo("/_matrix/app/v1/users/")); n != 1 {
				t.Fatalf("%d user queries", n)
			}
		})
	}
}

func TestPushTimeoutIsAFailure(t *testing.T) {
	e := startEnv(t, Synapse, func(o *Options) { o.PushTimeout = 50 * time.Millisecond })
	id, atok := watchedRoom(t, e)
	ctx := ctxT(t)
	if err := e.hs.WaitIdle(ctx); err != nil {
		t.Fatal(err)
	}
	block := make(chan struct{})
	e.as.mu.Lock()
	e.as.block = block
	e.as.mu.Unlock()
	ids := sendMessages(t, e, id, atok, 1, "slow")
	if err := e.hs.Wait(ctx, func() bool {
		for _, r := range e.hs.Transactions() {
			if slices.Contains(r.EventIDs, ids[0]) && !r.OK && r.Err != "" {
				return true
			}
		}
		return false
	}); err != nil {
		t.Fatal(err)
	}
	e.as.mu.Lock()
	e.as.block = nil
	e.as.mu.Unlock()
	close(block)
	if err := e.hs.WaitDelivered(ctx, ids[0]); err != nil {
		t.Fatal(err)
	}
}

func deadURL(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := "http://" + ln.Addr().String()
	_ = ln.Close()
	return u
}

// TestPing: Synapse and continuwuity have the client-server ping, with
// their own errors: continuwuity finds a user's token unauthorised and
// answers whatever goes wrong calling the appservice 500 M_UNKNOWN.
func TestPing(t *testing.T) {
	type want struct {
		status int
		code   string
	}
	tests := []struct {
		name             string
		id, token        string // token: "user" for a user's
		onPing           func(w http.ResponseWriter)
		synapse, conduit want
	}{
		{name: "ok", id: "cactus", token: testASToken, synapse: want{200, ""}, conduit: want{200, ""}},
		{name: "user token", id: "cactus", token: "user", synapse: want{403, "M_FORBIDDEN"}, conduit: want{401, "M_UNAUTHORIZED"}},
		{name: "other appservice's token", id: "cactus", token: "dead-as", synapse: want{403, "M_FORBIDDEN"}, conduit: want{403, "M_FORBIDDEN"}},
		{name: "url null", id: "nourl", token: "nourl-as", synapse: want{400, "M_URL_NOT_SET"}, conduit: want{400, "M_URL_NOT_SET"}},
		{name: "bad status", id: "cactus", token: testASToken, onPing: func(w http.ResponseWriter) { w.WriteHeader(500); _, _ = w.Write([]byte("boom")) },
			synapse: want{502, "M_BAD_STATUS"}, conduit: want{500, "M_UNKNOWN"}},
		{name: "connection failed", id: "dead", token: "dead-as", synapse: want{502, "M_CONNECTION_FAILED"}, conduit: want{500, "M_UNKNOWN"}},
		{name: "timeout", id: "cactus", token: testASToken, onPing: func(w http.ResponseWriter) { time.Sleep(time.Second) },
			synapse: want{504, "M_CONNECTION_TIMEOUT"}, conduit: want{500, "M_UNKNOWN"}},
	}
	ping := func(id string) string { return "/_matrix/client/v1/appservice/" + id + "/ping" }
	for _, mode := range []Mode{Synapse, Conduit} {
		dead := deadURL(t)
		e := startEnv(t, mode, func(o *Options) {
			o.QueryTimeout = 200 * time.Millisecond
			o.Registrations = append(o.Registrations,
				&registration.Registration{ID: "nourl", ASToken: "nourl-as", HSToken: "nourl-hs", SenderLocalpart: "nourl"},
				&registration.Registration{ID: "dead", URL: &dead, ASToken: "dead-as", HSToken: "dead-hs", SenderLocalpart: "dead"},
			)
		})
		_, atok := e.user("alice")
		for _, tc := range tests {
			t.Run(string(mode)+"/"+tc.name, func(t *testing.T) {
				w := tc.synapse
				if mode == Conduit {
					w = tc.conduit
				}
				token := tc.token
				if token == "user" {
					token = atok
				}
				e.as.mu.Lock()
				e.as.onPing = tc.onPing
				e.as.mu.Unlock()
				r := e.do("POST", ping(tc.id), token, map[string]any{"transaction_id": "p1"})
				if w.code != "" {
					wantErr(t, r, w.status, w.code)
					if w.code == "M_BAD_STATUS" && (r.Body["status"] != float64(500) || r.Body["body"] != "boom") {
						t.Fatalf("M_BAD_STATUS details: %s", r.Raw)
					}
					return
				}
				if r.Status != w.status {
					t.Fatalf("%d %s", r.Status, r.Raw)
				}
				if _, ok := r.Body["duration_ms"].(float64); !ok {
					t.Fatalf("no duration_ms: %s", r.Raw)
				}
				pings := e.as.requestsTo("/_matrix/app/v1/ping")
				if len(pings) == 0 || pings[len(pings)-1].Auth != "Bearer "+testHSToken {
					t.Fatal("ping not sent with the hs_token")
				}
			})
		}
	}
	d := startEnv(t, Dendrite)
	wantErr(t, d.do("POST", ping("cactus"), testASToken, map[string]any{}), 404, "M_UNRECOGNIZED")
}

func TestSuccessfulPingRetriesAtOnce(t *testing.T) {
	// A time unit of an hour: without the ping, the retry would not come
	// within the test's lifetime.
	e := startEnv(t, Synapse, func(o *Options) { o.TimeUnit = time.Hour })
	registerBot(t, e)
	_, atok := e.user("alice")
	e.as.setFail(1, 500)
	id := e.createRoom(testASToken, map[string]any{"visibility": "public"})
	_ = atok
	e.as.waitFor(t, func() bool { return len(e.as.txns) == 1 })
	e.mustOK(e.do("POST", "/_matrix/client/v1/appservice/cactus/ping", testASToken, map[string]any{}))
	ctx := ctxT(t)
	tl := e.hs.Timeline(id)
	if err := e.hs.WaitDelivered(ctx, tl[len(tl)-1].EventID); err != nil {
		t.Fatal(err)
	}
	txns := e.as.transactions()
	if len(txns) < 2 || txns[0].ID != txns[1].ID {
		t.Fatalf("retry after ping: %+v", txns)
	}
}

func TestDendriteThirdPartyLookups(t *testing.T) {
	e := startEnv(t, Dendrite)
	registerBot(t, e)
	_, atok := e.user("alice")
	r := e.mustOK(e.do("GET", "/_matrix/client/v3/thirdparty/location?alias="+esc("#x:example.org"), atok, nil))
	if string(r.Raw) != "[]" {
		t.Fatalf("merged answer %s", r.Raw)
	}
	e.mustOK(e.do("GET", "/_matrix/client/v3/thirdparty/user?userid="+esc("@x:example.org"), atok, nil))
	loc := e.as.requestsTo("/_matrix/app/v1/thirdparty/location")
	usr := e.as.requestsTo("/_matrix/app/v1/thirdparty/user")
	if len(loc) != 1 || !strings.Contains(loc[0].Query, "alias=") || len(usr) != 1 || !strings.Contains(usr[0].Query, "userid=") {
		t.Fatalf("thirdparty queries: %+v %+v", loc, usr)
	}
	if strings.Contains(loc[0].Query, "access_token") {
		t.Fatal("client credentials forwarded to the appservice")
	}
}

func TestCloseStopsPusher(t *testing.T) {
	e := startEnv(t, Synapse)
	e.as.setFail(1<<30, 500)
	registerBot(t, e)
	e.createRoom(testASToken, map[string]any{})
	e.as.waitFor(t, func() bool { return len(e.as.txns) > 0 })
	done := make(chan error, 1)
	go func() { done <- e.hs.Close() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close hung")
	}
	if err := e.hs.Wait(context.Background(), func() bool { return false }); err == nil {
		t.Fatal("Wait on a closed simulator must fail")
	}
}

func TestPushErrorsHoldNoToken(t *testing.T) {
	dead := deadURL(t)
	hs, err := Start(ctxT(t), Options{ServerName: testServer, Mode: Conduit, TimeUnit: time.Hour,
		Registrations: []*registration.Registration{{ID: "dead", URL: &dead, ASToken: "dead-as", HSToken: "secret-hs-token", SenderLocalpart: "dead"}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = hs.Close() })
	ctx := ctxT(t)
	if _, err := hs.CreateRoom(ctx, "dead-as", nil); err != nil {
		t.Fatal(err)
	}
	if err := hs.Wait(ctx, func() bool { return len(hs.Transactions()) > 0 }); err != nil {
		t.Fatal(err)
	}
	rec := hs.Transactions()[0]
	if rec.OK || rec.Err == "" || strings.Contains(rec.Err, "secret-hs-token") {
		t.Fatalf("record %+v", rec)
	}
}
