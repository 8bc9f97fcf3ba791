// Package power decides what the appservice may do with a room's power
// levels and members, by the authorization rules of the room's version:
// a user's effective level, which changes of an m.room.power_levels
// content the bot may make (Reconcile), what a site's power levels look
// like in another room (CopyFor), who may ban, kick, unban or change whose
// level, and the power levels to create a moderation room with.
//
// Room version 12 changed the rules: the create event's sender and its
// content.additional_creators are the room's creators, with infinite
// power; they never appear in the power levels' users (a homeserver
// refuses any content naming one) and nobody can ban, kick or demote them.
// In versions 10 and 11 the creator is an ordinary user, at 100 in users
// by default. Rooms of every version coexist: an old site's moderation
// room (v10) keeps getting comment rooms after the homeserver's default
// moves to 12, so every decision takes the Room it is about. For a room
// about to be created, that is the createRoom request's room_version or,
// without one, the homeserver's default (GET /capabilities,
// m.room_versions.default), and the bot as creator.
//
// The package is pure: no NATS, no HTTP. Power levels use the wire type
// matrix.PowerLevels.
package power

import (
	"fmt"
	"math"
	"slices"
	"strconv"

	"github.com/go-json-experiment/json/jsontext"

	"github.com/cactus-comments/appservice/pkg/event"
	"github.com/cactus-comments/appservice/pkg/matrix"
	"github.com/cactus-comments/appservice/pkg/mxid"
)

// Infinite is the effective level of a creator of a room of version 12 or
// later: above any level a power levels content can hold (2^53-1 at most).
const Infinite = math.MaxInt

// AdminLevel is the level the bot gives site owners, and itself where it
// is not a creator.
const AdminLevel = 100

// Room is what the decisions need to know about a room: its version and
// who created it. The registry stores it as JSON beside each room.
type Room struct {
	// Version is the room version ("10", "11", "12", ...). Versions that
	// are not integers (unstable ones) count as before 12.
	Version string `json:"room_version"`
	// Creator is the sender of the room's m.room.create event.
	Creator string `json:"creator"`
	// AdditionalCreators is the create content's additional_creators
	// (meaningful from version 12).
	AdditionalCreators []string `json:"additional_creators,omitempty"`
}

// FromCreateEvent reads a Room from an m.room.create event's sender and
// content. A content without room_version is version 1, as the spec says.
func FromCreateEvent(sender string, content []byte) (Room, error) {
	var c struct {
		RoomVersion        *string        `json:"room_version"`
		AdditionalCreators jsontext.Value `json:"additional_creators"`
	}
	if err := event.DecodeContent(content, &c); err != nil {
		return Room{}, fmt.Errorf("power: m.room.create content: %w", err)
	}
	if _, err := mxid.ParseUserID(sender); err != nil {
		return Room{}, fmt.Errorf("power: m.room.create sender: %w", err)
	}
	r := Room{Version: "1", Creator: sender}
	if c.RoomVersion != nil {
		r.Version = *c.RoomVersion
	}
	if len(c.AdditionalCreators) > 0 && r.PrivilegedCreators() {
		if err := event.DecodeContent(c.AdditionalCreators, &r.AdditionalCreators); err != nil {
			return Room{}, fmt.Errorf("power: additional_creators: %w", err)
		}
	}
	return r, nil
}

// PrivilegedCreators reports whether the room's version gives its
// creators infinite power (version 12 and later).
func (r Room) PrivilegedCreators() bool {
	n, err := strconv.Atoi(r.Version)
	return err == nil && n >= 12
}

// Creators are the users with infinite power in the room: the creator and
// the additional creators from version 12 on, none before.
func (r Room) Creators() []string {
	if !r.PrivilegedCreators() {
		return nil
	}
	out := []string{r.Creator}
	for _, c := range r.AdditionalCreators {
		if !slices.Contains(out, c) {
			out = append(out, c)
		}
	}
	return out
}

// IsCreator reports whether user has infinite power in the room.
func (r Room) IsCreator(user string) bool {
	return r.PrivilegedCreators() && (user == r.Creator || slices.Contains(r.AdditionalCreators, user))
}

// UserLevel is user's effective level in the room whose power levels
// content is pl: Infinite for a creator from version 12; the content's
// level otherwise. A nil pl is a room without power levels event, where
// the creator has 100 (before version 12) and everyone else 0.
func UserLevel(r Room, pl *matrix.PowerLevels, user string) int {
	if r.IsCreator(user) {
		return Infinite
	}
	if pl == nil {
		if user == r.Creator {
			return AdminLevel
		}
		return 0
	}
	return pl.UserLevel(user)
}

// ModerationRoomOverride is the power_level_content_override of a site's
// moderation room that bot creates for owner in a room of version: the
// owner at 100; the bot at 100 too before version 12, implied as the
// creator from 12 (naming it would be refused). The owner is never made an
// additional creator: the bot could then never remove them.
func ModerationRoomOverride(version, bot, owner string) *matrix.PowerLevels {
	pl := &matrix.PowerLevels{Users: map[string]int{owner: AdminLevel}}
	if !(Room{Version: version, Creator: bot}).PrivilegedCreators() {
		pl.Users[bot] = AdminLevel
	}
	return pl
}

// showLevel shows a level in reasons.
func showLevel(n int) string {
	if n == Infinite {
		return "infinite (creator)"
	}
	return strconv.Itoa(n)
}
