package hssim

import (
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/cactus-comments/appservice/pkg/event"
)

func eventIDs(evs []event.Event) []string {
	out := make([]string, len(evs))
	for i, e := range evs {
		out[i] = e.EventID
	}
	return out
}

// sendMessages has alice send n messages into a room the bot watches and
// returns their event ids.
func sendMessages(t *testing.T, e *env, roomID, token string, n int, prefix string) []string {
	t.Helper()
	var ids []string
	for i := 0; i < n; i++ {
		r := e.mustOK(e.do("PUT", "/_matrix/client/v3/rooms/"+esc(roomID)+"/send/m.room.message/"+prefix+strconv.Itoa(i), token, map[string]any{"msgtype": "m.text", "body": "m"}))
		ids = append(ids, r.str("event_id"))
	}
	return ids
}

// watchedRoom is a public room with the bot joined, so the appservice is
// interested in every event; alice is a plain member.
func watchedRoom(t *testing.T, e *env) (roomID, aliceToken string) {
	t.Helper()
	registerBot(t, e)
	_, atok := e.user("alice")
	id := e.createRoom(testASToken, map[string]any{"visibility": "public"})
	e.mustOK(e.do("POST", "/_matrix/client/v3/rooms/"+esc(id)+"/join", atok, map[string]any{}))
	return id, atok
}

func TestSynapsePushBasics(t *testing.T) {
	e := startEnv(t, Synapse, func(o *Options) { o.Registrations[0].ReceiveEphemeral = true })
	id, atok := watchedRoom(t, e)
	ids := sendMessages(t, e, id, atok, 3, "a")
	ctx := ctxT(t)
	if err := e.hs.WaitDelivered(ctx, ids[2]); err != nil {
		t.Fatal(err)
	}
	txns := e.as.transactions()
	var got []string
	last := int64(-1)
	for _, tx := range txns {
		n, err := strconv.ParseInt(tx.ID, 10, 64)
		if err != nil || n <= last {
			t.Fatalf("synapse txn ids must be increasing integers: %q after %d", tx.ID, last)
		}
		last = n
		if tx.AuthHdr != "Bearer "+testHSToken || tx.AuthQuery != "" {
			t.Fatalf("synapse auth: header %q query %q", tx.AuthHdr, tx.AuthQuery)
		}
		if _, ok := tx.Body["ephemeral"]; !ok {
			t.Fatal("receive_ephemeral: no ephemeral key")
		}
		got = append(got, eventIDs(tx.Events)...)
	}
	// Every event of the room, in order, exactly once.
	want := eventIDs(e.hs.Timeline(id))
	if !slices.Equal(got, want) {
		t.Fatalf("delivered %v\nwant %v", got, want)
	}
	// Events carry the client format.
	for _, tx := range txns {
		for _, ev := range tx.Events {
			if ev.RoomID != id || ev.Sender == "" || ev.OriginServerTS == 0 || unsignedOf(t, ev)["age"] == nil {
				t.Fatalf("event shape %+v", ev)
			}
		}
	}
}

func TestInviteCarriesRoomStateAndInterest(t *testing.T) {
	e := startEnv(t, Synapse)
	registerBot(t, e)
	_, atok := e.user("alice")
	_, btok := e.user("bob")
	// A room the appservice has no interest in.
	id := e.createRoom(atok, map[string]any{"name": "Chat"})
	e.mustOK(e.do("POST", "/_matrix/client/v3/rooms/"+esc(id)+"/invite", atok, map[string]any{"user_id": "@bob:example.org"}))
	e.mustOK(e.do("POST", "/_matrix/client/v3/rooms/"+esc(id)+"/join", btok, map[string]any{}))
	r := e.mustOK(e.do("POST", "/_matrix/client/v3/rooms/"+esc(id)+"/invite", atok, map[string]any{"user_id": "@cactusbot:example.org"}))
	_ = r
	ctx := ctxT(t)
	if err := e.hs.WaitIdle(ctx); err != nil {
		t.Fatal(err)
	}
	var seen []event.Event
	for _, tx := range e.as.transactions() {
		seen = append(seen, tx.Events...)
	}
	if len(seen) != 1 || seen[0].Type != "m.room.member" || *seen[0].StateKey != "@cactusbot:example.org" {
		t.Fatalf("appservice got %d events, want only the invite of its bot: %+v", len(seen), seen)
	}
	irs, ok := unsignedOf(t, seen[0])["invite_room_state"].([]any)
	if !ok || len(irs) < 4 {
		t.Fatalf("invite_room_state %s", seen[0].Unsigned)
	}
	types := map[string]bool{}
	for _, s := range irs {
		types[s.(map[string]any)["type"].(string)] = true
	}
	for _, ty := range []string{"m.room.create", "m.room.join_rules", "m.room.name", "m.room.member"} {
		if !types[ty] {
			t.Fatalf("invite_room_state lacks %s: %v", ty, irs)
		}
	}
}

func TestPusherRetriesPerMode(t *testing.T) {
	numeric := regexp.MustCompile(`^[0-9]+$`)
	hash := regexp.MustCompile(`^[A-Za-z0-9_-]{43}$`)
	tests := []struct {
		mode       Mode
		failStatus int
		idShape    *regexp.Regexp
	}{
		{Synapse, 500, numeric},
		{Dendrite, 201, numeric}, // Dendrite: only exactly 200 succeeds
		{Conduit, 503, hash},
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
			e.as.setFail(3, tc.failStatus)
			ids := sendMessages(t, e, id, atok, 1, "r")
			if err := e.hs.WaitDelivered(ctx, ids[0]); err != nil {
				t.Fatal(err)
			}
			txns := e.as.transactions()[before:]
			if len(txns) != 4 {
				t.Fatalf("want 3 failures and a success, got %d attempts", len(txns))
			}
			for i, tx := range txns {
				if tx.ID != txns[0].ID || !slices.Equal(eventIDs(tx.Events), ids) {
					t.Fatalf("attempt %d changed the txn: %s %v", i, tx.ID, eventIDs(tx.Events))
				}
				if !tc.idShape.MatchString(tx.ID) {
					t.Fatalf("txn id %q has the wrong shape", tx.ID)
				}
			}
			recs := e.hs.Transactions()
			last := recs[len(recs)-1]
			if !last.OK || last.Attempt != 4 || recs[len(recs)-2].OK {
				t.Fatalf("txn log %+v", recs[len(recs)-4:])
			}
			if tc.mode == Conduit && (txns[0].AuthQuery != testHSToken || txns[0].AuthHdr != "Bearer "+testHSToken) {
				t.Fatal("conduit must send both auth forms")
			}
		})
	}
}

func TestBackoffSchedules(t *testing.T) {
	unit := time.Millisecond
	tests := []struct {
		mode Mode
		want []time.Duration // waits after failures 1..n
	}{
		{Synapse, []time.Duration{2, 4, 8, 16, 32, 64, 128, 256, 512, 512, 512}},
		{Dendrite, []time.Duration{2, 4, 8, 16, 32, 64, 64}},
		{Conduit, []time.Duration{10, 20, 30, 40}},
	}
	for _, tc := range tests {
		t.Run(string(tc.mode), func(t *testing.T) {
			s := &Server{opts: Options{Mode: tc.mode, TimeUnit: unit}}
			for i, w := range tc.want {
				if got := s.backoff(i + 1); got != w*unit {
					t.Fatalf("failure %d: %v, want %v", i+1, got, w*unit)
				}
			}
		})
	}
}

func TestSynapseNonJSONSuccessIsFailure(t *testing.T) {
	e := startEnv(t, Synapse)
	id, atok := watchedRoom(t, e)
	ctx := ctxT(t)
	if err := e.hs.WaitIdle(ctx); err != nil {
		t.Fatal(err)
	}
	empties := 2
	e.as.mu.Lock()
	e.as.txnReply = func(w http.ResponseWriter) bool {
		if empties == 0 {
			return false
		}
		empties--
		w.WriteHeader(200) // empty body: Synapse resends
		return true
	}
	e.as.mu.Unlock()
	ids := sendMessages(t, e, id, atok, 1, "e")
	if err := e.hs.WaitDelivered(ctx, ids[0]); err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, r := range e.hs.Transactions() {
		if slices.Contains(r.EventIDs, ids[0]) {
			n++
		}
	}
	if n != 3 {
		t.Fatalf("%d attempts, want 3", n)
	}
}
