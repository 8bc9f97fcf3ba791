package matrix

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
)

func TestPowerLevelsDefaults(t *testing.T) {
	var pl PowerLevels
	if err := json.Unmarshal([]byte(`{}`), &pl); err != nil {
		t.Fatal(err)
	}
	got := map[string]int{
		"ban": pl.BanLevel(), "kick": pl.KickLevel(), "redact": pl.RedactLevel(), "invite": pl.InviteLevel(),
		"state_default": pl.StateDefaultLevel(), "events_default": pl.EventsDefaultLevel(),
		"users_default": pl.UsersDefaultLevel(), "room": pl.RoomNotificationLevel(),
		"user": pl.UserLevel("@a:x"), "state event": pl.EventLevel("m.room.name", true),
		"message": pl.EventLevel("m.room.message", false),
	}
	want := map[string]int{
		"ban": 50, "kick": 50, "redact": 50, "invite": 0, "state_default": 50, "events_default": 0,
		"users_default": 0, "room": 50, "user": 0, "state event": 50, "message": 0,
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("defaults = %v, want %v", got, want)
	}
	b, err := json.Marshal(pl)
	if err != nil || string(b) != `{}` {
		t.Errorf("empty power levels marshal to %s, %v; want {}", b, err)
	}
}

func TestPowerLevelsParse(t *testing.T) {
	tests := []struct {
		name  string
		in    string
		check func(p *PowerLevels) bool
		bad   bool
	}{
		{"ints", `{"ban":60,"kick":40,"invite":10,"redact":70,"state_default":80,"events_default":5,"users_default":1,
			"users":{"@o:x":100},"events":{"m.room.name":90},"notifications":{"room":20}}`,
			func(p *PowerLevels) bool {
				return p.BanLevel() == 60 && p.KickLevel() == 40 && p.InviteLevel() == 10 && p.RedactLevel() == 70 &&
					p.StateDefaultLevel() == 80 && p.EventsDefaultLevel() == 5 && p.UsersDefaultLevel() == 1 &&
					p.UserLevel("@o:x") == 100 && p.UserLevel("@z:x") == 1 && p.EventLevel("m.room.name", true) == 90 &&
					p.EventLevel("m.room.topic", true) == 80 && p.EventLevel("m.reaction", false) == 5 &&
					p.RoomNotificationLevel() == 20
			}, false},
		{"string ints", `{"ban":"60","users":{"@o:x":"100"," @p:x":" -5 "},"events":{"m.room.name":"+90"},"notifications":{"room":"0"}}`,
			func(p *PowerLevels) bool {
				return p.BanLevel() == 60 && p.UserLevel("@o:x") == 100 && p.UserLevel(" @p:x") == -5 &&
					p.EventLevel("m.room.name", true) == 90 && p.RoomNotificationLevel() == 0
			}, false},
		{"integral floats", `{"ban":50.0,"kick":1e2}`,
			func(p *PowerLevels) bool { return p.BanLevel() == 50 && p.KickLevel() == 100 }, false},
		{"nulls are absent", `{"ban":null,"users":null}`,
			func(p *PowerLevels) bool { return p.Ban == nil && p.Users == nil && p.BanLevel() == 50 }, false},
		{"zero is not absent", `{"ban":0}`,
			func(p *PowerLevels) bool { return p.Ban != nil && p.BanLevel() == 0 }, false},
		{"negative", `{"users_default":-10}`,
			func(p *PowerLevels) bool { return p.UserLevel("@a:x") == -10 }, false},
		{"fraction", `{"ban":50.5}`, nil, true},
		{"word", `{"ban":"fifty"}`, nil, true},
		{"hex string", `{"ban":"0x10"}`, nil, true},
		{"string float", `{"ban":"50.0"}`, nil, true},
		{"bool", `{"kick":true}`, nil, true},
		{"too large", `{"ban":9007199254740992}`, nil, true},
		{"users not object", `{"users":[1]}`, nil, true},
		{"user level object", `{"users":{"@a:x":{}}}`, nil, true},
		{"not an object", `[1]`, nil, true},
		{"null content", `null`, nil, true},
		{"garbage", `{"ban":`, nil, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var pl PowerLevels
			err := pl.UnmarshalJSON([]byte(tc.in))
			if tc.bad {
				if err == nil {
					t.Fatalf("no error for %s: %+v", tc.in, pl)
				}
				if !strings.Contains(err.Error(), "power levels") {
					t.Errorf("error %q does not say what failed", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !tc.check(&pl) {
				t.Errorf("parsed %s as %+v", tc.in, pl)
			}
		})
	}
}

func TestPowerLevelsRoundTrip(t *testing.T) {
	in := `{"ban":"50","kick":50,"users":{"@o:x":100,"@m:x":"50"},"events":{"m.room.name":50},
		"historical":100,"org.example.custom":{"nested":[1,"two",null]},"notifications":{"room":50,"other":"3"},
		"users_default":0}`
	var pl PowerLevels
	if err := json.Unmarshal([]byte(in), &pl); err != nil {
		t.Fatal(err)
	}
	if len(pl.Extra) != 2 {
		t.Fatalf("extra = %v, want historical and org.example.custom", pl.Extra)
	}
	out, err := json.Marshal(&pl)
	if err != nil {
		t.Fatal(err)
	}
	var got, want map[string]any
	json.Unmarshal(out, &got)
	json.Unmarshal([]byte(`{"ban":50,"kick":50,"users":{"@o:x":100,"@m:x":50},"events":{"m.room.name":50},
		"historical":100,"org.example.custom":{"nested":[1,"two",null]},"notifications":{"room":50,"other":3},
		"users_default":0}`), &want)
	if !reflect.DeepEqual(got, want) {
		t.Errorf("round trip\n got %s\nwant %v", out, want)
	}
	// Marshalling by value and by pointer agree (PowerLevels is embedded by
	// value in callers' structs as well as by pointer).
	byValue, _ := json.Marshal(pl)
	if string(byValue) != string(out) {
		t.Errorf("value marshal %s != pointer marshal %s", byValue, out)
	}
}

func TestPowerLevelsKnownFieldsWinOverExtra(t *testing.T) {
	pl := PowerLevels{Ban: new(70), Extra: map[string]json.RawMessage{"ban": json.RawMessage(`1`), "kick": json.RawMessage(`2`)}}
	out, err := json.Marshal(pl)
	if err != nil {
		t.Fatal(err)
	}
	// kick is a known field left absent: a stray Extra entry must not
	// smuggle a value past the typed field.
	if string(out) != `{"ban":70}` {
		t.Errorf("marshal = %s, want {\"ban\":70}", out)
	}
	bad := PowerLevels{Extra: map[string]json.RawMessage{"x": json.RawMessage(`{`)}}
	if _, err := json.Marshal(bad); err == nil {
		t.Error("invalid Extra JSON marshalled without error")
	}
}

func TestPowerLevelsClone(t *testing.T) {
	pl := &PowerLevels{Ban: new(50), Users: map[string]int{"@a:x": 100}, Extra: map[string]json.RawMessage{"k": json.RawMessage(`[1]`)}}
	cp := pl.Clone()
	*cp.Ban = 10
	cp.SetUserLevel("@a:x", 0)
	cp.Extra["k"][1] = '2'
	if *pl.Ban != 50 || pl.Users["@a:x"] != 100 || string(pl.Extra["k"]) != `[1]` {
		t.Errorf("clone shares memory with the original: %+v", pl)
	}
	var nilPL *PowerLevels
	if nilPL.Clone() != nil {
		t.Error("nil clone not nil")
	}
	var empty PowerLevels
	empty.SetUserLevel("@b:x", 5)
	if empty.UserLevel("@b:x") != 5 {
		t.Error("SetUserLevel on nil map")
	}
}

// TestPowerLevelsStrict: a duplicate key would make the level depend on
// which decoder reads it (encoding/json keeps the last); it is an error,
// whoever unmarshals, as is invalid UTF-8.
func TestPowerLevelsStrict(t *testing.T) {
	for _, in := range []string{
		`{"ban":50,"ban":0}`,
		`{"users":{"@a:x.org":100,"@a:x.org":0}}`,
		`{"users":{"@a:x.org":100,"@a:x.or\u0067":0}}`,
		`{"events":{"m.room.name":50},"x":{"y":1,"y":2}}`,
		"{\"users\":{\"@a:x.org\xff\":100}}",
		`{"users":{"@a:x.org":"\ud800"}}`,
	} {
		var pl PowerLevels
		if err := json.Unmarshal([]byte(in), &pl); err == nil {
			t.Errorf("encoding/json.Unmarshal(%s) = %+v, want an error", in, pl)
		}
	}
}
