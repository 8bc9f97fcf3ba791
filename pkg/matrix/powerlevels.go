package matrix

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"math"
	"strconv"
	"strings"

	jsonv2 "github.com/go-json-experiment/json"
)

// Spec defaults for fields absent from an m.room.power_levels event.
const (
	DefaultBanLevel        = 50
	DefaultKickLevel       = 50
	DefaultRedactLevel     = 50
	DefaultInviteLevel     = 0
	DefaultStateDefault    = 50
	DefaultEventsDefault   = 0
	DefaultUsersDefault    = 0
	DefaultRoomNotifyLevel = 50
	maxLevel               = 1<<53 - 1 // the spec's canonical JSON integer range
)

// PowerLevels is the content of an m.room.power_levels event.
//
// A nil pointer or map means the key is absent, so the spec default applies
// (use the XxxLevel methods to read effective values) and marshalling emits
// only what was present: a round trip through this type changes nothing but
// the encoding of numbers. Keys this type does not know are kept in Extra
// and written back, so that copying power levels from one room to another
// carries fields of future spec versions along.
//
// Unmarshalling accepts levels encoded as JSON strings ("50"), which room
// versions before 10 allow; marshalling always writes JSON integers.
type PowerLevels struct {
	Ban           *int
	Kick          *int
	Invite        *int
	Redact        *int
	Events        map[string]int
	EventsDefault *int
	StateDefault  *int
	Users         map[string]int
	UsersDefault  *int
	Notifications map[string]int
	// Extra holds unknown top-level keys verbatim. A key here that is also
	// a known field is ignored when marshalling.
	Extra map[string]json.RawMessage
}

func levelOr(p *int, def int) int {
	if p == nil {
		return def
	}
	return *p
}

// BanLevel is the level required to ban.
func (p *PowerLevels) BanLevel() int { return levelOr(p.Ban, DefaultBanLevel) }

// KickLevel is the level required to kick.
func (p *PowerLevels) KickLevel() int { return levelOr(p.Kick, DefaultKickLevel) }

// InviteLevel is the level required to invite.
func (p *PowerLevels) InviteLevel() int { return levelOr(p.Invite, DefaultInviteLevel) }

// RedactLevel is the level required to redact others' events.
func (p *PowerLevels) RedactLevel() int { return levelOr(p.Redact, DefaultRedactLevel) }

// StateDefaultLevel is the level required for state events not in Events.
func (p *PowerLevels) StateDefaultLevel() int { return levelOr(p.StateDefault, DefaultStateDefault) }

// EventsDefaultLevel is the level required for message events not in Events.
func (p *PowerLevels) EventsDefaultLevel() int {
	return levelOr(p.EventsDefault, DefaultEventsDefault)
}

// UsersDefaultLevel is the level of users not in Users.
func (p *PowerLevels) UsersDefaultLevel() int { return levelOr(p.UsersDefault, DefaultUsersDefault) }

// RoomNotificationLevel is the level required to trigger @room notifications.
func (p *PowerLevels) RoomNotificationLevel() int {
	if v, ok := p.Notifications["room"]; ok {
		return v
	}
	return DefaultRoomNotifyLevel
}

// UserLevel is the effective level of a user.
func (p *PowerLevels) UserLevel(user string) int {
	if v, ok := p.Users[user]; ok {
		return v
	}
	return p.UsersDefaultLevel()
}

// EventLevel is the level required to send an event of eventType; state
// says whether it is sent as a state event.
func (p *PowerLevels) EventLevel(eventType string, state bool) int {
	if v, ok := p.Events[eventType]; ok {
		return v
	}
	if state {
		return p.StateDefaultLevel()
	}
	return p.EventsDefaultLevel()
}

// SetUserLevel gives user an explicit level.
func (p *PowerLevels) SetUserLevel(user string, level int) {
	if p.Users == nil {
		p.Users = map[string]int{}
	}
	p.Users[user] = level
}

// Clone returns a deep copy.
func (p *PowerLevels) Clone() *PowerLevels {
	if p == nil {
		return nil
	}
	cp := func(v *int) *int {
		if v == nil {
			return nil
		}
		n := *v
		return &n
	}
	q := &PowerLevels{
		Ban: cp(p.Ban), Kick: cp(p.Kick), Invite: cp(p.Invite), Redact: cp(p.Redact),
		EventsDefault: cp(p.EventsDefault), StateDefault: cp(p.StateDefault), UsersDefault: cp(p.UsersDefault),
		Events: maps.Clone(p.Events), Users: maps.Clone(p.Users), Notifications: maps.Clone(p.Notifications),
	}
	if p.Extra != nil {
		q.Extra = make(map[string]json.RawMessage, len(p.Extra))
		for k, v := range p.Extra {
			q.Extra[k] = bytes.Clone(v)
		}
	}
	return q
}

// MarshalJSON writes the present fields and Extra.
func (p PowerLevels) MarshalJSON() ([]byte, error) {
	m := make(map[string]any, len(p.Extra)+10)
	for k, v := range p.Extra {
		if !json.Valid(v) {
			return nil, fmt.Errorf("power levels: extra key %q holds invalid JSON", k)
		}
		m[k] = v
	}
	ints := []struct {
		key string
		v   *int
	}{
		{"ban", p.Ban}, {"kick", p.Kick}, {"invite", p.Invite}, {"redact", p.Redact},
		{"events_default", p.EventsDefault}, {"state_default", p.StateDefault}, {"users_default", p.UsersDefault},
	}
	for _, f := range ints {
		if f.v != nil {
			m[f.key] = *f.v
		} else {
			delete(m, f.key)
		}
	}
	levelMaps := []struct {
		key string
		v   map[string]int
	}{{"events", p.Events}, {"users", p.Users}, {"notifications", p.Notifications}}
	for _, f := range levelMaps {
		if f.v != nil {
			m[f.key] = f.v
		} else {
			delete(m, f.key)
		}
	}
	return json.Marshal(m)
}

// UnmarshalJSON reads power levels content, accepting string-encoded
// integers. null values count as absent. It reads strictly whoever calls
// it (see package event): a duplicate key, or invalid UTF-8, anywhere in
// the content is an error, not a level chosen by key order.
func (p *PowerLevels) UnmarshalJSON(data []byte) error {
	var raw map[string]json.RawMessage
	if err := jsonv2.Unmarshal(data, &raw); err != nil {
		return fmt.Errorf("power levels: %w", err)
	}
	if raw == nil {
		return fmt.Errorf("power levels: content is null, not an object")
	}
	var out PowerLevels
	ints := map[string]**int{
		"ban": &out.Ban, "kick": &out.Kick, "invite": &out.Invite, "redact": &out.Redact,
		"events_default": &out.EventsDefault, "state_default": &out.StateDefault, "users_default": &out.UsersDefault,
	}
	levelMaps := map[string]*map[string]int{
		"events": &out.Events, "users": &out.Users, "notifications": &out.Notifications,
	}
	for k, v := range raw {
		if dst, ok := ints[k]; ok {
			if isNull(v) {
				continue
			}
			n, err := parseLevel(v)
			if err != nil {
				return fmt.Errorf("power levels: %s: %w", k, err)
			}
			*dst = &n
			continue
		}
		if dst, ok := levelMaps[k]; ok {
			if isNull(v) {
				continue
			}
			m, err := parseLevelMap(v)
			if err != nil {
				return fmt.Errorf("power levels: %s: %w", k, err)
			}
			*dst = m
			continue
		}
		if out.Extra == nil {
			out.Extra = map[string]json.RawMessage{}
		}
		out.Extra[k] = bytes.Clone(v)
	}
	*p = out
	return nil
}

func isNull(v json.RawMessage) bool { return string(bytes.TrimSpace(v)) == "null" }

func parseLevelMap(v json.RawMessage) (map[string]int, error) {
	var raw map[string]json.RawMessage
	if err := jsonv2.Unmarshal(v, &raw); err != nil {
		return nil, fmt.Errorf("not an object of levels: %w", err)
	}
	m := make(map[string]int, len(raw))
	for k, lv := range raw {
		n, err := parseLevel(lv)
		if err != nil {
			return nil, fmt.Errorf("%q: %w", k, err)
		}
		m[k] = n
	}
	return m, nil
}

// parseLevel reads an integer level given as a JSON number or, as old room
// versions allow, a JSON string holding one.
func parseLevel(v json.RawMessage) (int, error) {
	v = bytes.TrimSpace(v)
	var s string
	quoted := len(v) > 0 && v[0] == '"'
	if quoted {
		if err := jsonv2.Unmarshal(v, &s); err != nil {
			return 0, fmt.Errorf("bad string: %w", err)
		}
		s = strings.TrimSpace(s)
	} else {
		s = string(v)
	}
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		if n > maxLevel || n < -maxLevel {
			return 0, fmt.Errorf("level %d out of range", n)
		}
		return int(n), nil
	}
	// A JSON number such as 50.0 or 1e2 is still an integer value; strings
	// are held to plain decimal, as the homeservers' int() parsing is.
	if quoted || !json.Valid(v) {
		return 0, fmt.Errorf("level %.40q is not an integer", s)
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || math.IsInf(f, 0) || math.IsNaN(f) || f != math.Trunc(f) {
		return 0, fmt.Errorf("level %.40q is not an integer", s)
	}
	if f > maxLevel || f < -maxLevel {
		return 0, fmt.Errorf("level %.40q out of range", s)
	}
	return int(f), nil
}
