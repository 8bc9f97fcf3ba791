package hssim

import (
	"net/http"
	"strings"
	"testing"
)

func TestRegisterAndAuth(t *testing.T) {
	e := startEnv(t, Synapse)
	reg := "/_matrix/client/v3/register"
	tests := []struct {
		name   string
		path   string
		token  string
		body   any
		status int
		code   string
		check  func(t *testing.T, r resp)
	}{
		{name: "password without auth asks for the dummy stage", path: reg, body: map[string]any{"username": "alice", "password": "x"}, status: 401, code: "M_FORBIDDEN",
			check: func(t *testing.T, r resp) {
				if r.Body["flows"] == nil || r.str("session") == "" {
					t.Fatalf("no UIA flows: %s", r.Raw)
				}
			}},
		{name: "password with dummy auth", path: reg, body: map[string]any{"username": "alice", "password": "x", "auth": map[string]any{"type": "m.login.dummy"}}, status: 200,
			check: func(t *testing.T, r resp) {
				if r.str("user_id") != "@alice:example.org" || r.str("access_token") == "" || r.str("device_id") == "" {
					t.Fatalf("bad answer %s", r.Raw)
				}
			}},
		{name: "taken", path: reg, body: map[string]any{"username": "alice", "password": "x", "auth": map[string]any{"type": "m.login.dummy"}}, status: 400, code: "M_USER_IN_USE"},
		{name: "password in exclusive namespace", path: reg, body: map[string]any{"username": "ascomments_1", "password": "x"}, status: 400, code: "M_EXCLUSIVE"},
		{name: "bad username", path: reg, body: map[string]any{"username": "Bad Name", "password": "x"}, status: 400, code: "M_INVALID_USERNAME"},
		{name: "as type without token", path: reg, body: map[string]any{"type": asRegistrationType, "username": "cactusbot"}, status: 400, code: "M_MISSING_TOKEN"},
		{name: "as registers its sender", path: reg, token: testASToken, body: map[string]any{"type": asRegistrationType, "username": "cactusbot", "inhibit_login": true}, status: 200,
			check: func(t *testing.T, r resp) {
				if r.str("user_id") != "@cactusbot:example.org" || r.Body["access_token"] != nil {
					t.Fatalf("inhibit_login ignored or wrong user: %s", r.Raw)
				}
			}},
		{name: "as sender again", path: reg, token: testASToken, body: map[string]any{"type": asRegistrationType, "username": "cactusbot"}, status: 400, code: "M_USER_IN_USE"},
		{name: "as outside its namespace", path: reg, token: testASToken, body: map[string]any{"type": asRegistrationType, "username": "bob"}, status: 400, code: "M_EXCLUSIVE"},
		{name: "as namespace user", path: reg, token: testASToken, body: map[string]any{"type": asRegistrationType, "username": "ascomments_1"}, status: 200},
		{name: "guest", path: reg + "?kind=guest", body: map[string]any{}, status: 200, check: func(t *testing.T, r resp) {
			if r.str("access_token") == "" {
				t.Fatalf("guest without token: %s", r.Raw)
			}
		}},
		{name: "not json", path: reg, body: "{nope", status: 400, code: "M_NOT_JSON"},
		{name: "not an object", path: reg, body: "[1]", status: 400, code: "M_BAD_JSON"},
		{name: "wrong type", path: reg, body: `{"username": 5}`, status: 400, code: "M_BAD_JSON"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := e.do("POST", tc.path, tc.token, tc.body)
			if tc.code != "" {
				wantErr(t, r, tc.status, tc.code)
			} else if r.Status != tc.status {
				t.Fatalf("status %d: %s", r.Status, r.Raw)
			}
			if tc.check != nil {
				tc.check(t, r)
			}
		})
	}
}

func TestDendriteCreatesSenderAtStartup(t *testing.T) {
	e := startEnv(t, Dendrite)
	r := e.do("POST", "/_matrix/client/v3/register", testASToken, map[string]any{"type": asRegistrationType, "username": "cactusbot"})
	wantErr(t, r, 400, "M_USER_IN_USE")
}

func TestLoginWhoamiProfile(t *testing.T) {
	e := startEnv(t, Synapse)
	e.user("alice")
	login := e.do("POST", "/_matrix/client/v3/login", "", map[string]any{"type": "m.login.password", "identifier": map[string]any{"type": "m.id.user", "user": "alice"}, "password": "pw-alice"})
	e.mustOK(login)
	tok := login.str("access_token")
	wantErr(t, e.do("POST", "/_matrix/client/v3/login", "", map[string]any{"type": "m.login.password", "user": "alice", "password": "wrong"}), 403, "M_FORBIDDEN")

	who := e.mustOK(e.do("GET", "/_matrix/client/v3/account/whoami", tok, nil))
	if who.str("user_id") != "@alice:example.org" {
		t.Fatalf("whoami %s", who.Raw)
	}
	e.mustOK(e.do("PUT", "/_matrix/client/v3/profile/"+esc("@alice:example.org")+"/displayname", tok, map[string]any{"displayname": "Alice"}))
	e.mustOK(e.do("PUT", "/_matrix/client/v3/profile/"+esc("@alice:example.org")+"/avatar_url", tok, map[string]any{"avatar_url": "mxc://x/y"}))
	p := e.mustOK(e.do("GET", "/_matrix/client/v3/profile/"+esc("@alice:example.org"), "", nil))
	if p.str("displayname") != "Alice" || p.str("avatar_url") != "mxc://x/y" {
		t.Fatalf("profile %s", p.Raw)
	}
	wantErr(t, e.do("PUT", "/_matrix/client/v3/profile/"+esc("@bob:example.org")+"/displayname", tok, map[string]any{"displayname": "B"}), 400, "M_FORBIDDEN") // Synapse: AuthError(400)
	wantErr(t, e.do("GET", "/_matrix/client/v3/profile/"+esc("@nobody:example.org"), "", nil), 404, "M_NOT_FOUND")
}

func TestTokensAndMasquerade(t *testing.T) {
	e := startEnv(t, Synapse)
	e.user("alice")
	e.mustOK(e.do("POST", "/_matrix/client/v3/register", testASToken, map[string]any{"type": asRegistrationType, "username": "ascomments_known"}))
	whoami := "/_matrix/client/v3/account/whoami"
	tests := []struct {
		name, path, token string
		status            int
		code, user        string
	}{
		{"no token", whoami, "", 401, "M_MISSING_TOKEN", ""},
		{"unknown token", whoami, "nope", 401, "M_UNKNOWN_TOKEN", ""},
		{"as token is the sender", whoami, testASToken, 200, "", "@cactusbot:example.org"},
		{"sender explicitly, never registered", whoami + "?user_id=" + esc("@cactusbot:example.org"), testASToken, 200, "", "@cactusbot:example.org"},
		{"registered namespace user", whoami + "?user_id=" + esc("@ascomments_known:example.org"), testASToken, 200, "", "@ascomments_known:example.org"},
		{"unregistered namespace user", whoami + "?user_id=" + esc("@ascomments_new:example.org"), testASToken, 403, "M_FORBIDDEN", ""},
		{"outside namespace", whoami + "?user_id=" + esc("@alice:example.org"), testASToken, 403, "M_FORBIDDEN", ""},
		{"legacy query token", whoami + "?access_token=" + testASToken, "", 200, "", "@cactusbot:example.org"},
		{"bad token where none is needed", "/_matrix/client/v3/directory/room/" + esc("#x:example.org"), "nope", 401, "M_UNKNOWN_TOKEN", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := e.do("GET", tc.path, tc.token, nil)
			if tc.code != "" {
				wantErr(t, r, tc.status, tc.code)
				return
			}
			if r.Status != tc.status || r.str("user_id") != tc.user {
				t.Fatalf("got %d %s", r.Status, r.Raw)
			}
		})
	}
}

func TestUnknownEndpointsAndMethods(t *testing.T) {
	e := startEnv(t, Synapse)
	wantErr(t, e.do("GET", "/_matrix/client/v3/nope", "", nil), 404, "M_UNRECOGNIZED")
	wantErr(t, e.do("GET", "/_matrix/client/v3/createRoom", testASToken, nil), http.StatusMethodNotAllowed, "M_UNRECOGNIZED")
	if e.hs.Calls(EPUnknown) != 1 || e.hs.Calls(EPCreateRoom) != 1 {
		t.Fatalf("counters: unknown=%d createRoom=%d", e.hs.Calls(EPUnknown), e.hs.Calls(EPCreateRoom))
	}
}

func TestProfileLimitsPerMode(t *testing.T) {
	long := strings.Repeat("é", 257)
	for _, tc := range []struct {
		mode               Mode
		tooLong, otherUser int // statuses
	}{
		{Synapse, 400, 400}, {Dendrite, 200, 403}, {Conduit, 200, 403},
	} {
		t.Run(string(tc.mode), func(t *testing.T) {
			e := startEnv(t, tc.mode)
			_, atok := e.user("alice")
			e.user("bob")
			p := "/_matrix/client/v3/profile/" + esc("@alice:example.org")
			e.mustOK(e.do("PUT", p+"/displayname", atok, map[string]any{"displayname": strings.Repeat("é", 256)}))
			if r := e.do("PUT", p+"/displayname", atok, map[string]any{"displayname": long}); r.Status != tc.tooLong {
				t.Fatalf("257-character display name: %d %s", r.Status, r.Raw)
			}
			if r := e.do("PUT", p+"/avatar_url", atok, map[string]any{"avatar_url": "mxc://example.org/" + strings.Repeat("a", 1000)}); r.Status != tc.tooLong {
				t.Fatalf("over-long avatar URL: %d %s", r.Status, r.Raw)
			}
			r := e.do("PUT", "/_matrix/client/v3/profile/"+esc("@bob:example.org")+"/displayname", atok, map[string]any{"displayname": "B"})
			if r.Status != tc.otherUser || r.errcode() != "M_FORBIDDEN" {
				t.Fatalf("setting another user's name: %d %s", r.Status, r.Raw)
			}
		})
	}
}
