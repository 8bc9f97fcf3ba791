package power

import (
	"encoding/json"
	"errors"
	"reflect"
	"testing"
)

func TestRoom(t *testing.T) {
	for _, tc := range []struct {
		room       Room
		privileged bool
		creators   []string
	}{
		{Room{Version: "10", Creator: bot}, false, nil},
		{Room{Version: "11", Creator: bot, AdditionalCreators: []string{carol}}, false, nil},
		{Room{Version: "12", Creator: bot}, true, []string{bot}},
		{Room{Version: "12", Creator: bot, AdditionalCreators: []string{carol, bot, carol}}, true, []string{bot, carol}},
		{Room{Version: "13", Creator: bot}, true, []string{bot}},
		{Room{Version: "org.matrix.hydra.11", Creator: bot}, false, nil},
		{Room{Version: "", Creator: bot}, false, nil},
	} {
		if got := tc.room.PrivilegedCreators(); got != tc.privileged {
			t.Errorf("%+v: privileged %v", tc.room, got)
		}
		if got := tc.room.Creators(); len(got) != len(tc.creators) || (len(got) > 0 && (got[0] != tc.creators[0] || got[len(got)-1] != tc.creators[len(tc.creators)-1])) {
			t.Errorf("%+v: creators %v, want %v", tc.room, got, tc.creators)
		}
	}
}

func TestFromCreateEvent(t *testing.T) {
	for _, tc := range []struct {
		sender, content string
		want            Room
		bad             bool
	}{
		{bot, `{"room_version":"10","creator":"@bot:example.org"}`, Room{Version: "10", Creator: bot}, false},
		{bot, `{"room_version":"12","additional_creators":["@carol:example.org"]}`, Room{Version: "12", Creator: bot, AdditionalCreators: []string{carol}}, false},
		{bot, `{"room_version":"11","additional_creators":["@carol:example.org"]}`, Room{Version: "11", Creator: bot}, false},
		{bot, `{}`, Room{Version: "1", Creator: bot}, false},
		{bot, `{"room_version":"12","additional_creators":"@carol:example.org"}`, Room{}, true},
		{"bot", `{"room_version":"12"}`, Room{}, true},
		{bot, `[]`, Room{}, true},
	} {
		got, err := FromCreateEvent(tc.sender, []byte(tc.content))
		if (err != nil) != tc.bad {
			t.Errorf("%s: err %v", tc.content, err)
			continue
		}
		if !tc.bad && (got.Version != tc.want.Version || got.Creator != tc.want.Creator || len(got.AdditionalCreators) != len(tc.want.AdditionalCreators)) {
			t.Errorf("%s: %+v, want %+v", tc.content, got, tc.want)
		}
	}
}

func TestUserLevel(t *testing.T) {
	levels := pl(t, `{"users":{"@bot:example.org":100,"@owner:example.org":50},"users_default":5}`)
	for _, tc := range []struct {
		room  Room
		user  string
		noPL  bool
		level int
	}{
		{v10, bot, false, 100},
		{v10, owner, false, 50},
		{v10, alice, false, 5},
		{v10, bot, true, 100},
		{v10, owner, true, 0},
		{v12, bot, false, Infinite},
		{v12, bot, true, Infinite},
		{v12Co, carol, false, Infinite},
		{v12, owner, false, 50},
		{v12Else, bot, false, 100},
		{v12Else, person, false, Infinite},
	} {
		p := levels
		if tc.noPL {
			p = nil
		}
		if got := UserLevel(tc.room, p, tc.user); got != tc.level {
			t.Errorf("v%s %s (no levels %v): %d, want %d", tc.room.Version, tc.user, tc.noPL, got, tc.level)
		}
	}
}

func TestModerationRoomOverride(t *testing.T) {
	for version, want := range map[string]string{
		"10": `{"users":{"@bot:example.org":100,"@owner:example.org":100}}`,
		"11": `{"users":{"@bot:example.org":100,"@owner:example.org":100}}`,
		"12": `{"users":{"@owner:example.org":100}}`,
	} {
		if got := ModerationRoomOverride(version, bot, owner); !same(t, got, pl(t, want)) {
			t.Errorf("v%s: %s, want %s", version, canonical(t, got), want)
		}
	}
}

func TestModeration(t *testing.T) {
	v10Levels := pl(t, `{"users":{"@bot:example.org":100,"@owner:example.org":100,"@alice:example.org":50},"ban":50,"kick":60}`)
	v12Levels := pl(t, `{"users":{"@owner:example.org":9007199254740991,"@alice:example.org":50},"ban":50,"kick":60}`)
	tests := []struct {
		name      string
		room      Room
		levels    string
		action    string
		actor     string
		target    string
		level     int
		wantErr   error
		wantAllow bool
	}{
		{name: "v10 bot bans a visitor", room: v10, action: "ban", actor: bot, target: person, wantAllow: true},
		{name: "v10 bot cannot ban a second admin", room: v10, action: "ban", actor: bot, target: owner, wantErr: ErrInsufficientPower},
		{name: "v10 moderator at 50 bans a visitor", room: v10, action: "ban", actor: alice, target: person, wantAllow: true},
		{name: "v10 moderator at 50 cannot kick (kick 60)", room: v10, action: "kick", actor: alice, target: person, wantErr: ErrInsufficientPower},
		{name: "v10 moderator at 50 cannot unban (kick 60)", room: v10, action: "unban", actor: alice, target: person, wantErr: ErrInsufficientPower},
		{name: "v10 bot unbans", room: v10, action: "unban", actor: bot, target: person, wantAllow: true},
		{name: "v10 bot demotes the moderator", room: v10, action: "level", actor: bot, target: alice, level: 0, wantAllow: true},
		{name: "v10 bot cannot demote the owner", room: v10, action: "level", actor: bot, target: owner, level: 50, wantErr: ErrInsufficientPower},
		{name: "v10 bot cannot raise above itself", room: v10, action: "level", actor: bot, target: alice, level: 101, wantErr: ErrInsufficientPower},
		{name: "v10 bot lowers itself", room: v10, action: "level", actor: bot, target: bot, level: 10, wantAllow: true},
		{name: "v12 creator bot bans an admin at the JSON maximum", room: v12, levels: "v12", action: "ban", actor: bot, target: owner, wantAllow: true},
		{name: "v12 nobody bans the creator", room: v12, levels: "v12", action: "ban", actor: owner, target: bot, wantErr: ErrCreator},
		{name: "v12 nobody kicks the creator", room: v12, levels: "v12", action: "kick", actor: owner, target: bot, wantErr: ErrCreator},
		{name: "v12 nobody demotes the creator", room: v12, levels: "v12", action: "level", actor: owner, target: bot, level: 0, wantErr: ErrCreator},
		{name: "v12 a creator cannot ban another creator", room: v12Co, levels: "v12", action: "ban", actor: bot, target: carol, wantErr: ErrCreator},
		{name: "v12 creator gives anyone any level", room: v12, levels: "v12", action: "level", actor: bot, target: alice, level: 1 << 53, wantAllow: true},
		{name: "v12 admin cannot raise above itself", room: v12, levels: "v12", action: "level", actor: alice, target: person, level: 51, wantErr: ErrInsufficientPower},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			levels := v10Levels
			if tc.levels == "v12" {
				levels = v12Levels
			}
			var err error
			switch tc.action {
			case "ban":
				err = CanBan(tc.room, levels, tc.actor, tc.target)
			case "kick":
				err = CanKick(tc.room, levels, tc.actor, tc.target)
			case "unban":
				err = CanUnban(tc.room, levels, tc.actor, tc.target)
			case "level":
				err = CanSetUserLevel(tc.room, levels, tc.actor, tc.target, tc.level)
			}
			if tc.wantAllow != (err == nil) || (tc.wantErr != nil && !errors.Is(err, tc.wantErr)) {
				t.Fatalf("err %v, want allowed=%v / %v", err, tc.wantAllow, tc.wantErr)
			}
		})
	}
	if err := CanSetUserLevel(v10, nil, alice, bob, 100); err != nil {
		t.Fatalf("the first power levels event is always allowed: %v", err)
	}
	if err := CanBan(v10, nil, bot, person); err != nil {
		t.Fatalf("without power levels the creator has 100: %v", err)
	}
}

func TestCopyFor(t *testing.T) {
	tests := []struct {
		name     string
		src, dst Room
		in, want string
	}{
		{"v10 to v10 unchanged", v10, v10, `{"users":{"@bot:example.org":100,"@owner:example.org":100},"ban":40}`, `{"users":{"@bot:example.org":100,"@owner:example.org":100},"ban":40}`},
		{"v10 to v12: the bot is the new room's creator", v10, v12, `{"users":{"@bot:example.org":100,"@owner:example.org":100},"ban":40}`, `{"users":{"@owner:example.org":100},"ban":40}`},
		{"v12 to v12 unchanged", v12, v12, `{"users":{"@owner:example.org":100},"events":{"m.room.tombstone":150}}`, `{"users":{"@owner:example.org":100},"events":{"m.room.tombstone":150}}`},
		{"v12 to v10: the bot keeps its power explicitly", v12, v10, `{"users":{"@owner:example.org":100}}`, `{"users":{"@bot:example.org":100,"@owner:example.org":100}}`},
		{"v12 to v11 with an additional creator: both explicit", v12Co, v11, `{"users":{"@owner:example.org":100}}`, `{"users":{"@bot:example.org":100,"@carol:example.org":100,"@owner:example.org":100}}`},
		{"v12 to v12 with additional creators in the target: dropped", v12, v12Co, `{"users":{"@owner:example.org":100,"@carol:example.org":50}}`, `{"users":{"@owner:example.org":100}}`},
		{"v10 levels without the bot: the creator gets 100 for Synapse's check", v10, v10, `{"users":{"@owner:example.org":100}}`, `{"users":{"@bot:example.org":100,"@owner:example.org":100}}`},
		{"the bot's own lower entry is kept", v10, v10, `{"users":{"@bot:example.org":60}}`, `{"users":{"@bot:example.org":60}}`},
		{"no users at all into v12", v10, v12, `{"ban":10}`, `{"ban":10}`},
		{"unknown keys travel", v10, v12, `{"users":{},"historical":100,"m.call.invite":50}`, `{"users":{},"historical":100,"m.call.invite":50}`},
		// A moderation room its owner upgraded to v12: the owner is a
		// creator there, in no users, and a plain admin in every comment
		// room, whatever its version.
		{"owner-created v12 to the bot's v12: the owner explicit", ownerV12, v12, `{"users":{"@bot:example.org":100}}`, `{"users":{"@owner:example.org":100}}`},
		{"owner-created v12 to v10: owner and bot explicit", ownerV12, v10, `{"users":{"@bot:example.org":100}}`, `{"users":{"@bot:example.org":100,"@owner:example.org":100}}`},
		{"a creator of both rooms stays out", ownerV12, ownerV12, `{"users":{"@bot:example.org":100}}`, `{"users":{"@bot:example.org":100}}`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			in := pl(t, tc.in)
			got := CopyFor(tc.src, in, tc.dst)
			if !same(t, got, pl(t, tc.want)) {
				t.Fatalf("%s, want %s", canonical(t, got), tc.want)
			}
			if !same(t, in, pl(t, tc.in)) {
				t.Fatal("the source content was modified")
			}
		})
	}
	if got := CopyFor(v10, nil, v10); !same(t, got, pl(t, `{"users":{"@bot:example.org":100}}`)) {
		t.Fatalf("nil source: %s", canonical(t, got))
	}
}

// The registry keeps a Room as JSON: what it stores reads back the same,
// and the names are the create event's own.
func TestRoomJSON(t *testing.T) {
	for _, r := range []Room{
		{Version: "10", Creator: "@bot:example.org"},
		{Version: "12", Creator: "@owner:example.org", AdditionalCreators: []string{"@a:example.org"}},
	} {
		b, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		var back Room
		if err := json.Unmarshal(b, &back); err != nil || !reflect.DeepEqual(back, r) {
			t.Fatalf("%s read back as %+v (%v)", b, back, err)
		}
	}
	if b, _ := json.Marshal(Room{Version: "11", Creator: "@bot:example.org"}); string(b) != `{"room_version":"11","creator":"@bot:example.org"}` {
		t.Fatalf("stored as %s", b)
	}
}
