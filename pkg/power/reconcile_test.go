package power

import (
	"bytes"
	"encoding/json"
	"slices"
	"testing"

	"github.com/cactus-comments/appservice/pkg/matrix"
)

const (
	bot    = "@bot:example.org"
	owner  = "@owner:example.org"
	alice  = "@alice:example.org"
	bob    = "@bob:example.org"
	carol  = "@carol:example.org"
	person = "@person:example.org"
)

var (
	v10      = Room{Version: "10", Creator: bot}
	v11      = Room{Version: "11", Creator: bot}
	v12      = Room{Version: "12", Creator: bot}
	v12Co    = Room{Version: "12", Creator: bot, AdditionalCreators: []string{carol}}
	ownerV12 = Room{Version: "12", Creator: owner}
	v12Else  = Room{Version: "12", Creator: person} // made by someone else, e.g. upgraded by the owner
)

func pl(t testing.TB, s string) *matrix.PowerLevels {
	t.Helper()
	var p matrix.PowerLevels
	if err := json.Unmarshal([]byte(s), &p); err != nil {
		t.Fatalf("%s: %v", s, err)
	}
	return &p
}

// canonical encodes v with sorted keys, so that equal contents compare
// equal byte for byte.
func canonical(t testing.TB, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	var generic any
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	if err := d.Decode(&generic); err != nil {
		t.Fatal(err)
	}
	out, _ := json.Marshal(generic)
	return out
}

func same(t testing.TB, a, b *matrix.PowerLevels) bool {
	return bytes.Equal(canonical(t, a), canonical(t, b))
}

func TestReconcile(t *testing.T) {
	tests := []struct {
		name        string
		room        Room
		cur, want   string
		expect      string
		skipped     []string // fields
		expectEqual bool     // target equals cur (nothing to send)
	}{
		// Rooms before version 12: the bot is an ordinary user at 100.
		{
			name: "plain copy of a new moderator", room: v10,
			cur:    `{"users":{"@bot:example.org":100,"@owner:example.org":100}}`,
			want:   `{"users":{"@bot:example.org":100,"@owner:example.org":100,"@bob:example.org":50}}`,
			expect: `{"users":{"@bot:example.org":100,"@owner:example.org":100,"@bob:example.org":50}}`,
		},
		{
			name: "second admin at the bot's level can be added", room: v11,
			cur:    `{"users":{"@bot:example.org":100,"@owner:example.org":100}}`,
			want:   `{"users":{"@bot:example.org":100,"@owner:example.org":100,"@alice:example.org":100}}`,
			expect: `{"users":{"@bot:example.org":100,"@owner:example.org":100,"@alice:example.org":100}}`,
		},
		{
			name: "a user at the bot's level cannot be lowered; the rest applies", room: v10,
			cur:     `{"users":{"@bot:example.org":100,"@owner:example.org":100,"@alice:example.org":100}}`,
			want:    `{"users":{"@bot:example.org":100,"@owner:example.org":100,"@alice:example.org":0,"@bob:example.org":50}}`,
			expect:  `{"users":{"@bot:example.org":100,"@owner:example.org":100,"@alice:example.org":100,"@bob:example.org":50}}`,
			skipped: []string{"users[@alice:example.org]"},
		},
		{
			name: "removing a user at the bot's level is skipped too", room: v10,
			cur:     `{"users":{"@bot:example.org":100,"@alice:example.org":100}}`,
			want:    `{"users":{"@bot:example.org":100}}`,
			expect:  `{"users":{"@bot:example.org":100,"@alice:example.org":100}}`,
			skipped: []string{"users[@alice:example.org]"}, expectEqual: true,
		},
		{
			name: "nobody is raised above the bot", room: v10,
			cur:     `{"users":{"@bot:example.org":50}}`,
			want:    `{"users":{"@bot:example.org":50,"@bob:example.org":100,"@alice:example.org":50}}`,
			expect:  `{"users":{"@bot:example.org":50,"@alice:example.org":50}}`,
			skipped: []string{"users[@bob:example.org]"},
		},
		{
			name: "the bot's own level is never changed", room: v10,
			cur:    `{"users":{"@bot:example.org":100}}`,
			want:   `{"users":{"@bot:example.org":10,"@bob:example.org":5}}`,
			expect: `{"users":{"@bot:example.org":100,"@bob:example.org":5}}`,
		},
		{
			name: "the bot's entry is kept when the wanted content has none", room: v10,
			cur:    `{"users":{"@bot:example.org":100}}`,
			want:   `{"ban":40}`,
			expect: `{"ban":40,"users":{"@bot:example.org":100}}`,
		},
		{
			name: "top-level and events levels above the bot are skipped", room: v10,
			cur:     `{"users":{"@bot:example.org":50},"ban":50,"state_default":100,"events":{"m.room.power_levels":50,"m.room.name":50,"m.room.tombstone":100}}`,
			want:    `{"users":{"@bot:example.org":50},"ban":100,"state_default":50,"kick":20,"events":{"m.room.power_levels":50,"m.room.name":60,"m.room.tombstone":50,"m.room.topic":10}}`,
			expect:  `{"users":{"@bot:example.org":50},"ban":50,"state_default":100,"kick":20,"events":{"m.room.power_levels":50,"m.room.name":50,"m.room.tombstone":100,"m.room.topic":10}}`,
			skipped: []string{"ban", "events[m.room.name]", "events[m.room.tombstone]", "state_default"},
		},
		{
			name: "no change at all below the level of power levels", room: v10,
			cur:     `{"users":{"@bot:example.org":50},"events":{"m.room.power_levels":100}}`,
			want:    `{"users":{"@bot:example.org":50,"@bob:example.org":10}}`,
			expect:  `{"users":{"@bot:example.org":50},"events":{"m.room.power_levels":100}}`,
			skipped: []string{"m.room.power_levels"}, expectEqual: true,
		},
		{
			name: "unknown keys follow the wanted content", room: v10,
			cur:    `{"users":{"@bot:example.org":100},"org.example.custom":1}`,
			want:   `{"users":{"@bot:example.org":100},"org.example.custom":{"x":2}}`,
			expect: `{"users":{"@bot:example.org":100},"org.example.custom":{"x":2}}`,
		},
		{
			name: "notifications above the bot are skipped", room: v10,
			cur:     `{"users":{"@bot:example.org":50},"notifications":{"room":50}}`,
			want:    `{"users":{"@bot:example.org":50},"notifications":{"room":80}}`,
			expect:  `{"users":{"@bot:example.org":50},"notifications":{"room":50}}`,
			skipped: []string{"notifications[room]"}, expectEqual: true,
		},
		{
			name: "identical content needs no change", room: v10,
			cur:         `{"users":{"@bot:example.org":100,"@owner:example.org":100},"ban":50}`,
			want:        `{"ban":50,"users":{"@owner:example.org":100,"@bot:example.org":100}}`,
			expect:      `{"users":{"@bot:example.org":100,"@owner:example.org":100},"ban":50}`,
			expectEqual: true,
		},
		// Version 12, the bot a creator: infinite power, never in users.
		{
			name: "a v10 site's levels in a v12 room: the bot's entry is dropped silently", room: v12,
			cur:         `{"users":{"@owner:example.org":100}}`,
			want:        `{"users":{"@bot:example.org":100,"@owner:example.org":100}}`,
			expect:      `{"users":{"@owner:example.org":100}}`,
			expectEqual: true,
		},
		{
			name: "a creator lowers and removes admins at 100 and raises anyone", room: v12,
			cur:    `{"users":{"@owner:example.org":100,"@alice:example.org":100,"@bob:example.org":100}}`,
			want:   `{"users":{"@owner:example.org":100,"@alice:example.org":0,"@carol:example.org":9007199254740991}}`,
			expect: `{"users":{"@owner:example.org":100,"@alice:example.org":0,"@carol:example.org":9007199254740991}}`,
		},
		{
			name: "a creator sets any top-level and event level", room: v12,
			cur:    `{"users":{},"ban":50,"events":{"m.room.tombstone":150,"m.room.power_levels":100}}`,
			want:   `{"users":{},"ban":1000,"events":{"m.room.tombstone":50,"m.room.power_levels":500}}`,
			expect: `{"users":{},"ban":1000,"events":{"m.room.tombstone":50,"m.room.power_levels":500}}`,
		},
		{
			name: "another creator named in the wanted levels is dropped and reported", room: v12Co,
			cur:     `{"users":{"@owner:example.org":100}}`,
			want:    `{"users":{"@owner:example.org":100,"@carol:example.org":50,"@alice:example.org":50}}`,
			expect:  `{"users":{"@owner:example.org":100,"@alice:example.org":50}}`,
			skipped: []string{"users[@carol:example.org]"},
		},
		{
			name: "a v12 room made by someone else: the bot is an ordinary user", room: v12Else,
			cur:     `{"users":{"@bot:example.org":100,"@owner:example.org":100}}`,
			want:    `{"users":{"@bot:example.org":100,"@owner:example.org":0,"@person:example.org":100,"@alice:example.org":50}}`,
			expect:  `{"users":{"@bot:example.org":100,"@owner:example.org":100,"@alice:example.org":50}}`,
			skipped: []string{"users[@owner:example.org]", "users[@person:example.org]"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cur := pl(t, tt.cur)
			got, skipped := Reconcile(tt.room, cur, pl(t, tt.want), bot)
			if !same(t, got, pl(t, tt.expect)) {
				t.Errorf("target = %s\nwant     %s", canonical(t, got), tt.expect)
			}
			var fields []string
			for _, s := range skipped {
				fields = append(fields, s.Field)
			}
			slices.Sort(fields)
			if !slices.Equal(fields, tt.skipped) {
				t.Errorf("skipped = %v, want %v", skipped, tt.skipped)
			}
			if eq := same(t, cur, got); eq != tt.expectEqual {
				t.Errorf("target equal to current = %v, want %v", eq, tt.expectEqual)
			}
			if again := pl(t, tt.cur); !same(t, again, cur) {
				t.Error("the current content was modified")
			}
		})
	}
}
