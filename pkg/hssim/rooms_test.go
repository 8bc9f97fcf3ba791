package hssim

import (
	"encoding/json"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cactus-comments/appservice/pkg/event"
)

func registerBot(t *testing.T, e *env) {
	t.Helper()
	r := e.do("POST", "/_matrix/client/v3/register", testASToken, map[string]any{"type": asRegistrationType, "username": "cactusbot", "inhibit_login": true})
	if r.Status != 200 && r.errcode() != "M_USER_IN_USE" {
		t.Fatalf("register bot: %s", r.Raw)
	}
}

func stateContent(t *testing.T, e *env, roomID, typ, key string) map[string]any {
	t.Helper()
	raw, ok := e.hs.StateEvent(roomID, typ, key)
	if !ok {
		t.Fatalf("no %s/%q in %s", typ, key, roomID)
	}
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

func TestCreateRoomPresetsAndOptions(t *testing.T) {
	e := startEnv(t, Synapse)
	alice, atok := e.user("alice")
	bob, _ := e.user("bob")
	tests := []struct {
		name  string
		body  map[string]any
		check func(t *testing.T, roomID string)
	}{
		{"private default", map[string]any{}, func(t *testing.T, id string) {
			if stateContent(t, e, id, "m.room.join_rules", "")["join_rule"] != "invite" ||
				stateContent(t, e, id, "m.room.guest_access", "")["guest_access"] != "can_join" ||
				stateContent(t, e, id, "m.room.history_visibility", "")["history_visibility"] != "shared" {
				t.Fatal("private_chat preset not applied")
			}
		}},
		{"public visibility means public_chat", map[string]any{"visibility": "public"}, func(t *testing.T, id string) {
			if stateContent(t, e, id, "m.room.join_rules", "")["join_rule"] != "public" {
				t.Fatal("not public")
			}
			if _, ok := e.hs.StateEvent(id, "m.room.guest_access", ""); ok {
				t.Fatal("public_chat must not allow guests")
			}
		}},
		{"initial_state overrides preset; name topic invite", map[string]any{
			"preset": "private_chat", "name": "N", "topic": "T", "invite": []string{bob},
			"initial_state":    []any{map[string]any{"type": "m.room.join_rules", "content": map[string]any{"join_rule": "public"}}, map[string]any{"type": "m.room.history_visibility", "content": map[string]any{"history_visibility": "world_readable"}}},
			"creation_content": map[string]any{"m.federate": true},
		}, func(t *testing.T, id string) {
			if stateContent(t, e, id, "m.room.join_rules", "")["join_rule"] != "public" ||
				stateContent(t, e, id, "m.room.history_visibility", "")["history_visibility"] != "world_readable" {
				t.Fatal("initial_state not applied over the preset")
			}
			if stateContent(t, e, id, "m.room.name", "")["name"] != "N" || stateContent(t, e, id, "m.room.topic", "")["topic"] != "T" {
				t.Fatal("name/topic")
			}
			c := stateContent(t, e, id, "m.room.create", "")
			if c["m.federate"] != true || c["creator"] != alice || c["room_version"] != "10" {
				t.Fatalf("create content %v", c)
			}
			if e.hs.Membership(id, bob) != "invite" {
				t.Fatal("bob not invited")
			}
			tl := e.hs.Timeline(id)
			if tl[0].Type != "m.room.create" || tl[1].Type != "m.room.member" || tl[2].Type != "m.room.power_levels" {
				t.Fatalf("event order: %s %s %s", tl[0].Type, tl[1].Type, tl[2].Type)
			}
		}},
		{"power level override merged", map[string]any{"power_level_content_override": map[string]any{"users": map[string]any{alice: 100, bob: 50}, "ban": 40}}, func(t *testing.T, id string) {
			pl := stateContent(t, e, id, "m.room.power_levels", "")
			if pl["ban"] != float64(40) || pl["kick"] != float64(50) || e.hs.PowerLevel(id, bob) != 50 || e.hs.PowerLevel(id, alice) != 100 {
				t.Fatalf("power levels %v", pl)
			}
		}},
		{"is_direct marks the invites", map[string]any{"preset": "trusted_private_chat", "invite": []string{bob}, "is_direct": true}, func(t *testing.T, id string) {
			if c := stateContent(t, e, id, "m.room.member", bob); c["membership"] != "invite" || c["is_direct"] != true {
				t.Fatalf("invite content %v", c)
			}
		}},
		{"no is_direct on ordinary invites", map[string]any{"invite": []string{bob}}, func(t *testing.T, id string) {
			if c := stateContent(t, e, id, "m.room.member", bob); c["is_direct"] != nil {
				t.Fatalf("invite content %v", c)
			}
		}},
		{"trusted private chat gives invitees 100", map[string]any{"preset": "trusted_private_chat", "invite": []string{bob}}, func(t *testing.T, id string) {
			if e.hs.PowerLevel(id, bob) != 100 {
				t.Fatal("invitee not admin")
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			id := e.createRoom(atok, tc.body)
			if !strings.HasPrefix(id, "!") || !strings.HasSuffix(id, ":example.org") {
				t.Fatalf("room id %q", id)
			}
			if e.hs.Membership(id, alice) != "join" {
				t.Fatal("creator not joined")
			}
			tc.check(t, id)
		})
	}
}

func TestCreateRoomAliases(t *testing.T) {
	e := startEnv(t, Synapse)
	registerBot(t, e)
	_, atok := e.user("alice")
	cr := "/_matrix/client/v3/createRoom"
	id := e.createRoom(testASToken, map[string]any{"room_alias_name": "comments_blog"})
	if got, ok := e.hs.ResolveAliasLocal("#comments_blog:example.org"); !ok || got != id {
		t.Fatal("alias not created")
	}
	if stateContent(t, e, id, "m.room.canonical_alias", "")["alias"] != "#comments_blog:example.org" {
		t.Fatal("canonical alias not set")
	}
	wantErr(t, e.do("POST", cr, testASToken, map[string]any{"room_alias_name": "comments_blog"}), 400, "M_ROOM_IN_USE")
	wantErr(t, e.do("POST", cr, testASToken, map[string]any{"room_alias_name": "other"}), 400, "M_EXCLUSIVE")
	wantErr(t, e.do("POST", cr, atok, map[string]any{"room_alias_name": "comments_x"}), 400, "M_EXCLUSIVE")
	wantErr(t, e.do("POST", cr, atok, map[string]any{"room_alias_name": "a:b"}), 400, "M_UNKNOWN")
	e.mustOK(e.do("POST", cr, atok, map[string]any{"room_alias_name": "alices"}))
	before := len(e.hs.Rooms())
	wantErr(t, e.do("POST", cr, atok, map[string]any{"room_alias_name": "alices"}), 400, "M_ROOM_IN_USE")
	if len(e.hs.Rooms()) != before {
		t.Fatal("a refused createRoom left a room behind")
	}
}

func TestJoinByAliasQueriesAppservice(t *testing.T) {
	for _, mode := range []Mode{Synapse, Dendrite, Conduit} {
		t.Run(string(mode), func(t *testing.T) {
			e := startEnv(t, mode)
			registerBot(t, e)
			alice, atok := e.user("alice")
			var mu sync.Mutex
			var asked []string
			e.as.onAlias = func(alias string) int {
				mu.Lock()
				asked = append(asked, alias)
				mu.Unlock()
				if alias != "#comments_blog_/posts/a:example.org" {
					return 404
				}
				// Like the real appservice: create the room, then answer.
				r := e.do("POST", "/_matrix/client/v3/createRoom", testASToken, map[string]any{
					"room_alias_name": "comments_blog_/posts/a", "initial_state": []any{map[string]any{"type": "m.room.join_rules", "content": map[string]any{"join_rule": "public"}}},
				})
				if r.Status != 200 {
					return 500
				}
				return 200
			}
			alias := "#comments_blog_/posts/a:example.org"
			r := e.mustOK(e.do("POST", "/_matrix/client/v3/join/"+esc(alias), atok, map[string]any{}))
			roomID := r.str("room_id")
			if e.hs.Membership(roomID, alice) != "join" {
				t.Fatal("not joined")
			}
			reqs := e.as.requestsTo("/_matrix/app/v1/rooms/")
			if len(reqs) != 1 {
				t.Fatalf("alias queries: %+v", reqs)
			}
			wantPath := map[Mode]string{
				Synapse:  "/_matrix/app/v1/rooms/%23comments_blog_/posts/a%3Aexample.org",
				Dendrite: "/_matrix/app/v1/rooms/%23comments_blog_%2Fposts%2Fa:example.org",
				Conduit:  "/_matrix/app/v1/rooms/%23comments_blog_%2Fposts%2Fa%3Aexample.org",
			}[mode]
			if reqs[0].RawPath != wantPath {
				t.Fatalf("alias query path %s, want %s", reqs[0].RawPath, wantPath)
			}
			if reqs[0].Auth != "Bearer "+testHSToken {
				t.Fatal("alias query without the hs_token header")
			}
			// Known now: no second query.
			e.mustOK(e.do("GET", "/_matrix/client/v3/directory/room/"+esc(alias), atok, nil))
			if len(e.as.requestsTo("/_matrix/app/v1/rooms/")) != 1 {
				t.Fatal("known alias queried again")
			}
			// Unknown alias in the namespace: asked, still absent.
			missing := "#comments_nosuch:example.org"
			r = e.do("POST", "/_matrix/client/v3/join/"+esc(missing), atok, map[string]any{})
			if mode == Dendrite {
				wantErr(t, r, 500, "M_UNKNOWN")
			} else {
				wantErr(t, r, 404, "M_NOT_FOUND")
			}
			wantErr(t, e.do("GET", "/_matrix/client/v3/directory/room/"+esc(missing), atok, nil), 404, "M_NOT_FOUND")
			// Outside every namespace: nobody is asked.
			n := len(e.as.requestsTo("/_matrix/app/v1/rooms/"))
			wantErr(t, e.do("GET", "/_matrix/client/v3/directory/room/"+esc("#elsewhere:example.org"), atok, nil), 404, "M_NOT_FOUND")
			if len(e.as.requestsTo("/_matrix/app/v1/rooms/")) != n {
				t.Fatal("alias outside the namespace was queried")
			}
		})
	}
}

func TestStateAndPowerLevels(t *testing.T) {
	e := startEnv(t, Synapse)
	alice, atok := e.user("alice")
	bob, btok := e.user("bob")
	carol, ctok := e.user("carol")
	mod, mtok := e.user("mod")
	id := e.createRoom(atok, map[string]any{"visibility": "public", "power_level_content_override": map[string]any{"users": map[string]any{alice: 100, mod: 50}}})
	for _, tok := range []string{btok, ctok, mtok} {
		e.mustOK(e.do("POST", "/_matrix/client/v3/rooms/"+esc(id)+"/join", tok, map[string]any{}))
	}
	state := func(typ, key string) string {
		return "/_matrix/client/v3/rooms/" + esc(id) + "/state/" + esc(typ) + "/" + esc(key)
	}
	pl := func(users map[string]any, extra map[string]any) map[string]any {
		c := map[string]any{"users": users, "users_default": 0, "events": map[string]any{"m.room.power_levels": 100}, "state_default": 50, "ban": 50, "kick": 50, "invite": 0, "redact": 50, "events_default": 0}
		for k, v := range extra {
			c[k] = v
		}
		return c
	}
	tests := []struct {
		name   string
		method string
		path   string
		token  string
		body   any
		status int
		code   string
	}{
		{"member sets topic below state_default", "PUT", state("m.room.topic", ""), btok, map[string]any{"topic": "x"}, 403, "M_FORBIDDEN"},
		{"moderator sets topic", "PUT", state("m.room.topic", ""), mtok, map[string]any{"topic": "x"}, 200, ""},
		{"power levels need 100", "PUT", state("m.room.power_levels", ""), mtok, pl(map[string]any{alice: 100, mod: 50}, nil), 403, "M_FORBIDDEN"},
		{"cannot set others' state key", "PUT", state("org.example.x", bob), mtok, map[string]any{}, 403, "M_FORBIDDEN"},
		{"admin raises bob to 50", "PUT", state("m.room.power_levels", ""), atok, pl(map[string]any{alice: 100, mod: 50, bob: 50}, nil), 200, ""},
		{"strings are refused in room version 10", "PUT", state("m.room.power_levels", ""), atok, pl(map[string]any{alice: 100, mod: "50"}, nil), 400, "M_BAD_JSON"},
		{"send a message", "PUT", "/_matrix/client/v3/rooms/" + esc(id) + "/send/m.room.message/t1", ctok, map[string]any{"msgtype": "m.text", "body": "hi"}, 200, ""},
		{"non-member cannot send", "PUT", "/_matrix/client/v3/rooms/" + esc("!nope:example.org") + "/send/m.room.message/t1", ctok, map[string]any{}, 403, "M_FORBIDDEN"},
		{"get state", "GET", state("m.room.topic", ""), ctok, nil, 200, ""},
		{"missing state", "GET", state("m.room.avatar", ""), ctok, nil, 404, "M_NOT_FOUND"},
		{"state without trailing key", "GET", "/_matrix/client/v3/rooms/" + esc(id) + "/state/m.room.power_levels", ctok, nil, 200, ""},
		{"bad json", "PUT", state("m.room.topic", ""), mtok, "{", 400, "M_NOT_JSON"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := e.do(tc.method, tc.path, tc.token, tc.body)
			if tc.code != "" {
				wantErr(t, r, tc.status, tc.code)
			} else if r.Status != tc.status {
				t.Fatalf("%d %s", r.Status, r.Raw)
			}
		})
	}
	all := e.mustOK(e.do("GET", "/_matrix/client/v3/rooms/"+esc(id)+"/state", ctok, nil))
	var list []event.Event
	if err := json.Unmarshal(all.Raw, &list); err != nil || len(list) < 8 {
		t.Fatalf("all state: %v %s", err, all.Raw)
	}
	_ = carol
}

func TestPowerLevelChangeRules(t *testing.T) {
	const me = "@me:x"
	base := map[string]any{"users": map[string]any{me: 50, "@peer:x": 50, "@low:x": 10, "@boss:x": 100}, "ban": 50, "kick": 50, "events": map[string]any{"m.room.name": 50}, "state_default": 50}
	ra := roomAuth{creator: "@boss:x"}
	old, err := parsePowerLevels(normalize(base), ra)
	if err != nil {
		t.Fatal(err)
	}
	with := func(f func(m map[string]any)) map[string]any {
		var m map[string]any
		_ = json.Unmarshal(mustJSON(base), &m)
		f(m)
		return m
	}
	users := func(m map[string]any) map[string]any { return m["users"].(map[string]any) }
	tests := []struct {
		name string
		new  map[string]any
		ok   bool
	}{
		{"unchanged", with(func(map[string]any) {}), true},
		{"raise low to my level", with(func(m map[string]any) { users(m)["@low:x"] = 50 }), true},
		{"raise low above me", with(func(m map[string]any) { users(m)["@low:x"] = 51 }), false},
		{"change a peer at my level", with(func(m map[string]any) { users(m)["@peer:x"] = 10 }), false},
		{"remove a peer at my level", with(func(m map[string]any) { delete(users(m), "@peer:x") }), false},
		{"change someone above", with(func(m map[string]any) { users(m)["@boss:x"] = 0 }), false},
		{"lower myself", with(func(m map[string]any) { users(m)[me] = 0 }), true},
		{"raise myself", with(func(m map[string]any) { users(m)[me] = 60 }), false},
		{"add new user at my level", with(func(m map[string]any) { users(m)["@new:x"] = 50 }), true},
		{"raise ban above me", with(func(m map[string]any) { m["ban"] = 60 }), false},
		{"lower ban", with(func(m map[string]any) { m["ban"] = 10 }), true},
		{"event level above me", with(func(m map[string]any) { m["events"].(map[string]any)["m.room.topic"] = 75 }), false},
		{"users_default above me", with(func(m map[string]any) { m["users_default"] = 51 }), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := (&Server{}).checkPowerLevelsChange(old, ra, normalize(tc.new), me)
			if (e == nil) != tc.ok {
				t.Fatalf("ok=%v, err=%v", tc.ok, e)
			}
		})
	}
	// Integers as strings are read in old room versions.
	pl, err := parsePowerLevels(map[string]any{"ban": "30", "users": map[string]any{me: "75"}}, roomAuth{stringLevels: true})
	if err != nil || pl.ban != 30 || pl.userLevel(me) != 75 || pl.kick != 50 || pl.invite != 0 || pl.stateDefault != 50 {
		t.Fatalf("string levels: %+v %v", pl, err)
	}
	none, _ := parsePowerLevels(nil, roomAuth{creator: "@creator:x"})
	if none.userLevel("@creator:x") != 100 || none.userLevel(me) != 0 || none.stateDefault != 0 {
		t.Fatal("defaults without a power levels event")
	}
}

func TestMembershipRules(t *testing.T) {
	e := startEnv(t, Synapse)
	alice, atok := e.user("alice")
	bob, btok := e.user("bob")
	carol, ctok := e.user("carol")
	mod, mtok := e.user("mod")
	priv := e.createRoom(atok, map[string]any{"preset": "private_chat", "power_level_content_override": map[string]any{"users": map[string]any{alice: 100, mod: 50}}})
	pub := e.createRoom(atok, map[string]any{"visibility": "public", "power_level_content_override": map[string]any{"users": map[string]any{alice: 100, mod: 50}}})
	room := func(id, action string) string { return "/_matrix/client/v3/rooms/" + esc(id) + "/" + action }
	steps := []struct {
		name   string
		path   string
		token  string
		body   any
		status int
		code   string
		member string // expected membership of target afterwards
		target string
		roomID string
	}{
		{"uninvited join of private room", room(priv, "join"), btok, map[string]any{}, 403, "M_FORBIDDEN", "leave", bob, priv},
		{"invite needs membership", room(priv, "invite"), ctok, map[string]any{"user_id": bob}, 403, "M_FORBIDDEN", "leave", bob, priv},
		{"invite", room(priv, "invite"), atok, map[string]any{"user_id": bob}, 200, "", "invite", bob, priv},
		{"invited join", room(priv, "join"), btok, map[string]any{}, 200, "", "join", bob, priv},
		{"public join", room(pub, "join"), btok, map[string]any{}, 200, "", "join", bob, pub},
		{"mod joins", room(pub, "join"), mtok, map[string]any{}, 200, "", "join", mod, pub},
		{"member cannot ban", room(pub, "ban"), btok, map[string]any{"user_id": mod}, 403, "M_FORBIDDEN", "join", mod, pub},
		{"mod cannot ban the admin", room(pub, "ban"), mtok, map[string]any{"user_id": alice}, 403, "M_FORBIDDEN", "join", alice, pub},
		{"mod bans bob", room(pub, "ban"), mtok, map[string]any{"user_id": bob, "reason": "spam"}, 200, "", "ban", bob, pub},
		{"ban again by same sender is a no-op", room(pub, "ban"), mtok, map[string]any{"user_id": bob, "reason": "spam"}, 200, "", "ban", bob, pub},
		{"banned user cannot join", room(pub, "join"), btok, map[string]any{}, 403, "M_BAD_STATE", "ban", bob, pub},
		{"banned cannot be invited", room(pub, "invite"), atok, map[string]any{"user_id": bob}, 403, "M_BAD_STATE", "ban", bob, pub},
		{"unban", room(pub, "unban"), mtok, map[string]any{"user_id": bob}, 200, "", "leave", bob, pub},
		{"unban of someone not banned", room(pub, "unban"), mtok, map[string]any{"user_id": bob}, 403, "M_BAD_STATE", "leave", bob, pub},
		{"rejoin after unban", room(pub, "join"), btok, map[string]any{}, 200, "", "join", bob, pub},
		{"member cannot kick", room(pub, "kick"), btok, map[string]any{"user_id": mod}, 403, "M_FORBIDDEN", "join", mod, pub},
		{"kick", room(pub, "kick"), mtok, map[string]any{"user_id": bob}, 200, "", "leave", bob, pub},
		{"carol joins and leaves", room(pub, "join"), ctok, map[string]any{}, 200, "", "join", carol, pub},
		{"leave", room(pub, "leave"), ctok, nil, 200, "", "leave", carol, pub},
		{"leave twice is a duplicate, answered with the old event", room(pub, "leave"), ctok, map[string]any{}, 200, "", "leave", carol, pub},
		{"leave a room never joined", room(priv, "leave"), ctok, map[string]any{}, 403, "M_FORBIDDEN", "leave", carol, priv},
		{"ban a non-member", room(pub, "ban"), mtok, map[string]any{"user_id": "@stranger:elsewhere.org"}, 200, "", "ban", "@stranger:elsewhere.org", pub},
		{"missing user_id", room(pub, "ban"), mtok, map[string]any{}, 400, "M_MISSING_PARAM", "join", mod, pub},
	}
	for _, st := range steps {
		r := e.do("POST", st.path, st.token, st.body)
		if st.code != "" {
			if r.Status != st.status || r.errcode() != st.code {
				t.Fatalf("%s: want %d %s, got %d %s", st.name, st.status, st.code, r.Status, r.Raw)
			}
		} else if r.Status != st.status {
			t.Fatalf("%s: %d %s", st.name, r.Status, r.Raw)
		}
		if got := e.hs.Membership(st.roomID, st.target); got != st.member {
			t.Fatalf("%s: membership %s, want %s", st.name, got, st.member)
		}
	}
	// The duplicate ban produced no second event.
	bans := 0
	for _, ev := range e.hs.Timeline(pub) {
		if ev.Type == "m.room.member" && *ev.StateKey == bob && strings.Contains(string(ev.Content), `"ban"`) {
			bans++
		}
	}
	if bans != 1 {
		t.Fatalf("%d ban events", bans)
	}
	jr := e.mustOK(e.do("GET", "/_matrix/client/v3/joined_rooms", mtok, nil))
	if rooms, _ := jr.Body["joined_rooms"].([]any); len(rooms) != 1 || rooms[0] != pub {
		t.Fatalf("joined_rooms %s", jr.Raw)
	}
}

func TestGuestAccess(t *testing.T) {
	e := startEnv(t, Synapse)
	_, atok := e.user("alice")
	open := e.createRoom(atok, map[string]any{"initial_state": []any{
		map[string]any{"type": "m.room.join_rules", "content": map[string]any{"join_rule": "public"}},
		map[string]any{"type": "m.room.guest_access", "content": map[string]any{"guest_access": "can_join"}},
	}})
	closed := e.createRoom(atok, map[string]any{"visibility": "public"})
	_, gtok := e.hs.RegisterGuest()
	e.mustOK(e.do("POST", "/_matrix/client/v3/rooms/"+esc(open)+"/join", gtok, map[string]any{}))
	wantErr(t, e.do("POST", "/_matrix/client/v3/rooms/"+esc(closed)+"/join", gtok, map[string]any{}), 403, "M_GUEST_ACCESS_FORBIDDEN")
	wantErr(t, e.do("POST", "/_matrix/client/v3/createRoom", gtok, map[string]any{}), 403, "M_GUEST_ACCESS_FORBIDDEN")
}

func TestSendTxnDeduplication(t *testing.T) {
	for _, mode := range []Mode{Synapse, Dendrite, Conduit} {
		t.Run(string(mode), func(t *testing.T) {
			e := startEnv(t, mode)
			registerBot(t, e)
			for _, u := range []string{"ascomments_a", "ascomments_b"} {
				e.mustOK(e.do("POST", "/_matrix/client/v3/register", testASToken, map[string]any{"type": asRegistrationType, "username": u}))
			}
			id := e.createRoom(testASToken, map[string]any{"visibility": "public"})
			other := e.createRoom(testASToken, map[string]any{"visibility": "public"})
			for _, u := range []string{"@ascomments_a:example.org", "@ascomments_b:example.org"} {
				for _, r := range []string{id, other} {
					e.mustOK(e.do("POST", "/_matrix/client/v3/rooms/"+esc(r)+"/join?user_id="+esc(u), testASToken, map[string]any{}))
				}
			}
			send := func(room, txn, as string) string {
				p := "/_matrix/client/v3/rooms/" + esc(room) + "/send/m.room.message/" + txn
				if as != "" {
					p += "?user_id=" + esc(as)
				}
				return e.mustOK(e.do("PUT", p, testASToken, map[string]any{"body": "x"})).str("event_id")
			}
			first := send(id, "t1", "@ascomments_a:example.org")
			if again := send(id, "t1", "@ascomments_a:example.org"); again != first {
				t.Fatal("retry of the same txn produced a new event")
			}
			// Synapse and Dendrite key by path and appservice (token), so
			// another masqueraded user with the same txn id gets the first
			// event back; continuwuity keys by user.
			otherUser := send(id, "t1", "@ascomments_b:example.org")
			if (otherUser == first) != (mode != Conduit) {
				t.Fatalf("user_id dedup: same=%v", otherUser == first)
			}
			// continuwuity ignores the room: same user, same txn id, other
			// room returns the first event.
			otherRoom := send(other, "t1", "@ascomments_a:example.org")
			if (otherRoom == first) != (mode == Conduit) {
				t.Fatalf("room dedup: same=%v", otherRoom == first)
			}
			count := 0
			for _, ev := range e.hs.Timeline(id) {
				if ev.Type == "m.room.message" {
					count++
				}
			}
			want := map[Mode]int{Synapse: 1, Dendrite: 1, Conduit: 2}[mode]
			if count != want {
				t.Fatalf("%d messages, want %d", count, want)
			}
		})
	}
}

func TestDirectoryAndPathEncoding(t *testing.T) {
	e := startEnv(t, Synapse)
	registerBot(t, e)
	alice, atok := e.user("alice")
	id := e.createRoom(atok, map[string]any{})
	alias := "#my/room:example.org"
	e.mustOK(e.do("PUT", "/_matrix/client/v3/directory/room/"+esc(alias), atok, map[string]any{"room_id": id}))
	r := e.mustOK(e.do("GET", "/_matrix/client/v3/directory/room/"+esc(alias), atok, nil))
	if r.str("room_id") != id {
		t.Fatalf("%s", r.Raw)
	}
	// A raw '/' is a different path: never cleaned into the alias.
	wantErr(t, e.do("GET", "/_matrix/client/v3/directory/room/%23my/room:example.org", atok, nil), 404, "M_UNRECOGNIZED")
	wantErr(t, e.do("PUT", "/_matrix/client/v3/directory/room/"+esc(alias), atok, map[string]any{"room_id": id}), http.StatusConflict, "M_UNKNOWN")
	wantErr(t, e.do("PUT", "/_matrix/client/v3/directory/room/"+esc("#comments_z:example.org"), atok, map[string]any{"room_id": id}), 400, "M_EXCLUSIVE")
	e.mustOK(e.do("DELETE", "/_matrix/client/v3/directory/room/"+esc(alias), atok, nil))
	wantErr(t, e.do("DELETE", "/_matrix/client/v3/directory/room/"+esc(alias), atok, nil), 404, "M_NOT_FOUND")
	_ = alice
}

func TestSendTxnWindowExpires(t *testing.T) {
	e := startEnv(t, Synapse, func(o *Options) { o.TxnWindow = time.Nanosecond })
	_, atok := e.user("alice")
	id := e.createRoom(atok, map[string]any{})
	p := "/_matrix/client/v3/rooms/" + esc(id) + "/send/m.room.message/same"
	first := e.mustOK(e.do("PUT", p, atok, map[string]any{"body": "x"})).str("event_id")
	second := e.mustOK(e.do("PUT", p, atok, map[string]any{"body": "x"})).str("event_id")
	if first == second {
		t.Fatal("txn id remembered past the window")
	}
}

func TestEventSizeLimits(t *testing.T) {
	for _, mode := range []Mode{Synapse, Dendrite, Conduit} {
		t.Run(string(mode), func(t *testing.T) {
			e := startEnv(t, mode)
			_, atok := e.user("alice")
			id := e.createRoom(atok, map[string]any{})
			room := "/_matrix/client/v3/rooms/" + esc(id)
			e.mustOK(e.do("PUT", room+"/send/m.room.message/fits", atok, map[string]any{"body": strings.Repeat("a", 60000)}))
			wantErr(t, e.do("PUT", room+"/send/m.room.message/big", atok, map[string]any{"body": strings.Repeat("a", 65536)}), 413, "M_TOO_LARGE")
			wantErr(t, e.do("PUT", room+"/state/m.room.topic/", atok, map[string]any{"topic": strings.Repeat("a", 65536)}), 413, "M_TOO_LARGE")
			wantErr(t, e.do("PUT", room+"/state/x.custom/"+strings.Repeat("k", 256), atok, map[string]any{}), 413, "M_TOO_LARGE")
			wantErr(t, e.do("PUT", room+"/send/"+strings.Repeat("t", 256)+"/longtype", atok, map[string]any{}), 413, "M_TOO_LARGE")
			if n := len(e.hs.Timeline(id)); e.hs.Timeline(id)[n-1].Type != "m.room.message" {
				t.Fatalf("a refused event was stored")
			}
		})
	}
}
