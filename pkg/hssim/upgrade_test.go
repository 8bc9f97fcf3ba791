package hssim

import (
	"context"
	"slices"
	"strings"
	"testing"
)

func (e *env) upgrade(tok, roomID string, body map[string]any) resp {
	e.t.Helper()
	return e.do("POST", "/_matrix/client/v3/rooms/"+esc(roomID)+"/upgrade", tok, body)
}

func usersOf(t *testing.T, e *env, roomID string) map[string]any {
	t.Helper()
	u, _ := stateContent(t, e, roomID, "m.room.power_levels", "")["users"].(map[string]any)
	return u
}

// The moderation room of a site, made in v10, upgraded by the bot to v12:
// the replacement carries the state, bans, aliases and levels, the bot is
// its creator and nobody else is.
func TestUpgradeV10ToV12(t *testing.T) {
	e := startEnv(t, Synapse)
	registerBot(t, e)
	bot := "@cactusbot:" + testServer
	owner, otok := e.user("owner")
	spammer, stok := e.user("spammer")
	alias := "#comments_blog:" + testServer
	old := e.createRoom(testASToken, map[string]any{
		"room_alias_name": "comments_blog", "name": "blog moderation", "topic": "T", "visibility": "public",
		"initial_state":                []any{map[string]any{"type": "m.room.history_visibility", "content": map[string]any{"history_visibility": "invited"}}},
		"power_level_content_override": map[string]any{"users": map[string]any{bot: 100, owner: 100}},
	})
	e.mustOK(e.do("POST", "/_matrix/client/v3/join/"+esc(old), otok, map[string]any{}))
	e.mustOK(e.do("POST", "/_matrix/client/v3/join/"+esc(old), stok, map[string]any{}))
	e.mustOK(e.do("POST", "/_matrix/client/v3/rooms/"+esc(old)+"/ban", otok, map[string]any{"user_id": spammer, "reason": "spam"}))

	// A member below the tombstone level cannot upgrade.
	wantErr(t, e.upgrade(stok, old, map[string]any{"new_version": "12"}), 403, "M_FORBIDDEN")
	r := e.mustOK(e.upgrade(testASToken, old, map[string]any{"new_version": "12"}))
	nr := r.str("replacement_room")
	if len(e.hs.Rooms()) != 2 || !strings.HasPrefix(nr, "!") || strings.Contains(nr, ":") {
		t.Fatalf("replacement %q, rooms %v", nr, e.hs.Rooms())
	}
	create := stateContent(t, e, nr, "m.room.create", "")
	pred := create["predecessor"].(map[string]any)
	if create["room_version"] != "12" || pred["room_id"] != old || pred["event_id"] != nil || create["creator"] != nil {
		t.Fatalf("create content %v", create)
	}
	if c := e.hs.Creators(nr); len(c) != 1 || c[0] != bot {
		t.Fatalf("creators %v", c)
	}
	tomb := stateContent(t, e, old, "m.room.tombstone", "")
	if tomb["replacement_room"] != nr || tomb["body"] != "This room has been replaced" {
		t.Fatalf("tombstone %v", tomb)
	}
	if id, _ := e.hs.ResolveAliasLocal(alias); id != nr {
		t.Fatalf("alias points to %q", id)
	}
	if stateContent(t, e, nr, "m.room.canonical_alias", "")["alias"] != alias || stateContent(t, e, old, "m.room.canonical_alias", "")["alias"] != nil {
		t.Fatal("canonical alias not moved")
	}
	for typ, key := range map[string]string{"m.room.name": "name", "m.room.topic": "topic", "m.room.join_rules": "join_rule", "m.room.history_visibility": "history_visibility"} {
		if a, b := stateContent(t, e, old, typ, "")[key], stateContent(t, e, nr, typ, "")[key]; a != b {
			t.Fatalf("%s: %v in the old room, %v in the new", typ, a, b)
		}
	}
	if users := usersOf(t, e, nr); len(users) != 1 || users[owner] != float64(100) {
		t.Fatalf("new room users %v: the bot is a creator, the owner an admin", users)
	}
	if e.hs.Membership(nr, spammer) != "ban" || e.hs.Membership(nr, bot) != "join" || e.hs.Membership(nr, owner) != "leave" {
		t.Fatal("memberships of the new room")
	}
	silenced := stateContent(t, e, old, "m.room.power_levels", "")
	if silenced["invite"] != float64(50) || silenced["events_default"] != float64(50) {
		t.Fatalf("old room not silenced: %v", silenced)
	}
	if pub := e.mustOK(e.do("GET", "/_matrix/client/v3/directory/list/room/"+esc(nr), "", nil)); pub.str("visibility") != "public" {
		t.Fatal("directory listing not moved")
	}
	// The appservice hears all of it, the tombstone included.
	var tombID string
	for _, ev := range e.hs.Timeline(old) {
		if ev.Type == "m.room.tombstone" {
			tombID = ev.EventID
		}
	}
	if err := e.hs.WaitDelivered(ctxT(t), tombID); err != nil {
		t.Fatal(err)
	}
	// The owner, still an admin, joins the replacement and moderates there.
	e.mustOK(e.do("POST", "/_matrix/client/v3/join/"+esc(nr), otok, map[string]any{}))
	e.mustOK(e.do("POST", "/_matrix/client/v3/rooms/"+esc(nr)+"/unban", otok, map[string]any{"user_id": spammer}))
	wantErr(t, e.do("POST", "/_matrix/client/v3/rooms/"+esc(nr)+"/kick", otok, map[string]any{"user_id": bot}), 403, "M_FORBIDDEN")
}

func TestUpgradeKeepsThePredecessorEventBeforeV12(t *testing.T) {
	e := startEnv(t, Dendrite)
	alice, atok := e.user("alice")
	old := e.createRoom(atok, map[string]any{})
	nr := e.mustOK(e.upgrade(atok, old, map[string]any{"new_version": "11", "additional_creators": []string{"@x:y"}})).str("replacement_room")
	if !strings.HasSuffix(nr, ":"+testServer) {
		t.Fatalf("v11 room id %q", nr)
	}
	tl := e.hs.Timeline(old)
	tomb := tl[len(tl)-2] // then the silencing power levels
	create := stateContent(t, e, nr, "m.room.create", "")
	if tomb.Type != "m.room.tombstone" || create["predecessor"].(map[string]any)["event_id"] != tomb.EventID || create["additional_creators"] != nil {
		t.Fatalf("create %v, tombstone %+v", create, tomb)
	}
	if e.hs.PowerLevel(nr, alice) != 100 || e.hs.Creators(nr) != nil {
		t.Fatal("upgrader's level in the v11 replacement")
	}
}

// Rules from the homeservers' shared conformance suite (Complement) for
// who ends up a creator and who stays in users.
func TestUpgradeCreatorsAndUsers(t *testing.T) {
	tests := []struct {
		name          string
		from          string
		levels        map[string]int // set by the creator, alice
		tombstone     int            // m.room.tombstone level alice sets, if any
		upgrader      string
		extra         []string
		wantCreators  []string
		wantUsers     map[string]float64
		wantForbidden bool
	}{
		{name: "admin upgrades v11 to v12", from: "11", levels: map[string]int{"bob": 100}, upgrader: "bob",
			wantCreators: []string{"bob"}, wantUsers: map[string]float64{}},
		{name: "admin upgrades v11 to v12, moderators stay", from: "11", levels: map[string]int{"bob": 100, "charlie": 100}, upgrader: "bob",
			wantCreators: []string{"bob"}, wantUsers: map[string]float64{"charlie": 100}},
		{name: "v12 to v12 with another creator", from: "12", levels: map[string]int{"bob": 150, "charlie": 50}, upgrader: "bob", extra: []string{"charlie"},
			wantCreators: []string{"bob", "charlie"}, wantUsers: map[string]float64{}},
		{name: "creator of v11 names an additional creator", from: "11", levels: map[string]int{"alice": 100, "bob": 100, "charlie": 50}, upgrader: "alice", extra: []string{"bob"},
			wantCreators: []string{"alice", "bob"}, wantUsers: map[string]float64{"charlie": 50}},
		{name: "v12 admin below the tombstone level", from: "12", levels: map[string]int{"bob": 100}, tombstone: 150, upgrader: "bob", wantForbidden: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := startEnv(t, Synapse)
			toks := map[string]string{}
			for _, lp := range []string{"alice", "bob", "charlie"} {
				_, toks[lp] = e.user(lp)
			}
			uid := func(lp string) string { return "@" + lp + ":" + testServer }
			room := e.createRoom(toks["alice"], map[string]any{"room_version": tc.from, "preset": "public_chat"})
			for _, lp := range []string{"bob", "charlie"} {
				e.mustOK(e.do("POST", "/_matrix/client/v3/join/"+esc(room), toks[lp], map[string]any{}))
			}
			users := map[string]any{}
			for lp, l := range tc.levels {
				users[uid(lp)] = l
			}
			content := map[string]any{"users": users}
			if tc.tombstone != 0 {
				content["events"] = map[string]any{"m.room.tombstone": tc.tombstone}
			}
			e.mustOK(e.do("PUT", "/_matrix/client/v3/rooms/"+esc(room)+"/state/m.room.power_levels/", toks["alice"], content))
			body := map[string]any{"new_version": "12"}
			if tc.extra != nil {
				var ids []string
				for _, lp := range tc.extra {
					ids = append(ids, uid(lp))
				}
				body["additional_creators"] = ids
			}
			r := e.upgrade(toks[tc.upgrader], room, body)
			if tc.wantForbidden {
				wantErr(t, r, 403, "M_FORBIDDEN")
				if len(e.hs.Rooms()) != 1 {
					t.Fatal("a refused upgrade created a room")
				}
				return
			}
			nr := e.mustOK(r).str("replacement_room")
			var want []string
			for _, lp := range tc.wantCreators {
				want = append(want, uid(lp))
			}
			if got := e.hs.Creators(nr); !slices.Equal(got, want) {
				t.Fatalf("creators %v, want %v", got, want)
			}
			got := usersOf(t, e, nr)
			if len(got) != len(tc.wantUsers) {
				t.Fatalf("users %v, want %v", got, tc.wantUsers)
			}
			for lp, l := range tc.wantUsers {
				if got[uid(lp)] != l {
					t.Fatalf("users %v, want %v", got, tc.wantUsers)
				}
			}
		})
	}
}

func TestUpgradeRefusals(t *testing.T) {
	e := startEnv(t, Synapse)
	_, atok := e.user("alice")
	_, btok := e.user("bob")
	room := e.createRoom(atok, map[string]any{})
	wantErr(t, e.upgrade(atok, room, map[string]any{}), 400, "M_MISSING_PARAM")
	wantErr(t, e.upgrade(atok, room, map[string]any{"new_version": "13"}), 400, "M_UNSUPPORTED_ROOM_VERSION")
	wantErr(t, e.upgrade(atok, room, map[string]any{"new_version": 12}), 400, "M_UNSUPPORTED_ROOM_VERSION")
	wantErr(t, e.upgrade(atok, room, map[string]any{"new_version": "12", "additional_creators": "bob"}), 400, "M_BAD_JSON")
	wantErr(t, e.upgrade(atok, "!nope:"+testServer, map[string]any{"new_version": "12"}), 404, "M_NOT_FOUND")
	wantErr(t, e.upgrade(btok, room, map[string]any{"new_version": "12"}), 403, "M_FORBIDDEN")
	if len(e.hs.Rooms()) != 1 {
		t.Fatal("refused upgrades created rooms")
	}
	if _, err := e.hs.Do(context.Background(), atok, "POST", "/_matrix/client/v3/rooms/"+esc(room)+"/upgrade", map[string]any{"new_version": "12"}); err != nil {
		t.Fatal(err)
	}
}
