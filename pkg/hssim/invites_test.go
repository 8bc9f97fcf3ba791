package hssim

import (
	"encoding/json"
	"slices"
	"testing"
)

func TestInviteRoomStatePerMode(t *testing.T) {
	for _, tc := range []struct {
		mode    Mode
		version string
		want    []string // types; "member:X" is X's m.room.member
	}{
		{Synapse, "10", []string{"m.room.join_rules", "m.room.canonical_alias", "m.room.avatar", "m.room.encryption", "m.room.name", "m.room.create", "m.room.topic", "member:@alice:example.org"}},
		{Synapse, "12", []string{"m.room.join_rules", "m.room.canonical_alias", "m.room.avatar", "m.room.encryption", "m.room.name", "m.room.create", "m.room.topic", "member:@alice:example.org"}},
		{Dendrite, "10", []string{"member:@bob:example.org", "m.room.name", "m.room.canonical_alias", "m.room.join_rules", "m.room.avatar", "m.room.encryption", "m.room.create", "member:@bob:example.org"}},
		{Conduit, "12", []string{"m.room.create", "m.room.join_rules", "m.room.canonical_alias", "m.room.name", "m.room.avatar", "member:@alice:example.org", "m.room.encryption", "m.room.topic", "member:@bob:example.org"}},
	} {
		t.Run(string(tc.mode)+"/v"+tc.version, func(t *testing.T) {
			e := startEnv(t, tc.mode)
			_, atok := e.user("alice")
			e.user("bob")
			id := e.createRoom(atok, map[string]any{"preset": "private_chat", "room_version": tc.version, "name": "N", "topic": "T", "room_alias_name": "invitestate",
				"initial_state": []map[string]any{
					{"type": "m.room.avatar", "content": map[string]any{"url": "mxc://example.org/a"}},
					{"type": "m.room.encryption", "content": map[string]any{"algorithm": "m.megolm.v1.aes-sha2"}},
					{"type": "m.room.guest_access", "content": map[string]any{"guest_access": "forbidden"}},
				}})
			e.mustOK(e.do("POST", "/_matrix/client/v3/rooms/"+esc(id)+"/invite", atok, map[string]any{"user_id": "@bob:example.org"}))
			tl := e.hs.Timeline(id)
			invite := tl[len(tl)-1]
			var stripped []map[string]json.RawMessage
			raw, _ := json.Marshal(unsignedOf(t, invite)["invite_room_state"])
			if err := json.Unmarshal(raw, &stripped); err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, st := range stripped {
				var typ, key string
				_ = json.Unmarshal(st["type"], &typ)
				_ = json.Unmarshal(st["state_key"], &key)
				if typ == "m.room.member" {
					typ = "member:" + key
				}
				got = append(got, typ)
				_, full := st["origin_server_ts"]
				if wantFull := tc.mode == Synapse && tc.version == "12" && typ == "m.room.create"; full != wantFull {
					t.Errorf("%s: full PDU %v, want %v: %s", typ, full, wantFull, raw)
				}
				if _, ok := st["event_id"]; ok {
					t.Errorf("%s carries an event_id: %s", typ, raw)
				}
			}
			if !slices.Equal(got, tc.want) {
				t.Fatalf("invite_room_state types\n got %v\nwant %v", got, tc.want)
			}
		})
	}
}
