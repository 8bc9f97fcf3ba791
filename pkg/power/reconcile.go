package power

import (
	"fmt"
	"maps"
	"slices"

	"github.com/cactus-comments/appservice/pkg/matrix"
)

// SkippedChange is one change of the wanted power levels that the bot may
// not make in a room, under the authorization rules of its version.
type SkippedChange struct {
	Field  string // "ban", "events[m.room.name]", "users[@a:b]", ...
	From   string // current value, "absent" if none
	To     string // wanted value, "absent" for a removal
	Reason string
}

func (s SkippedChange) String() string {
	return fmt.Sprintf("%s %s -> %s: %s", s.Field, s.From, s.To, s.Reason)
}

// plEvent is the event type whose level guards power levels changes.
const plEvent = "m.room.power_levels"

// Reconcile returns the power levels to set in room r, whose current
// content is cur, so that they match want as far as bot may change them,
// and the changes it had to leave out.
//
// Copying a content verbatim is refused as a whole by the homeserver as
// soon as one entry touches a user at the bot's own level (a second admin
// at 100), or, from version 12, names a creator; rooms then drift apart.
// Here each entry is judged on its own:
//   - nothing changes if the bot may not send power levels at all;
//   - a top-level level, an events or a notifications entry may change
//     only if neither its current nor its new value exceeds the bot's level;
//   - a user entry (other than the bot's own) may change only if its
//     current value is below the bot's level and its new value does not
//     exceed it;
//   - the bot's own entry is never changed: lowering it would cost the bot
//     the power to apply the next change;
//   - from version 12 the room's creators are never in users: their
//     entries are dropped (reported, unless it is the bot's own), and the
//     bot, if a creator, has infinite power and may change everything else.
//
// Keys matrix.PowerLevels does not know (Extra) are taken from want.
func Reconcile(r Room, cur, want *matrix.PowerLevels, bot string) (*matrix.PowerLevels, []SkippedChange) {
	b := UserLevel(r, cur, bot)
	if need := cur.EventLevel(plEvent, true); b < need {
		return cur.Clone(), []SkippedChange{{Field: plEvent, From: "current", To: "wanted",
			Reason: fmt.Sprintf("the bot's level %s is below the %d needed to change power levels", showLevel(b), need)}}
	}
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
			skipped = append(skipped, SkippedChange{f.name, showPtr(o), showPtr(n), fmt.Sprintf("above the bot's level %s", showLevel(b))})
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
		if r.IsCreator(u) {
			delete(users, u)
			if nOK && u != bot {
				skipped = append(skipped, SkippedChange{"users[" + u + "]", showEntry(o, oOK), showEntry(n, nOK),
					"a creator of the room: creators have infinite power and are never listed"})
			}
			continue
		}
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
				skipped = append(skipped, SkippedChange{"users[" + u + "]", showEntry(o, oOK), showEntry(n, nOK), reason})
			}
		}
		switch {
		case u == bot:
			keep("")
		case oOK && o >= b:
			keep(fmt.Sprintf("user is at or above the bot's level %s", showLevel(b)))
		case nOK && n > b:
			keep(fmt.Sprintf("above the bot's level %s", showLevel(b)))
		}
	}
	if want.Users == nil && len(users) == 0 {
		users = nil // absent stays absent: an empty object is no different
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
			skipped = append(skipped, SkippedChange{name + "[" + k + "]", showEntry(o, oOK), showEntry(n, nOK), fmt.Sprintf("above the bot's level %s", showLevel(b))})
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

func showPtr(p *int) string {
	if p == nil {
		return "absent"
	}
	return fmt.Sprint(*p)
}

func showEntry(n int, ok bool) string {
	if !ok {
		return "absent"
	}
	return fmt.Sprint(n)
}
