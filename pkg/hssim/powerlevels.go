package hssim

import (
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/cactus-comments/appservice/pkg/mxid"
)

// powerLevels is a parsed m.room.power_levels content with the spec's
// defaults for absent keys.
type powerLevels struct {
	exists        bool // false: no power levels event, the creator rules
	creator       string
	creators      map[string]bool // infinite power (room version 12+)
	ban, kick     int
	redact        int
	invite        int
	stateDefault  int
	eventsDefault int
	usersDefault  int
	events        map[string]int
	users         map[string]int
	notifications map[string]int
	present       map[string]bool // which top-level keys the content had
}

var plTopLevel = []string{"ban", "kick", "redact", "invite", "state_default", "events_default", "users_default"}

// plInt reads a power level: an integer, or in room versions before 10 a
// string holding one (old clients wrote "50").
func plInt(v any, allowStrings bool) (int, error) {
	switch x := v.(type) {
	case int:
		return x, nil
	case float64:
		if x != math.Trunc(x) || math.Abs(x) > 1<<53 {
			return 0, fmt.Errorf("not an integer: %v", x)
		}
		return int(x), nil
	case json.Number:
		n, err := strconv.Atoi(x.String())
		if err != nil {
			return 0, fmt.Errorf("not an integer: %v", x)
		}
		return n, nil
	case string:
		if !allowStrings {
			return 0, fmt.Errorf("power level %q must be an integer in this room version", x)
		}
		n, err := strconv.Atoi(strings.TrimSpace(x))
		if err != nil {
			return 0, fmt.Errorf("not an integer: %q", x)
		}
		return n, nil
	}
	return 0, fmt.Errorf("not an integer: %v", v)
}

func intMap(v any, allowStrings bool) (map[string]int, error) {
	out := map[string]int{}
	if v == nil {
		return out, nil
	}
	m, ok := v.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("must be an object")
	}
	for k, x := range m {
		n, err := plInt(x, allowStrings)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", k, err)
		}
		out[k] = n
	}
	return out, nil
}

// roomAuth is what the authorization rules take from a room's create
// event and version.
type roomAuth struct {
	creator      string   // has 100 while there is no power levels event (before v12)
	creators     []string // privileged creators (v12+): sender, then additional_creators
	stringLevels bool     // levels may be strings (before v10)
}

func (a roomAuth) isCreator(userID string) bool { return slices.Contains(a.creators, userID) }

// parsePowerLevels reads content; with no content the room has no power
// levels event and the creator has 100 (infinite power from version 12).
func parsePowerLevels(content map[string]any, ra roomAuth) (powerLevels, error) {
	allowStrings := ra.stringLevels
	pl := powerLevels{creator: ra.creator, ban: 50, kick: 50, redact: 50, invite: 0, stateDefault: 50, present: map[string]bool{}}
	if len(ra.creators) > 0 {
		pl.creators = map[string]bool{}
		for _, c := range ra.creators {
			pl.creators[c] = true
		}
	}
	if content == nil {
		pl.stateDefault = 0
		pl.events, pl.users, pl.notifications = map[string]int{}, map[string]int{}, map[string]int{}
		return pl, nil
	}
	pl.exists = true
	dst := map[string]*int{"ban": &pl.ban, "kick": &pl.kick, "redact": &pl.redact, "invite": &pl.invite,
		"state_default": &pl.stateDefault, "events_default": &pl.eventsDefault, "users_default": &pl.usersDefault}
	for _, k := range plTopLevel {
		v, ok := content[k]
		if !ok {
			continue
		}
		n, err := plInt(v, allowStrings)
		if err != nil {
			return pl, fmt.Errorf("%s: %w", k, err)
		}
		*dst[k] = n
		pl.present[k] = true
	}
	var err error
	if pl.events, err = intMap(content["events"], allowStrings); err != nil {
		return pl, fmt.Errorf("events: %w", err)
	}
	if pl.users, err = intMap(content["users"], allowStrings); err != nil {
		return pl, fmt.Errorf("users: %w", err)
	}
	if pl.notifications, err = intMap(content["notifications"], allowStrings); err != nil {
		return pl, fmt.Errorf("notifications: %w", err)
	}
	return pl, nil
}

func (pl powerLevels) userLevel(userID string) int {
	if pl.creators[userID] {
		return CreatorLevel
	}
	if !pl.exists {
		if userID == pl.creator {
			return 100
		}
		return 0
	}
	if n, ok := pl.users[userID]; ok {
		return n
	}
	return pl.usersDefault
}

func (pl powerLevels) eventLevel(typ string, state bool) int {
	if n, ok := pl.events[typ]; ok {
		return n
	}
	if state {
		return pl.stateDefault
	}
	return pl.eventsDefault
}

// roomPowerLevels parses the room's current power levels leniently (state
// that is already in a room was accepted once).
func (s *Server) roomPowerLevels(r *room) powerLevels {
	ra := r.auth()
	ra.stringLevels = true
	pl, err := parsePowerLevels(r.stateContent("m.room.power_levels", ""), ra)
	if err != nil {
		s.log.Warn("room has unreadable power levels", "room_id", r.id, "err", err)
	}
	return pl
}

// checkPowerLevelsChange applies the spec's authorization rules for a new
// m.room.power_levels event: levels are integers (strings before v10),
// users are user ids, creators of a version 12 room are not among them,
// nobody raises anything above their own level, and nobody changes a user
// at or above their own level except themselves.
func (s *Server) checkPowerLevelsChange(old powerLevels, ra roomAuth, newContent map[string]any, sender string) *matrixError {
	nw, err := parsePowerLevels(newContent, ra)
	if err != nil {
		return errf(http.StatusBadRequest, "M_BAD_JSON", "Invalid power levels: %v", err)
	}
	for uid := range nw.users {
		if _, err := mxid.ParseUserID(uid); err != nil {
			return errf(http.StatusBadRequest, "M_UNKNOWN", "Not a valid user_id: %s", uid)
		}
	}
	for _, c := range ra.creators {
		if _, listed := nw.users[c]; listed {
			return s.errCreatorInUsers(c)
		}
	}
	if !old.exists {
		return nil // the first power levels event is always allowed
	}
	me := old.userLevel(sender)
	oldTop := map[string]int{"ban": old.ban, "kick": old.kick, "redact": old.redact, "invite": old.invite,
		"state_default": old.stateDefault, "events_default": old.eventsDefault, "users_default": old.usersDefault}
	newTop := map[string]int{"ban": nw.ban, "kick": nw.kick, "redact": nw.redact, "invite": nw.invite,
		"state_default": nw.stateDefault, "events_default": nw.eventsDefault, "users_default": nw.usersDefault}
	for _, k := range plTopLevel {
		if old.present[k] == nw.present[k] && oldTop[k] == newTop[k] {
			continue
		}
		if old.present[k] && oldTop[k] > me {
			return errForbidden("You don't have permission to change %s from %d (your level is %s)", k, oldTop[k], level(me))
		}
		if nw.present[k] && newTop[k] > me {
			return errForbidden("You don't have permission to set %s to %d (your level is %s)", k, newTop[k], level(me))
		}
	}
	for _, pair := range []struct {
		name     string
		old, new map[string]int
	}{{"events", old.events, nw.events}, {"notifications", old.notifications, nw.notifications}} {
		if e := checkLevelMap(pair.name, pair.old, pair.new, me); e != nil {
			return e
		}
	}
	for uid := range union(old.users, nw.users) {
		ov, hadOld := old.users[uid]
		nv, hasNew := nw.users[uid]
		if hadOld == hasNew && ov == nv {
			continue
		}
		if hadOld && uid != sender && ov >= me {
			return errForbidden("You don't have permission to change the level of %s (%d, your level is %s)", uid, ov, level(me))
		}
		if hasNew && nv > me {
			return errForbidden("You don't have permission to raise %s to %d (your level is %s)", uid, nv, level(me))
		}
	}
	return nil
}

func checkLevelMap(name string, old, nw map[string]int, me int) *matrixError {
	for k := range union(old, nw) {
		ov, hadOld := old[k]
		nv, hasNew := nw[k]
		if hadOld == hasNew && ov == nv {
			continue
		}
		if hadOld && ov > me {
			return errForbidden("You don't have permission to change %s.%s from %d (your level is %s)", name, k, ov, level(me))
		}
		if hasNew && nv > me {
			return errForbidden("You don't have permission to set %s.%s to %d (your level is %s)", name, k, nv, level(me))
		}
	}
	return nil
}

func union(a, b map[string]int) map[string]struct{} {
	out := map[string]struct{}{}
	for k := range a {
		out[k] = struct{}{}
	}
	for k := range b {
		out[k] = struct{}{}
	}
	return out
}

// defaultPowerLevels is what Synapse's createRoom writes before applying
// the preset's and the request's overrides. From room version 12 the
// creators are implied (users stays empty) and only they may upgrade the
// room by default (m.room.tombstone at 150).
func defaultPowerLevels(creator string, extraAdmins []string, rv roomVersion) map[string]any {
	users := map[string]any{}
	tombstone := 150
	if !rv.privilegedCreators() {
		users[creator] = 100
		for _, u := range extraAdmins {
			users[u] = 100
		}
		tombstone = 100
	}
	return map[string]any{
		"users":         users,
		"users_default": 0,
		"events": map[string]any{
			"m.room.name": 50, "m.room.power_levels": 100, "m.room.history_visibility": 100,
			"m.room.canonical_alias": 50, "m.room.avatar": 50, "m.room.tombstone": tombstone,
			"m.room.server_acl": 100, "m.room.encryption": 100,
		},
		"events_default": 0,
		"state_default":  50,
		"ban":            50,
		"kick":           50,
		"redact":         50,
		"invite":         50,
		"historical":     100,
	}
}
