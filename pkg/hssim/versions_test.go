package hssim

import (
	"context"
	"encoding/base64"
	"strings"
	"testing"
	"time"

	"github.com/cactus-comments/appservice/pkg/event"
)

var allModes = []Mode{Synapse, Dendrite, Conduit}

func withVersion(v string) func(*Options) { return func(o *Options) { o.RoomVersion = v } }

func TestRoomVersionDefaultsPerMode(t *testing.T) {
	for _, tc := range []struct {
		mode Mode
		opt  string
		want string
	}{
		{Synapse, "", "10"}, {Dendrite, "", "10"}, {Conduit, "", "12"},
		{Synapse, "12", "12"}, {Conduit, "11", "11"},
	} {
		t.Run(string(tc.mode)+"/"+tc.opt, func(t *testing.T) {
			e := startEnv(t, tc.mode, withVersion(tc.opt))
			_, atok := e.user("alice")
			id := e.createRoom(atok, map[string]any{})
			if got := stateContent(t, e, id, "m.room.create", "")["room_version"]; got != tc.want {
				t.Fatalf("room_version %v, want %s", got, tc.want)
			}
			if e.hs.RoomVersionOf(id) != tc.want || e.hs.RoomVersion() != tc.want {
				t.Fatalf("RoomVersionOf %q, RoomVersion %q", e.hs.RoomVersionOf(id), e.hs.RoomVersion())
			}
			caps := e.mustOK(e.do("GET", "/_matrix/client/v3/capabilities", atok, nil))
			rv := caps.Body["capabilities"].(map[string]any)["m.room_versions"].(map[string]any)
			if rv["default"] != tc.want || rv["available"].(map[string]any)["12"] != "stable" {
				t.Fatalf("capabilities %s", caps.Raw)
			}
		})
	}
	if _, err := Start(context.Background(), Options{RoomVersion: "13"}); err == nil {
		t.Fatal("an unsupported Options.RoomVersion was accepted")
	}
}

// An operator changing default_room_version: rooms made before keep their
// version, new ones and the capabilities follow.
func TestSetRoomVersion(t *testing.T) {
	e := startEnv(t, Synapse)
	_, atok := e.user("alice")
	before := e.createRoom(atok, map[string]any{})
	if err := e.hs.SetRoomVersion("13"); err == nil {
		t.Fatal("SetRoomVersion accepted an unsupported version")
	}
	if err := e.hs.SetRoomVersion("12"); err != nil {
		t.Fatal(err)
	}
	after := e.createRoom(atok, map[string]any{})
	if got := e.hs.RoomVersionOf(before); got != "10" {
		t.Errorf("room made before the change is version %q, want 10", got)
	}
	if got := e.hs.RoomVersionOf(after); got != "12" || strings.Contains(after, ":") {
		t.Errorf("room made after the change: %s of version %q, want a v12 room", after, got)
	}
	caps := e.mustOK(e.do("GET", "/_matrix/client/v3/capabilities", atok, nil))
	if rv := caps.Body["capabilities"].(map[string]any)["m.room_versions"].(map[string]any); rv["default"] != "12" {
		t.Errorf("capabilities default %v, want 12", rv["default"])
	}
	if got := e.createRoom(atok, map[string]any{"room_version": "11"}); e.hs.RoomVersionOf(got) != "11" {
		t.Errorf("an explicit room_version is still obeyed: got %q", e.hs.RoomVersionOf(got))
	}
}

func TestCreateRoomRefusesUnknownVersions(t *testing.T) {
	e := startEnv(t, Synapse)
	_, atok := e.user("alice")
	for _, v := range []any{"13", "", "org.matrix.hydra.11", " 10", "010", "1.0"} {
		r := e.do("POST", "/_matrix/client/v3/createRoom", atok, map[string]any{"room_version": v})
		wantErr(t, r, 400, "M_UNSUPPORTED_ROOM_VERSION")
	}
	wantErr(t, e.do("POST", "/_matrix/client/v3/createRoom", atok, map[string]any{"room_version": 12}), 400, "M_BAD_JSON")
	if n := len(e.hs.Rooms()); n != 0 {
		t.Fatalf("%d rooms created by refused requests", n)
	}
}

func TestRoomIDAndCreateContentPerVersion(t *testing.T) {
	e := startEnv(t, Synapse)
	alice, atok := e.user("alice")
	for _, v := range []string{"10", "11", "12"} {
		t.Run(v, func(t *testing.T) {
			id := e.createRoom(atok, map[string]any{"room_version": v})
			create := e.hs.Timeline(id)[0]
			c := contentMap(&create)
			_, hasCreator := c["creator"]
			if hasCreator != (v == "10") {
				t.Fatalf("creator in the create content of v%s: %v", v, c)
			}
			if v != "12" {
				if !strings.HasSuffix(id, ":"+testServer) {
					t.Fatalf("room id %q lacks the server name", id)
				}
				return
			}
			if id != "!"+strings.TrimPrefix(create.EventID, "$") {
				t.Fatalf("v12 room id %q is not the create event id %q", id, create.EventID)
			}
			hash := strings.TrimPrefix(id, "!")
			if b, err := base64.RawURLEncoding.DecodeString(hash); len(hash) != 43 || err != nil || len(b) != 32 {
				t.Fatalf("v12 room id %q is not a url-safe base64 sha256 (%v)", id, err)
			}
			if got := e.hs.Creators(id); len(got) != 1 || got[0] != alice {
				t.Fatalf("creators %v", got)
			}
		})
	}
}

func TestDefaultPowerLevelsPerVersion(t *testing.T) {
	for _, mode := range allModes {
		e := startEnv(t, mode)
		alice, atok := e.user("alice")
		for _, v := range []string{"10", "11", "12"} {
			id := e.createRoom(atok, map[string]any{"room_version": v})
			pl := stateContent(t, e, id, "m.room.power_levels", "")
			users := pl["users"].(map[string]any)
			tomb := pl["events"].(map[string]any)["m.room.tombstone"]
			if v == "12" {
				if len(users) != 0 || tomb != float64(150) || e.hs.PowerLevel(id, alice) != CreatorLevel {
					t.Fatalf("%s v12: users %v, tombstone %v, creator level %d", mode, users, tomb, e.hs.PowerLevel(id, alice))
				}
				continue
			}
			if users[alice] != float64(100) || tomb != float64(100) || e.hs.PowerLevel(id, alice) != 100 {
				t.Fatalf("%s v%s: users %v, tombstone %v", mode, v, users, tomb)
			}
		}
	}
}

// wantCreatorRefused checks each server's answer to power levels that
// list a creator of a v12 room.
func wantCreatorRefused(t *testing.T, mode Mode, r resp, creator string) {
	t.Helper()
	switch mode {
	case Synapse:
		wantErr(t, r, 400, "M_UNKNOWN")
		if want := "Creator user " + creator + " must not appear in content.users"; r.str("error") != want {
			t.Fatalf("message %q, want %q", r.str("error"), want)
		}
	case Conduit:
		wantErr(t, r, 400, "M_INVALID_PARAM")
	case Dendrite:
		wantErr(t, r, 403, "M_FORBIDDEN")
	}
}

func TestV12CreatorsNeverInPowerLevelUsers(t *testing.T) {
	for _, mode := range allModes {
		t.Run(string(mode), func(t *testing.T) {
			e := startEnv(t, mode, withVersion("12"))
			alice, atok := e.user("alice")
			bob, btok := e.user("bob")
			carol, _ := e.user("carol")
			id := e.createRoom(atok, map[string]any{"preset": "public_chat", "creation_content": map[string]any{"additional_creators": []string{carol}}})
			e.mustOK(e.do("POST", "/_matrix/client/v3/join/"+esc(id), btok, map[string]any{}))
			put := func(tok string, users map[string]any) resp {
				return e.do("PUT", "/_matrix/client/v3/rooms/"+esc(id)+"/state/m.room.power_levels/", tok, map[string]any{"users": users})
			}
			wantCreatorRefused(t, mode, put(atok, map[string]any{alice: 100}), alice)
			wantCreatorRefused(t, mode, put(atok, map[string]any{carol: 50}), carol)
			// A creator may give anyone any level, up to the JSON maximum.
			e.mustOK(put(atok, map[string]any{bob: 1<<53 - 1}))
			// Nobody, however high, may kick, ban or demote a creator.
			wantErr(t, e.do("POST", "/_matrix/client/v3/rooms/"+esc(id)+"/kick", btok, map[string]any{"user_id": alice}), 403, "M_FORBIDDEN")
			wantErr(t, e.do("POST", "/_matrix/client/v3/rooms/"+esc(id)+"/ban", btok, map[string]any{"user_id": alice}), 403, "M_FORBIDDEN")
			wantCreatorRefused(t, mode, put(btok, map[string]any{bob: 1<<53 - 1, alice: 0}), alice)
			// Creators cannot remove each other either.
			e.mustOK(e.do("POST", "/_matrix/client/v3/join/"+esc(id), mustToken(t, e, "carol"), map[string]any{}))
			wantErr(t, e.do("POST", "/_matrix/client/v3/rooms/"+esc(id)+"/ban", atok, map[string]any{"user_id": carol}), 403, "M_FORBIDDEN")
			// But a creator removes an admin at the JSON maximum.
			e.mustOK(e.do("POST", "/_matrix/client/v3/rooms/"+esc(id)+"/ban", atok, map[string]any{"user_id": bob}))
			if e.hs.Membership(id, alice) != "join" || e.hs.Membership(id, carol) != "join" || e.hs.Membership(id, bob) != "ban" {
				t.Fatal("memberships after the refused removals")
			}
		})
	}
}

func mustToken(t *testing.T, e *env, localpart string) string {
	t.Helper()
	tok, ok := e.hs.LoginToken("@" + localpart + ":" + testServer)
	if !ok {
		t.Fatalf("no session for %s", localpart)
	}
	return tok
}

// Power levels naming the creator in a v12 createRoom are refused, and
// each server leaves behind what it does: Synapse the room with its
// create event, join and alias; continuwuity the room without the alias;
// Dendrite nothing.
func TestV12CreateRoomWithCreatorInUsers(t *testing.T) {
	for _, mode := range allModes {
		for _, via := range []string{"override", "initial_state"} {
			t.Run(string(mode)+"/"+via, func(t *testing.T) {
				e := startEnv(t, mode, withVersion("12"))
				registerBot(t, e)
				bot := "@cactusbot:" + testServer
				owner, _ := e.user("owner")
				pl := map[string]any{"users": map[string]any{bot: 100, owner: 100}}
				body := map[string]any{"room_alias_name": "comments_x", "invite": []string{owner}}
				if via == "override" {
					body["power_level_content_override"] = pl
				} else {
					body["initial_state"] = []any{map[string]any{"type": "m.room.power_levels", "content": pl}}
				}
				wantCreatorRefused(t, mode, e.do("POST", "/_matrix/client/v3/createRoom", testASToken, body), bot)
				rooms := e.hs.Rooms()
				id, aliased := e.hs.ResolveAliasLocal("#comments_x:" + testServer)
				switch mode {
				case Dendrite:
					if len(rooms) != 0 || aliased {
						t.Fatalf("Dendrite left rooms %v, alias %v", rooms, aliased)
					}
				case Synapse:
					if len(rooms) != 1 || !aliased || id != rooms[0] {
						t.Fatalf("Synapse leaves the room and its alias: rooms %v, alias -> %q", rooms, id)
					}
				case Conduit:
					if len(rooms) != 1 || aliased {
						t.Fatalf("continuwuity leaves the room without alias: rooms %v, alias %v", rooms, aliased)
					}
				}
				for _, r := range rooms {
					if tl := e.hs.Timeline(r); len(tl) != 2 || tl[1].Type != "m.room.member" || e.hs.Membership(r, owner) != "leave" {
						t.Fatalf("half-made room has %d events", len(tl))
					}
				}
				// Without the creator the same request works, the bot
				// implied by being the creator.
				delete(pl["users"].(map[string]any), bot)
				if mode == Synapse {
					body["room_alias_name"] = "comments_y"
				}
				id = e.createRoom(testASToken, body)
				if e.hs.PowerLevel(id, bot) != CreatorLevel || e.hs.PowerLevel(id, owner) != 100 || e.hs.Membership(id, owner) != "invite" {
					t.Fatal("room made without the creator in users")
				}
			})
		}
	}
}

func TestSynapseOverrideMustNameTheCreatorBeforeV12(t *testing.T) {
	e := startEnv(t, Synapse)
	_, atok := e.user("alice")
	bob, _ := e.user("bob")
	body := map[string]any{"power_level_content_override": map[string]any{"users": map[string]any{bob: 100}}}
	r := e.do("POST", "/_matrix/client/v3/createRoom", atok, body)
	wantErr(t, r, 400, "M_UNKNOWN")
	if len(e.hs.Rooms()) != 0 {
		t.Fatal("room created")
	}
	body["room_version"] = "12"
	id := e.createRoom(atok, body)
	if e.hs.PowerLevel(id, bob) != 100 {
		t.Fatal("v12 override without the creator not applied")
	}
}

func TestAdditionalCreators(t *testing.T) {
	e := startEnv(t, Synapse, withVersion("12"))
	alice, atok := e.user("alice")
	bob, _ := e.user("bob")
	carol, _ := e.user("carol")
	for _, bad := range []any{"not-an-array", []any{carol, 42}, []any{carol, "not-a-user-id"}, []any{"@invalid:dom$ain$.com"}} {
		r := e.do("POST", "/_matrix/client/v3/createRoom", atok, map[string]any{"creation_content": map[string]any{"additional_creators": bad}})
		wantErr(t, r, 400, "M_BAD_JSON")
	}
	id := e.createRoom(atok, map[string]any{"creation_content": map[string]any{"additional_creators": []string{carol}}})
	if got := e.hs.Creators(id); len(got) != 2 || got[0] != alice || got[1] != carol || e.hs.PowerLevel(id, carol) != CreatorLevel {
		t.Fatalf("creators %v", got)
	}
	// A DM (trusted_private_chat) makes its invitees creators in v12...
	dm := e.createRoom(atok, map[string]any{"preset": "trusted_private_chat", "invite": []string{bob}, "is_direct": true,
		"creation_content": map[string]any{"additional_creators": []string{carol}}})
	if got := e.hs.Creators(dm); len(got) != 3 || got[1] != carol || got[2] != bob {
		t.Fatalf("DM creators %v", got)
	}
	if users := stateContent(t, e, dm, "m.room.power_levels", "")["users"].(map[string]any); len(users) != 0 {
		t.Fatalf("DM power levels name creators: %v", users)
	}
	// ...and admins before it; there additional_creators means nothing.
	dm10 := e.createRoom(atok, map[string]any{"room_version": "10", "preset": "trusted_private_chat", "invite": []string{bob},
		"creation_content": map[string]any{"additional_creators": []string{carol}}})
	if e.hs.PowerLevel(dm10, bob) != 100 || e.hs.PowerLevel(dm10, carol) != 0 || e.hs.Creators(dm10) != nil {
		t.Fatal("v10 trusted private chat")
	}
}

func TestInviteStateCarriesTheCreateEvent(t *testing.T) {
	for _, v := range []string{"10", "11", "12"} {
		e := startEnv(t, Synapse, withVersion(v))
		registerBot(t, e)
		bob, _ := e.user("bob")
		id := e.createRoom(testASToken, map[string]any{"name": "N", "invite": []string{bob}})
		var invite *event.Event
		for _, ev := range e.hs.Timeline(id) {
			if ev.Type == "m.room.member" && *ev.StateKey == bob {
				invite = &ev
			}
		}
		if invite == nil {
			t.Fatal("no invite")
		}
		stripped, _ := unsignedOf(t, *invite)["invite_room_state"].([]any)
		types := map[string]bool{}
		for _, x := range stripped {
			st := x.(map[string]any)
			types[st["type"].(string)] = true
			if st["type"] == "m.room.create" && st["sender"] != "@cactusbot:"+testServer {
				t.Fatalf("v%s: create in invite state lacks its sender: %v", v, st)
			}
		}
		for _, want := range []string{"m.room.create", "m.room.join_rules", "m.room.name", "m.room.member"} {
			if !types[want] {
				t.Fatalf("v%s: invite state lacks %s: %v", v, want, types)
			}
		}
	}
}

// Synapse up to 1.157.1: two v12 createRooms by the same user at once
// compute the same room id; the second answers 500 and creates nothing.
func TestV12CreateCollisions(t *testing.T) {
	e := startEnv(t, Synapse, withVersion("12"), func(o *Options) { o.V12CreateCollisions = true })
	registerBot(t, e)
	_, atok := e.user("alice")
	e.hs.SetLatency(EPCreateRoom, time.Minute)
	ctx, cancel := context.WithCancel(ctxT(t))
	first := make(chan error, 1)
	go func() {
		_, err := e.hs.Do(ctx, testASToken, "POST", "/_matrix/client/v3/createRoom", map[string]any{"room_alias_name": "comments_a"})
		first <- err
	}()
	if err := e.hs.Wait(ctxT(t), func() bool { return len(e.hs.Rooms()) == 1 }); err != nil {
		t.Fatal(err)
	}
	e.hs.SetLatency(EPCreateRoom, 0)
	wantErr(t, e.do("POST", "/_matrix/client/v3/createRoom", testASToken, map[string]any{"room_alias_name": "comments_b"}), 500, "M_UNKNOWN")
	e.createRoom(atok, map[string]any{}) // another user is not affected
	if _, ok := e.hs.ResolveAliasLocal("#comments_b:" + testServer); ok || len(e.hs.Rooms()) != 2 {
		t.Fatalf("the colliding createRoom left something: rooms %v", e.hs.Rooms())
	}
	cancel()
	<-first
	if err := e.hs.Wait(ctxT(t), func() bool {
		_, err := e.hs.Do(ctxT(t), testASToken, "POST", "/_matrix/client/v3/createRoom", map[string]any{"room_alias_name": "comments_b"})
		return err == nil
	}); err != nil {
		t.Fatalf("createRoom still colliding once the first was answered: %v", err)
	}
	// Off by default, and only for v12 rooms.
	e2 := startEnv(t, Synapse, withVersion("12"))
	e2.hs.SetLatency(EPCreateRoom, time.Minute)
	ctx2, cancel2 := context.WithCancel(ctxT(t))
	defer cancel2()
	_, btok := e2.user("bob")
	go func() { _, _ = e2.hs.Do(ctx2, btok, "POST", "/_matrix/client/v3/createRoom", map[string]any{}) }()
	if err := e2.hs.Wait(ctxT(t), func() bool { return len(e2.hs.Rooms()) == 1 }); err != nil {
		t.Fatal(err)
	}
	e2.hs.SetLatency(EPCreateRoom, 0)
	e2.createRoom(btok, map[string]any{})
}

func TestCheckPowerLevelsChange(t *testing.T) {
	const bot, owner = "@bot:x", "@owner:x"
	j := func(s string) []byte { return []byte(s) }
	tests := []struct {
		version   string
		sender    string
		cur, next string
		ok        bool
	}{
		{"10", bot, ``, `{"users":{"@bot:x":100,"@owner:x":100}}`, true},
		{"12", bot, ``, `{"users":{"@bot:x":100}}`, false},
		{"12", bot, ``, `{"users":{"@owner:x":100}}`, true},
		{"12", bot, `{"users":{"@owner:x":100}}`, `{"users":{"@owner:x":0}}`, true},
		{"10", bot, `{"users":{"@bot:x":100,"@owner:x":100}}`, `{"users":{"@bot:x":100,"@owner:x":0}}`, false},
		{"12", owner, `{"users":{"@owner:x":100}}`, `{"users":{"@owner:x":100,"@bot:x":0}}`, false},
		{"12", owner, `{"users":{"@owner:x":100},"events":{"m.room.power_levels":150}}`, `{"users":{"@owner:x":100,"@a:x":5}}`, false},
		{"10", bot, ``, `{"users":{"not a user":5}}`, false},
		{"10", bot, ``, `{"ban":"50"}`, false},
		{"9", bot, ``, `{"ban":"50"}`, true},
		{"13", bot, ``, `{}`, false},
	}
	for _, tc := range tests {
		var cur []byte
		if tc.cur != "" {
			cur = j(tc.cur)
		}
		err := CheckPowerLevelsChange(tc.version, bot, nil, tc.sender, cur, j(tc.next))
		if (err == nil) != tc.ok {
			t.Errorf("v%s %s: %s -> %s: err %v, want ok=%v", tc.version, tc.sender, tc.cur, tc.next, err, tc.ok)
		}
	}
}
