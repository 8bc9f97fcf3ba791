package hssim

import (
	"fmt"
	"testing"
)

// readRoom is a private room (history "shared") seen by users in every
// membership: alice joined (creator), bob invited, carol joined then left,
// dave joined then banned, eve never in it; the bot is invited and
// @ascomments_w, a user of the appservice's namespace, is joined or not.
type readRoom struct {
	id, msg string // msg: a message sent while carol and dave were joined
	tokens  map[string]string
}

func setupReadRoom(t *testing.T, e *env, witness bool) readRoom {
	t.Helper()
	registerBot(t, e)
	_, atok := e.user("alice")
	_, btok := e.user("bob")
	_, ctok := e.user("carol")
	_, dtok := e.user("dave")
	_, etok := e.user("eve")
	id := e.createRoom(atok, map[string]any{"preset": "private_chat", "room_alias_name": "readroom"})
	room := "/_matrix/client/v3/rooms/" + esc(id)
	for _, u := range []string{"@bob", "@carol", "@dave", "@cactusbot"} {
		e.mustOK(e.do("POST", room+"/invite", atok, map[string]any{"user_id": u + ":example.org"}))
	}
	e.mustOK(e.do("POST", room+"/join", ctok, map[string]any{}))
	e.mustOK(e.do("POST", room+"/join", dtok, map[string]any{}))
	if witness {
		w := "@ascomments_w:example.org"
		e.mustOK(e.do("POST", "/_matrix/client/v3/register", testASToken, map[string]any{"type": asRegistrationType, "username": "ascomments_w", "inhibit_login": true}))
		e.mustOK(e.do("POST", room+"/invite", atok, map[string]any{"user_id": w}))
		e.mustOK(e.do("POST", room+"/join?user_id="+esc(w), testASToken, map[string]any{}))
	}
	msg := e.mustOK(e.do("PUT", room+"/send/m.room.message/while-in", atok, map[string]any{"body": "hello"})).str("event_id")
	e.mustOK(e.do("POST", room+"/leave", ctok, map[string]any{}))
	e.mustOK(e.do("POST", room+"/ban", atok, map[string]any{"user_id": "@dave:example.org"}))
	e.mustOK(e.do("PUT", room+"/send/m.room.message/after", atok, map[string]any{"body": "later"}))
	return readRoom{id: id, msg: msg, tokens: map[string]string{
		"joined": atok, "invited": btok, "departed": ctok, "banned": dtok, "stranger": etok, "bot invited": testASToken,
	}}
}

// readPaths are the read endpoints, keyed by name.
func readPaths(rr readRoom) map[string]string {
	room := "/_matrix/client/v3/rooms/" + esc(rr.id)
	return map[string]string{
		"state":          room + "/state",
		"state/type/key": room + "/state/m.room.join_rules/",
		"members":        room + "/members",
		"joined_members": room + "/joined_members",
		"messages":       room + "/messages?dir=b",
		"context":        room + "/context/" + esc(rr.msg),
		"aliases":        room + "/aliases",
	}
}

func TestReadingARoomNeedsMembership(t *testing.T) {
	// Who gets 200, per mode; every other (who, endpoint) gets 403
	// M_FORBIDDEN.
	allRead := []string{"state", "state/type/key", "members", "joined_members", "messages", "context", "aliases"}
	departedSynapse := []string{"state", "state/type/key", "members", "messages", "context", "aliases"}
	for _, tc := range []struct {
		mode    Mode
		witness bool // a joined member in the appservice's namespace
		ok      map[string][]string
	}{
		{Synapse, false, map[string][]string{"joined": allRead, "departed": departedSynapse}},
		{Synapse, true, map[string][]string{"joined": allRead, "departed": departedSynapse, "bot invited": {"joined_members"}}},
		{Dendrite, true, map[string][]string{"joined": allRead, "departed": departedSynapse}},
		{Conduit, true, map[string][]string{"joined": allRead, "departed": {"messages", "context"}}},
	} {
		t.Run(fmt.Sprintf("%s/witness=%v", tc.mode, tc.witness), func(t *testing.T) {
			e := startEnv(t, tc.mode)
			rr := setupReadRoom(t, e, tc.witness)
			for who, tok := range rr.tokens {
				for name, path := range readPaths(rr) {
					r := e.do("GET", path, tok, nil)
					want := 403
					for _, ok := range tc.ok[who] {
						if ok == name {
							want = 200
						}
					}
					if r.Status != want || (want == 403 && r.errcode() != "M_FORBIDDEN") {
						t.Errorf("%s GET %s: got %d %s, want %d", who, name, r.Status, r.Raw, want)
					}
				}
			}
		})
	}
}

func TestFormerMemberReadsTheRoomAsAtTheirLeave(t *testing.T) {
	e := startEnv(t, Synapse)
	rr := setupReadRoom(t, e, false)
	room := "/_matrix/client/v3/rooms/" + esc(rr.id)
	carol := rr.tokens["departed"]
	e.mustOK(e.do("PUT", room+"/state/m.room.topic/", rr.tokens["joined"], map[string]any{"topic": "after"}))
	wantErr(t, e.do("GET", room+"/state/m.room.topic/", carol, nil), 404, "M_NOT_FOUND")
	msgs := e.mustOK(e.do("GET", room+"/messages?dir=b&limit=100", carol, nil))
	chunk := msgs.Body["chunk"].([]any)
	last := chunk[0].(map[string]any)
	if last["type"] != "m.room.member" || last["state_key"] != "@carol:example.org" {
		t.Fatalf("newest event a former member sees is %v, want their leave", last)
	}
	members := e.mustOK(e.do("GET", room+"/members?membership=ban", carol, nil))
	if n := len(members.Body["chunk"].([]any)); n != 0 {
		t.Fatalf("a former member sees %d bans made after they left", n)
	}
}

func TestWorldReadableRoomIsReadByAnyone(t *testing.T) {
	for _, mode := range []Mode{Synapse, Dendrite, Conduit} {
		t.Run(string(mode), func(t *testing.T) {
			e := startEnv(t, mode)
			_, atok := e.user("alice")
			_, etok := e.user("eve")
			id := e.createRoom(atok, map[string]any{"preset": "public_chat",
				"initial_state": []map[string]any{{"type": "m.room.history_visibility", "content": map[string]any{"history_visibility": "world_readable"}}}})
			for _, p := range []string{"/state", "/members", "/joined_members", "/messages"} {
				e.mustOK(e.do("GET", "/_matrix/client/v3/rooms/"+esc(id)+p, etok, nil))
			}
		})
	}
}

func TestHistoryVisibilityJoinedHidesEarlierEvents(t *testing.T) {
	e := startEnv(t, Synapse)
	_, atok := e.user("alice")
	_, btok := e.user("bob")
	id := e.createRoom(atok, map[string]any{"preset": "public_chat",
		"initial_state": []map[string]any{{"type": "m.room.history_visibility", "content": map[string]any{"history_visibility": "joined"}}}})
	room := "/_matrix/client/v3/rooms/" + esc(id)
	before := e.mustOK(e.do("PUT", room+"/send/m.room.message/before", atok, map[string]any{"body": "before"})).str("event_id")
	e.mustOK(e.do("POST", room+"/join", btok, map[string]any{}))
	after := e.mustOK(e.do("PUT", room+"/send/m.room.message/after", atok, map[string]any{"body": "after"})).str("event_id")
	msgs := e.mustOK(e.do("GET", room+"/messages?dir=b&limit=100", btok, nil))
	seen := map[string]bool{}
	for _, ev := range msgs.Body["chunk"].([]any) {
		seen[ev.(map[string]any)["event_id"].(string)] = true
	}
	if seen[before] || !seen[after] {
		t.Fatalf("joined-only history: saw before=%v after=%v", seen[before], seen[after])
	}
	wantErr(t, e.do("GET", room+"/context/"+esc(before), btok, nil), 403, "M_FORBIDDEN")
	e.mustOK(e.do("GET", room+"/context/"+esc(after), btok, nil))
}
