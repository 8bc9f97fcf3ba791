package provisioner

import (
	"encoding/json"
	"slices"
	"testing"

	"github.com/cactus-comments/appservice/pkg/matrix"
)

const (
	bot   = "@bot:example.org"
	owner = "@owner:example.org"
	alice = "@alice:example.org"
	bob   = "@bob:example.org"
)

func pl(t testing.TB, s string) *matrix.PowerLevels {
	t.Helper()
	var p matrix.PowerLevels
	if err := json.Unmarshal([]byte(s), &p); err != nil {
		t.Fatalf("%s: %v", s, err)
	}
	return &p
}

func TestReconcilePowerLevels(t *testing.T) {
	tests := []struct {
		name        string
		cur, want   string
		expect      string
		skipped     []string // fields
		expectEqual bool     // target equals cur (nothing to send)
	}{
		{
			name:   "plain copy of a new moderator",
			cur:    `{"users":{"@bot:example.org":100,"@owner:example.org":100}}`,
			want:   `{"users":{"@bot:example.org":100,"@owner:example.org":100,"@bob:example.org":50}}`,
			expect: `{"users":{"@bot:example.org":100,"@owner:example.org":100,"@bob:example.org":50}}`,
		},
		{
			name:   "second admin at the bot's level can be added",
			cur:    `{"users":{"@bot:example.org":100,"@owner:example.org":100}}`,
			want:   `{"users":{"@bot:example.org":100,"@owner:example.org":100,"@alice:example.org":100}}`,
			expect: `{"users":{"@bot:example.org":100,"@owner:example.org":100,"@alice:example.org":100}}`,
		},
		{
			name:    "a user at the bot's level cannot be lowered; the rest applies",
			cur:     `{"users":{"@bot:example.org":100,"@owner:example.org":100,"@alice:example.org":100}}`,
			want:    `{"users":{"@bot:example.org":100,"@owner:example.org":100,"@alice:example.org":0,"@bob:example.org":50}}`,
			expect:  `{"users":{"@bot:example.org":100,"@owner:example.org":100,"@alice:example.org":100,"@bob:example.org":50}}`,
			skipped: []string{"users[@alice:example.org]"},
		},
		{
			name:    "removing a user at the bot's level is skipped too",
			cur:     `{"users":{"@bot:example.org":100,"@alice:example.org":100}}`,
			want:    `{"users":{"@bot:example.org":100}}`,
			expect:  `{"users":{"@bot:example.org":100,"@alice:example.org":100}}`,
			skipped: []string{"users[@alice:example.org]"}, expectEqual: true,
		},
		{
			name:    "nobody is raised above the bot",
			cur:     `{"users":{"@bot:example.org":50}}`,
			want:    `{"users":{"@bot:example.org":50,"@bob:example.org":100,"@alice:example.org":50}}`,
			expect:  `{"users":{"@bot:example.org":50,"@alice:example.org":50}}`,
			skipped: []string{"users[@bob:example.org]"},
		},
		{
			name:   "the bot's own level is never changed",
			cur:    `{"users":{"@bot:example.org":100}}`,
			want:   `{"users":{"@bot:example.org":10,"@bob:example.org":5}}`,
			expect: `{"users":{"@bot:example.org":100,"@bob:example.org":5}}`,
		},
		{
			name:   "the bot's entry is kept when the wanted content has none",
			cur:    `{"users":{"@bot:example.org":100}}`,
			want:   `{"ban":40}`,
			expect: `{"ban":40,"users":{"@bot:example.org":100}}`,
		},
		{
			name:    "top-level and events levels above the bot are skipped",
			cur:     `{"users":{"@bot:example.org":50},"ban":50,"state_default":100,"events":{"m.room.name":50,"m.room.tombstone":100}}`,
			want:    `{"users":{"@bot:example.org":50},"ban":100,"state_default":50,"kick":20,"events":{"m.room.name":60,"m.room.tombstone":50,"m.room.topic":10}}`,
			expect:  `{"users":{"@bot:example.org":50},"ban":50,"state_default":100,"kick":20,"events":{"m.room.name":50,"m.room.tombstone":100,"m.room.topic":10}}`,
			skipped: []string{"ban", "events[m.room.name]", "events[m.room.tombstone]", "state_default"},
		},
		{
			name:   "unknown keys follow the wanted content",
			cur:    `{"users":{"@bot:example.org":100},"org.example.custom":1}`,
			want:   `{"users":{"@bot:example.org":100},"org.example.custom":{"x":2}}`,
			expect: `{"users":{"@bot:example.org":100},"org.example.custom":{"x":2}}`,
		},
		{
			name:    "notifications above the bot are skipped",
			cur:     `{"users":{"@bot:example.org":50},"notifications":{"room":50}}`,
			want:    `{"users":{"@bot:example.org":50},"notifications":{"room":80}}`,
			expect:  `{"users":{"@bot:example.org":50},"notifications":{"room":50}}`,
			skipped: []string{"notifications[room]"}, expectEqual: true,
		},
		{
			name:        "identical content needs no change",
			cur:         `{"users":{"@bot:example.org":100,"@owner:example.org":100},"ban":50}`,
			want:        `{"ban":50,"users":{"@owner:example.org":100,"@bot:example.org":100}}`,
			expect:      `{"users":{"@bot:example.org":100,"@owner:example.org":100},"ban":50}`,
			expectEqual: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cur := pl(t, tt.cur)
			got, skipped := ReconcilePowerLevels(cur, pl(t, tt.want), bot)
			if !samePowerLevels(got, pl(t, tt.expect)) {
				b, _ := json.Marshal(got)
				t.Errorf("target = %s\nwant     %s", b, tt.expect)
			}
			var fields []string
			for _, s := range skipped {
				fields = append(fields, s.Field)
			}
			slices.Sort(fields)
			if !slices.Equal(fields, tt.skipped) {
				t.Errorf("skipped = %v, want %v", skipped, tt.skipped)
			}
			if eq := samePowerLevels(cur, got); eq != tt.expectEqual {
				t.Errorf("target equal to current = %v, want %v", eq, tt.expectEqual)
			}
			if again := pl(t, tt.cur); !samePowerLevels(again, cur) {
				t.Error("the current content was modified")
			}
		})
	}
}

// FuzzReconcilePowerLevels checks the authorization rules the result must
// pass, whatever the two contents: every change the result makes relative
// to cur is one the bot may make.
func FuzzReconcilePowerLevels(f *testing.F) {
	f.Add(`{"users":{"@bot:example.org":100,"@alice:example.org":100}}`, `{"users":{"@alice:example.org":0,"@bob:example.org":50}}`)
	f.Add(`{"users":{"@bot:example.org":50},"ban":100}`, `{"ban":10,"users":{"@bot:example.org":100}}`)
	f.Add(`{}`, `{"users_default":60,"events":{"m.room.name":70}}`)
	f.Add(`{"users":{"@bot:example.org":"100"},"events":{"x":"20"}}`, `{"users":null,"events":{"x":200}}`)
	f.Fuzz(func(t *testing.T, curJSON, wantJSON string) {
		var cur, want matrix.PowerLevels
		if json.Unmarshal([]byte(curJSON), &cur) != nil || json.Unmarshal([]byte(wantJSON), &want) != nil {
			return
		}
		got, _ := ReconcilePowerLevels(&cur, &want, bot)
		if _, err := json.Marshal(got); err != nil {
			return // invalid Extra JSON in the input is the caller's to refuse
		}
		b := cur.UserLevel(bot)
		check := func(field string, o, n *int) {
			if eqLevel(o, n) {
				return
			}
			if (o != nil && *o > b) || (n != nil && *n > b) {
				t.Errorf("%s changed from %s to %s with the bot at %d", field, showLevel(o), showLevel(n), b)
			}
		}
		check("ban", cur.Ban, got.Ban)
		check("kick", cur.Kick, got.Kick)
		check("invite", cur.Invite, got.Invite)
		check("redact", cur.Redact, got.Redact)
		check("events_default", cur.EventsDefault, got.EventsDefault)
		check("state_default", cur.StateDefault, got.StateDefault)
		check("users_default", cur.UsersDefault, got.UsersDefault)
		ptr := func(m map[string]int, k string) *int {
			if v, ok := m[k]; ok {
				return &v
			}
			return nil
		}
		for _, k := range unionKeys(cur.Events, got.Events) {
			check("events["+k+"]", ptr(cur.Events, k), ptr(got.Events, k))
		}
		for _, k := range unionKeys(cur.Notifications, got.Notifications) {
			check("notifications["+k+"]", ptr(cur.Notifications, k), ptr(got.Notifications, k))
		}
		for _, u := range unionKeys(cur.Users, got.Users) {
			o, n := ptr(cur.Users, u), ptr(got.Users, u)
			if eqLevel(o, n) {
				continue
			}
			if u == bot {
				t.Errorf("the bot's own level changed from %s to %s", showLevel(o), showLevel(n))
				continue
			}
			if (o != nil && *o >= b) || (n != nil && *n > b) {
				t.Errorf("user %s changed from %s to %s with the bot at %d", u, showLevel(o), showLevel(n), b)
			}
		}
		// Reconciling the result again changes nothing: the job converges.
		again, skipped := ReconcilePowerLevels(got, &want, bot)
		if !samePowerLevels(again, got) {
			t.Errorf("second reconcile changed the result (skipped %v)", skipped)
		}
	})
}
