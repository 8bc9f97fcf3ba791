package provisioner

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"slices"

	"github.com/cactus-comments/appservice/pkg/matrix"
)

// SkippedChange is one change of the wanted power levels that the bot may
// not make in a room, under the Matrix authorization rules for
// m.room.power_levels.
type SkippedChange struct {
	Field  string // "ban", "events[m.room.name]", "users[@a:b]", ...
	From   string // current value, "absent" if none
	To     string // wanted value, "absent" for a removal
	Reason string
}

func (s SkippedChange) String() string {
	return fmt.Sprintf("%s %s -> %s: %s", s.Field, s.From, s.To, s.Reason)
}

// ReconcilePowerLevels returns the power levels to set in a room whose
// current content is cur so that it matches want as far as bot is allowed
// to change it, and the changes it had to leave out.
//
// The original appservice copied the moderation room's power levels
// verbatim, which the homeserver refuses as a whole as soon as one entry
// touches a user at the bot's own level (a second admin at 100): every later
// change was then lost and rooms drifted apart. Here each entry is judged on
// its own, by the rules of the room versions we create (v10+):
//   - a top-level level, an events or a notifications entry may change only
//     if neither its current nor its new value exceeds the bot's level;
//   - a user entry (other than the bot's own) may change only if its current
//     value is below the bot's level and its new value does not exceed it;
//   - the bot's own entry is never changed: lowering it would cost the bot
//     the power to apply the next change.
//
// Keys this type does not know (Extra) are taken from want.
func ReconcilePowerLevels(cur, want *matrix.PowerLevels, bot string) (*matrix.PowerLevels, []SkippedChange) {
	b := cur.UserLevel(bot)
	target := want.Clone()
	var skipped []SkippedChange

	scalars := []struct {
		name     string
		cur, tgt **int
	}{
		{"ban", &cur.Ban, &target.Ban},
		{"kick", &cur.Kick, &target.Kick},
		{"invite", &cur.Invite, &target.Invite},
		{"redact", &cur.Redact, &target.Redact},
		{"events_default", &cur.EventsDefault, &target.EventsDefault},
		{"state_default", &cur.StateDefault, &target.StateDefault},
		{"users_default", &cur.UsersDefault, &target.UsersDefault},
	}
	for _, f := range scalars {
		o, n := *f.cur, *f.tgt
		if eqLevel(o, n) {
			continue
		}
		if (o != nil && *o > b) || (n != nil && *n > b) {
			*f.tgt = copyLevel(o)
			skipped = append(skipped, SkippedChange{f.name, showLevel(o), showLevel(n), fmt.Sprintf("above the bot's level %d", b)})
		}
	}
	target.Events, skipped = reconcileMap("events", cur.Events, target.Events, b, skipped)
	target.Notifications, skipped = reconcileMap("notifications", cur.Notifications, target.Notifications, b, skipped)

	users := maps.Clone(target.Users)
	if users == nil && len(cur.Users) > 0 {
		users = map[string]int{}
	}
	for _, u := range unionKeys(cur.Users, target.Users) {
		o, oOK := cur.Users[u]
		n, nOK := target.Users[u]
		if oOK == nOK && o == n {
			continue
		}
		keep := func(reason string) {
			if oOK {
				users[u] = o
			} else {
				delete(users, u)
			}
			if u != bot {
				skipped = append(skipped, SkippedChange{"users[" + u + "]", showMapLevel(o, oOK), showMapLevel(n, nOK), reason})
			}
		}
		switch {
		case u == bot:
			keep("")
		case oOK && o >= b:
			keep(fmt.Sprintf("user is at or above the bot's level %d", b))
		case nOK && n > b:
			keep(fmt.Sprintf("above the bot's level %d", b))
		}
	}
	target.Users = users
	return target, skipped
}

func reconcileMap(name string, cur, want map[string]int, b int, skipped []SkippedChange) (map[string]int, []SkippedChange) {
	out := maps.Clone(want)
	if out == nil && len(cur) > 0 {
		// Only an explicit empty object can be compared key by key; nil
		// would drop the key and with it entries we may have to keep.
		out = map[string]int{}
	}
	for _, k := range unionKeys(cur, want) {
		o, oOK := cur[k]
		n, nOK := want[k]
		if oOK == nOK && o == n {
			continue
		}
		if (oOK && o > b) || (nOK && n > b) {
			if oOK {
				out[k] = o
			} else {
				delete(out, k)
			}
			skipped = append(skipped, SkippedChange{name + "[" + k + "]", showMapLevel(o, oOK), showMapLevel(n, nOK), fmt.Sprintf("above the bot's level %d", b)})
		}
	}
	if want == nil && len(out) == 0 {
		return nil, skipped
	}
	return out, skipped
}

func unionKeys(a, b map[string]int) []string {
	keys := slices.Collect(maps.Keys(a))
	for k := range b {
		if _, ok := a[k]; !ok {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	return keys
}

func eqLevel(a, b *int) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	return *a == *b
}

func copyLevel(p *int) *int {
	if p == nil {
		return nil
	}
	n := *p
	return &n
}

func showLevel(p *int) string {
	if p == nil {
		return "absent"
	}
	return fmt.Sprint(*p)
}

func showMapLevel(n int, ok bool) string {
	if !ok {
		return "absent"
	}
	return fmt.Sprint(n)
}

// canonicalJSON encodes v with sorted keys and uniform spacing, so that two
// contents that mean the same compare equal byte for byte.
func canonicalJSON(v any) ([]byte, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	var generic any
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	if err := d.Decode(&generic); err != nil {
		return nil, err
	}
	return json.Marshal(generic)
}

// samePowerLevels reports whether a and b are the same content.
func samePowerLevels(a, b *matrix.PowerLevels) bool {
	ca, err1 := canonicalJSON(a)
	cb, err2 := canonicalJSON(b)
	return err1 == nil && err2 == nil && bytes.Equal(ca, cb)
}
