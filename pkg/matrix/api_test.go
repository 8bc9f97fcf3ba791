package matrix

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"reflect"
	"testing"
	"time"

	"github.com/cactus-comments/appservice/pkg/mxid"
)

func TestEndpoints(t *testing.T) {
	ctx := context.Background()
	room := mxid.MustRoomID("!r:ex.org")
	bob := mxid.MustUserID("@bob:ex.org")
	const roomPath = "/_matrix/client/v3/rooms/%21r%3Aex.org"
	tests := []struct {
		name       string
		call       func(c *Client) (any, error)
		wantMethod string
		wantURI    string
		wantBody   string // JSON, compared structurally; "" means no body
		status     int
		resp       string
		want       any
		wantErr    func(error) bool
	}{
		{
			name:       "register created",
			call:       func(c *Client) (any, error) { return c.RegisterAppserviceUser(ctx, "cactusbot") },
			wantMethod: "POST", wantURI: "/_matrix/client/v3/register",
			wantBody: `{"type":"m.login.application_service","username":"cactusbot","inhibit_login":true}`,
			status:   200, resp: `{"user_id":"@cactusbot:ex.org"}`,
			want: true,
		},
		{
			name:       "register existing",
			call:       func(c *Client) (any, error) { return c.RegisterAppserviceUser(ctx, "cactusbot") },
			wantMethod: "POST", wantURI: "/_matrix/client/v3/register",
			wantBody: `{"type":"m.login.application_service","username":"cactusbot","inhibit_login":true}`,
			status:   400, resp: `{"errcode":"M_USER_IN_USE","error":"User ID already taken."}`,
			want: false,
		},
		{
			name:       "register exclusive",
			call:       func(c *Client) (any, error) { return c.RegisterAppserviceUser(ctx, "other") },
			wantMethod: "POST", wantURI: "/_matrix/client/v3/register",
			wantBody: `{"type":"m.login.application_service","username":"other","inhibit_login":true}`,
			status:   400, resp: `{"errcode":"M_EXCLUSIVE","error":"not yours"}`,
			wantErr: func(err error) bool { return ErrCode(err) == CodeExclusive && IsPermanent(err) },
		},
		{
			name:       "whoami",
			call:       func(c *Client) (any, error) { u, err := c.Whoami(ctx); return u.String(), err },
			wantMethod: "GET", wantURI: "/_matrix/client/v3/account/whoami",
			status: 200, resp: `{"user_id":"@cactusbot:ex.org","is_guest":false}`,
			want: "@cactusbot:ex.org",
		},
		{
			name:       "whoami bad id",
			call:       func(c *Client) (any, error) { u, err := c.Whoami(ctx); return u.String(), err },
			wantMethod: "GET", wantURI: "/_matrix/client/v3/account/whoami",
			status: 200, resp: `{"user_id":"nobody"}`,
			wantErr: func(err error) bool { return errors.Is(err, mxid.ErrInvalid) },
		},
		{
			name:       "displayname",
			call:       func(c *Client) (any, error) { return nil, c.SetDisplayName(ctx, bob, "Bob") },
			wantMethod: "PUT", wantURI: "/_matrix/client/v3/profile/%40bob%3Aex.org/displayname",
			wantBody: `{"displayname":"Bob"}`, status: 200, resp: `{}`,
		},
		{
			name:       "avatar",
			call:       func(c *Client) (any, error) { return nil, c.SetAvatarURL(ctx, bob, "mxc://ex.org/abc") },
			wantMethod: "PUT", wantURI: "/_matrix/client/v3/profile/%40bob%3Aex.org/avatar_url",
			wantBody: `{"avatar_url":"mxc://ex.org/abc"}`, status: 200, resp: `{}`,
		},
		{
			name: "createRoom",
			call: func(c *Client) (any, error) {
				r, err := c.CreateRoom(ctx, &CreateRoomRequest{
					Visibility: VisibilityPrivate, RoomAliasName: "comments_blog_post1", Name: "blog comment section (post1)",
					CreationContent: map[string]any{"m.federate": true},
					InitialState: []StateEvent{
						{Type: "m.room.join_rules", Content: map[string]string{"join_rule": "public"}},
						{Type: "m.room.guest_access", Content: map[string]string{"guest_access": "can_join"}},
					},
					PowerLevelContentOverride: &PowerLevels{Ban: new(60), Users: map[string]int{"@o:ex.org": 100}},
				})
				return r.String(), err
			},
			wantMethod: "POST", wantURI: "/_matrix/client/v3/createRoom",
			wantBody: `{"visibility":"private","room_alias_name":"comments_blog_post1","name":"blog comment section (post1)",
				"creation_content":{"m.federate":true},
				"initial_state":[{"type":"m.room.join_rules","state_key":"","content":{"join_rule":"public"}},
				{"type":"m.room.guest_access","state_key":"","content":{"guest_access":"can_join"}}],
				"power_level_content_override":{"ban":60,"users":{"@o:ex.org":100}}}`,
			status: 200, resp: `{"room_id":"!new:ex.org"}`,
			want: "!new:ex.org",
		},
		{
			name:       "createRoom alias taken",
			call:       func(c *Client) (any, error) { r, err := c.CreateRoom(ctx, nil); return r.String(), err },
			wantMethod: "POST", wantURI: "/_matrix/client/v3/createRoom", wantBody: `{}`,
			status: 400, resp: `{"errcode":"M_ROOM_IN_USE","error":"Room alias already taken"}`,
			wantErr: IsRoomInUse,
		},
		{
			name:       "join",
			call:       func(c *Client) (any, error) { r, err := c.JoinRoom(ctx, "#a:ex.org"); return r.String(), err },
			wantMethod: "POST", wantURI: "/_matrix/client/v3/join/%23a%3Aex.org", wantBody: `{}`,
			status: 200, resp: `{"room_id":"!r:ex.org"}`, want: "!r:ex.org",
		},
		{
			name:       "leave",
			call:       func(c *Client) (any, error) { return nil, c.LeaveRoom(ctx, room, "") },
			wantMethod: "POST", wantURI: roomPath + "/leave", wantBody: `{}`, status: 200, resp: `{}`,
		},
		{
			name:       "invite",
			call:       func(c *Client) (any, error) { return nil, c.Invite(ctx, room, bob, "") },
			wantMethod: "POST", wantURI: roomPath + "/invite", wantBody: `{"user_id":"@bob:ex.org"}`, status: 200, resp: `{}`,
		},
		{
			name:       "kick",
			call:       func(c *Client) (any, error) { return nil, c.Kick(ctx, room, bob, "rude") },
			wantMethod: "POST", wantURI: roomPath + "/kick", wantBody: `{"user_id":"@bob:ex.org","reason":"rude"}`, status: 200, resp: `{}`,
		},
		{
			name:       "ban",
			call:       func(c *Client) (any, error) { return nil, c.Ban(ctx, room, bob, "spam") },
			wantMethod: "POST", wantURI: roomPath + "/ban", wantBody: `{"user_id":"@bob:ex.org","reason":"spam"}`, status: 200, resp: `{}`,
		},
		{
			name:       "ban forbidden",
			call:       func(c *Client) (any, error) { return nil, c.Ban(ctx, room, bob, "") },
			wantMethod: "POST", wantURI: roomPath + "/ban", wantBody: `{"user_id":"@bob:ex.org"}`,
			status: 403, resp: `{"errcode":"M_FORBIDDEN","error":"You don't have permission to ban"}`,
			wantErr: func(err error) bool { return IsForbidden(err) && IsPermanent(err) && !IsTransient(err) },
		},
		{
			name:       "unban",
			call:       func(c *Client) (any, error) { return nil, c.Unban(ctx, room, bob, "") },
			wantMethod: "POST", wantURI: roomPath + "/unban", wantBody: `{"user_id":"@bob:ex.org"}`, status: 200, resp: `{}`,
		},
		{
			name:       "send text",
			call:       func(c *Client) (any, error) { e, err := c.SendText(ctx, room, "t1", "hi"); return e.String(), err },
			wantMethod: "PUT", wantURI: roomPath + "/send/m.room.message/t1", wantBody: `{"msgtype":"m.text","body":"hi"}`,
			status: 200, resp: `{"event_id":"$e1"}`, want: "$e1",
		},
		{
			name:       "send notice",
			call:       func(c *Client) (any, error) { e, err := c.SendNotice(ctx, room, "t2", "hi"); return e.String(), err },
			wantMethod: "PUT", wantURI: roomPath + "/send/m.room.message/t2", wantBody: `{"msgtype":"m.notice","body":"hi"}`,
			status: 200, resp: `{"event_id":"$e2"}`, want: "$e2",
		},
		{
			name: "send html",
			call: func(c *Client) (any, error) {
				e, err := c.SendHTML(ctx, room, "t3", "", "*hi*", "<em>hi</em>")
				return e.String(), err
			},
			wantMethod: "PUT", wantURI: roomPath + "/send/m.room.message/t3",
			wantBody: `{"msgtype":"m.notice","body":"*hi*","format":"org.matrix.custom.html","formatted_body":"<em>hi</em>"}`,
			status:   200, resp: `{"event_id":"$e3"}`, want: "$e3",
		},
		{
			name:       "send missing event id",
			call:       func(c *Client) (any, error) { e, err := c.SendText(ctx, room, "t4", "hi"); return e.String(), err },
			wantMethod: "PUT", wantURI: roomPath + "/send/m.room.message/t4", wantBody: `{"msgtype":"m.text","body":"hi"}`,
			status: 200, resp: `{}`,
			wantErr: func(err error) bool { return errors.Is(err, mxid.ErrInvalid) },
		},
		{
			name: "get state",
			call: func(c *Client) (any, error) {
				var out map[string]any
				err := c.GetStateEvent(ctx, room, "m.room.canonical_alias", "", &out)
				return out, err
			},
			wantMethod: "GET", wantURI: roomPath + "/state/m.room.canonical_alias/",
			status: 200, resp: `{"alias":"#a:ex.org"}`, want: map[string]any{"alias": "#a:ex.org"},
		},
		{
			name: "get state missing",
			call: func(c *Client) (any, error) {
				return nil, c.GetStateEvent(ctx, room, "m.room.topic", "", nil)
			},
			wantMethod: "GET", wantURI: roomPath + "/state/m.room.topic/",
			status: 404, resp: `{"errcode":"M_NOT_FOUND","error":"Event not found."}`,
			wantErr: IsNotFound,
		},
		{
			name: "set state",
			call: func(c *Client) (any, error) {
				e, err := c.SetStateEvent(ctx, room, "m.room.member", "@bob:ex.org", map[string]string{"membership": "leave"})
				return e.String(), err
			},
			wantMethod: "PUT", wantURI: roomPath + "/state/m.room.member/%40bob%3Aex.org", wantBody: `{"membership":"leave"}`,
			status: 200, resp: `{"event_id":"$s"}`, want: "$s",
		},
		{
			name: "get power levels",
			call: func(c *Client) (any, error) {
				pl, err := c.GetPowerLevels(ctx, room)
				if err != nil {
					return nil, err
				}
				return []int{pl.BanLevel(), pl.UserLevel("@o:ex.org"), pl.UserLevel("@x:ex.org"), pl.KickLevel()}, nil
			},
			wantMethod: "GET", wantURI: roomPath + "/state/m.room.power_levels/",
			status: 200, resp: `{"ban":"75","users":{"@o:ex.org":100},"users_default":"5"}`, want: []int{75, 100, 5, 50},
		},
		{
			name: "set power levels",
			call: func(c *Client) (any, error) {
				e, err := c.SetPowerLevels(ctx, room, &PowerLevels{Users: map[string]int{"@o:ex.org": 100}, Extra: map[string]json.RawMessage{"x": json.RawMessage(`[1]`)}})
				return e.String(), err
			},
			wantMethod: "PUT", wantURI: roomPath + "/state/m.room.power_levels/", wantBody: `{"users":{"@o:ex.org":100},"x":[1]}`,
			status: 200, resp: `{"event_id":"$p"}`, want: "$p",
		},
		{
			name: "state",
			call: func(c *Client) (any, error) {
				evs, err := c.State(ctx, room)
				if err != nil {
					return nil, err
				}
				return []any{len(evs), evs[0].Type, *evs[0].StateKey, evs[0].IsState(), string(evs[0].Content), evs[0].OriginServerTS}, nil
			},
			wantMethod: "GET", wantURI: roomPath + "/state",
			status: 200, resp: `[{"event_id":"$1","type":"m.room.create","room_id":"!r:ex.org","sender":"@a:ex.org","state_key":"","content":{"creator":"@a:ex.org"},"origin_server_ts":42}]`,
			want: []any{1, "m.room.create", "", true, `{"creator":"@a:ex.org"}`, int64(42)},
		},
		{
			name: "members banned",
			call: func(c *Client) (any, error) {
				evs, err := c.Members(ctx, room, MembershipBan)
				if err != nil {
					return nil, err
				}
				var out []string
				for _, e := range evs {
					out = append(out, *e.StateKey+"="+e.Membership())
				}
				return out, nil
			},
			wantMethod: "GET", wantURI: roomPath + "/members?membership=ban",
			status: 200, resp: `{"chunk":[{"event_id":"$m","type":"m.room.member","sender":"@a:ex.org","state_key":"@bob:ex.org","content":{"membership":"ban"},"origin_server_ts":1}]}`,
			want: []string{"@bob:ex.org=ban"},
		},
		{
			name: "resolve alias",
			call: func(c *Client) (any, error) {
				r, err := c.ResolveAlias(ctx, mxid.MustRoomAlias("#comments_a:ex.org"))
				return r.String(), err
			},
			wantMethod: "GET", wantURI: "/_matrix/client/v3/directory/room/%23comments_a%3Aex.org",
			status: 200, resp: `{"room_id":"!r:ex.org","servers":["ex.org"]}`, want: "!r:ex.org",
		},
		{
			name: "resolve unknown alias",
			call: func(c *Client) (any, error) {
				r, err := c.ResolveAlias(ctx, mxid.MustRoomAlias("#nope:ex.org"))
				return r.String(), err
			},
			wantMethod: "GET", wantURI: "/_matrix/client/v3/directory/room/%23nope%3Aex.org",
			status: 404, resp: `{"errcode":"M_NOT_FOUND","error":"Room alias #nope:ex.org not found"}`,
			wantErr: func(err error) bool { return IsNotFound(err) && IsPermanent(err) },
		},
		{
			name: "joined rooms",
			call: func(c *Client) (any, error) {
				rs, err := c.JoinedRooms(ctx)
				var out []string
				for _, r := range rs {
					out = append(out, r.String())
				}
				return out, err
			},
			wantMethod: "GET", wantURI: "/_matrix/client/v3/joined_rooms",
			status: 200, resp: `{"joined_rooms":["!a:ex.org","!b:ex.org"]}`, want: []string{"!a:ex.org", "!b:ex.org"},
		},
		{
			name:       "default room version",
			call:       func(c *Client) (any, error) { return c.DefaultRoomVersion(ctx) },
			wantMethod: "GET", wantURI: "/_matrix/client/v3/capabilities",
			status: 200, resp: `{"capabilities":{"m.room_versions":{"default":"12","available":{"12":"stable"}}}}`,
			want: "12",
		},
		{
			name:       "no default room version announced",
			call:       func(c *Client) (any, error) { return c.DefaultRoomVersion(ctx) },
			wantMethod: "GET", wantURI: "/_matrix/client/v3/capabilities",
			status: 200, resp: `{"capabilities":{}}`,
			wantErr: func(err error) bool { return err != nil && !IsTransient(err) },
		},
		{
			name: "create event in full",
			call: func(c *Client) (any, error) {
				ev, err := c.CreateEvent(ctx, room)
				if err != nil {
					return nil, err
				}
				return ev.Sender, nil
			},
			wantMethod: "GET", wantURI: roomPath + "/state/m.room.create/?format=event",
			status: 200, resp: `{"type":"m.room.create","state_key":"","sender":"@bob:ex.org","event_id":"$c","content":{"room_version":"12"}}`,
			want: "@bob:ex.org",
		},
		{
			name:       "upgrade",
			call:       func(c *Client) (any, error) { r, err := c.UpgradeRoom(ctx, room, "12"); return r.String(), err },
			wantMethod: "POST", wantURI: roomPath + "/upgrade", wantBody: `{"new_version":"12"}`,
			status: 200, resp: `{"replacement_room":"!abc"}`,
			want: "!abc",
		},
		{
			name:       "ping",
			call:       func(c *Client) (any, error) { return c.AppservicePing(ctx, "cactus comments", "p1") },
			wantMethod: "POST", wantURI: "/_matrix/client/v1/appservice/cactus%20comments/ping", wantBody: `{"transaction_id":"p1"}`,
			status: 200, resp: `{"duration_ms":123}`, want: 123 * time.Millisecond,
		},
		{
			name:       "ping bad status not retried",
			call:       func(c *Client) (any, error) { return c.AppservicePing(ctx, "cc", "") },
			wantMethod: "POST", wantURI: "/_matrix/client/v1/appservice/cc/ping", wantBody: `{}`,
			status: 502, resp: `{"errcode":"M_BAD_STATUS","error":"...","status":500,"body":"oops"}`,
			wantErr: func(err error) bool { return ErrCode(err) == CodeBadStatus },
		},
		{
			name:       "ping unsupported",
			call:       func(c *Client) (any, error) { return c.AppservicePing(ctx, "cc", "") },
			wantMethod: "POST", wantURI: "/_matrix/client/v1/appservice/cc/ping", wantBody: `{}`,
			status: 404, resp: `{"errcode":"M_UNRECOGNIZED","error":"Unrecognized request"}`,
			wantErr: func(err error) bool { return IsUnrecognized(err) && IsPermanent(err) && !IsNotFound(err) },
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			hs := newFakeHS(t, func(n int, w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(tc.status)
				w.Write([]byte(tc.resp))
			})
			c, _ := newTestClient(t, hs.srv.URL, nil)
			got, err := tc.call(c)
			reqs := hs.requests()
			if len(reqs) != 1 {
				t.Fatalf("requests = %d, want 1", len(reqs))
			}
			r := reqs[0]
			if r.Method != tc.wantMethod || r.RequestURI != tc.wantURI {
				t.Errorf("request = %s %s, want %s %s", r.Method, r.RequestURI, tc.wantMethod, tc.wantURI)
			}
			if tc.wantBody == "" {
				if len(r.Body) != 0 {
					t.Errorf("body = %s, want none", r.Body)
				}
			} else {
				var gotBody, wantBody any
				if err := json.Unmarshal(r.Body, &gotBody); err != nil {
					t.Fatalf("request body %q: %v", r.Body, err)
				}
				if err := json.Unmarshal([]byte(tc.wantBody), &wantBody); err != nil {
					t.Fatalf("bad wantBody: %v", err)
				}
				if !reflect.DeepEqual(gotBody, wantBody) {
					t.Errorf("body = %s, want %s", r.Body, tc.wantBody)
				}
			}
			if tc.wantErr != nil {
				if err == nil || !tc.wantErr(err) {
					t.Fatalf("err = %v, not the expected kind", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tc.want != nil && !reflect.DeepEqual(got, tc.want) {
				t.Errorf("result = %#v, want %#v", got, tc.want)
			}
		})
	}
}

func TestArgumentValidation(t *testing.T) {
	hs := newFakeHS(t, func(n int, w http.ResponseWriter, r *http.Request) { writeJSON(w, 200, map[string]string{}) })
	c, _ := newTestClient(t, hs.srv.URL, nil)
	ctx := context.Background()
	var zr mxid.RoomID
	var zu mxid.UserID
	calls := map[string]func() error{
		"register":     func() error { _, err := c.RegisterAppserviceUser(ctx, ""); return err },
		"displayname":  func() error { return c.SetDisplayName(ctx, zu, "x") },
		"join":         func() error { _, err := c.JoinRoom(ctx, ""); return err },
		"leave":        func() error { return c.LeaveRoom(ctx, zr, "") },
		"ban":          func() error { return c.Ban(ctx, testRoom, zu, "") },
		"send no txn":  func() error { _, err := c.SendText(ctx, testRoom, "", "x"); return err },
		"state":        func() error { return c.GetStateEvent(ctx, zr, "m.room.name", "", nil) },
		"set state":    func() error { _, err := c.SetStateEvent(ctx, testRoom, "", "", nil); return err },
		"power levels": func() error { _, err := c.SetPowerLevels(ctx, testRoom, nil); return err },
		"members":      func() error { _, err := c.Members(ctx, zr, ""); return err },
		"alias":        func() error { _, err := c.ResolveAlias(ctx, mxid.RoomAlias{}); return err },
		"ping":         func() error { _, err := c.AppservicePing(ctx, "", ""); return err },
		"unencodable": func() error {
			_, err := c.SendEvent(ctx, testRoom, "t", "x", map[string]any{"f": func() {}})
			return err
		},
	}
	for name, call := range calls {
		if err := call(); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	if n := len(hs.requests()); n != 0 {
		t.Errorf("%d requests sent for invalid arguments", n)
	}
}

// A homeserver that ignores format=event answers the content, which names
// no sender from room version 11 on: the whole state has it.
func TestCreateEventWithoutFormatEvent(t *testing.T) {
	hs := newFakeHS(t, func(n int, w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/_matrix/client/v3/rooms/!r:ex.org/state/m.room.create/" {
			writeJSON(w, 200, map[string]string{"room_version": "11"})
			return
		}
		writeJSON(w, 200, []map[string]any{
			{"type": "m.room.name", "state_key": "", "sender": "@a:ex.org", "content": map[string]string{"name": "x"}},
			{"type": "m.room.create", "state_key": "", "sender": "@a:ex.org", "content": map[string]string{"room_version": "11"}},
		})
	})
	c, _ := newTestClient(t, hs.srv.URL, nil)
	ev, err := c.CreateEvent(context.Background(), mxid.MustRoomID("!r:ex.org"))
	if err != nil || ev.Sender != "@a:ex.org" || ev.Type != "m.room.create" {
		t.Fatalf("CreateEvent = %+v, %v", ev, err)
	}
	if reqs := hs.requests(); len(reqs) != 2 || reqs[1].RequestURI != "/_matrix/client/v3/rooms/%21r%3Aex.org/state" {
		t.Fatalf("requests = %+v", reqs)
	}
}
