package power

import (
	"errors"
	"fmt"

	"github.com/cactus-comments/appservice/pkg/matrix"
)

// Errors of the moderation decisions; test with errors.Is.
var (
	// ErrCreator: the target is a creator of a room of version 12 or
	// later, whom nobody can ban, kick or demote. Not worth retrying.
	ErrCreator = errors.New("the user is a creator of the room")
	// ErrInsufficientPower: the actor's level does not allow the action.
	ErrInsufficientPower = errors.New("not enough power")
)

// CanBan reports whether actor may ban target: the actor needs the ban
// level and a level above the target's.
func CanBan(r Room, pl *matrix.PowerLevels, actor, target string) error {
	return canRemove(r, pl, "ban", banLevel(pl), actor, target)
}

// CanKick reports whether actor may kick target: the kick level and a
// level above the target's.
func CanKick(r Room, pl *matrix.PowerLevels, actor, target string) error {
	return canRemove(r, pl, "kick", kickLevel(pl), actor, target)
}

// canRemove: nobody removes a creator; otherwise the action's level and a
// level above the target's.
func canRemove(r Room, pl *matrix.PowerLevels, action string, need int, actor, target string) error {
	if err := notCreator(r, action, target); err != nil {
		return err
	}
	me, them := UserLevel(r, pl, actor), UserLevel(r, pl, target)
	if me < need {
		return refused(action, actor, target, fmt.Sprintf("level %s is below the %s level %d", showLevel(me), action, need))
	}
	return above(action, actor, target, me, them)
}

// CanUnban reports whether actor may lift target's ban. An unban is a
// leave sent for someone else: the ban level, the kick level, and a level
// above the target's.
func CanUnban(r Room, pl *matrix.PowerLevels, actor, target string) error {
	me, them := UserLevel(r, pl, actor), UserLevel(r, pl, target)
	if need := banLevel(pl); me < need {
		return refused("unban", actor, target, fmt.Sprintf("level %s is below the ban level %d", showLevel(me), need))
	}
	if need := kickLevel(pl); me < need {
		return refused("unban", actor, target, fmt.Sprintf("level %s is below the kick level %d", showLevel(me), need))
	}
	return above("unban", actor, target, me, them)
}

// CanSetUserLevel reports whether actor may give target the level (promote
// or demote) by changing the users of power levels content pl: a creator
// of a version 12 room has no entry to change; the actor needs the level
// of m.room.power_levels, may not change another user listed at or above
// their own level, and may not give more than their own level.
func CanSetUserLevel(r Room, pl *matrix.PowerLevels, actor, target string, level int) error {
	if err := notCreator(r, "set the level of", target); err != nil {
		return err
	}
	if pl == nil {
		return nil // the first power levels event of a room is always allowed
	}
	me := UserLevel(r, pl, actor)
	if need := pl.EventLevel(plEvent, true); me < need {
		return refused("set the level of", actor, target, fmt.Sprintf("level %s is below the %d needed to change power levels", showLevel(me), need))
	}
	if old, listed := pl.Users[target]; listed && target != actor && old >= me {
		return refused("set the level of", actor, target, fmt.Sprintf("the target's level %d is not below the actor's %s", old, showLevel(me)))
	}
	if level > me {
		return refused("set the level of", actor, target, fmt.Sprintf("level %d is above the actor's %s", level, showLevel(me)))
	}
	return nil
}

func notCreator(r Room, action, target string) error {
	if r.IsCreator(target) {
		return fmt.Errorf("cannot %s %s: %w, whom nobody can ban, kick or demote", action, target, ErrCreator)
	}
	return nil
}

func above(action, actor, target string, me, them int) error {
	if me <= them {
		return refused(action, actor, target, fmt.Sprintf("level %s is not above the target's %s", showLevel(me), showLevel(them)))
	}
	return nil
}

func refused(action, actor, target, why string) error {
	return fmt.Errorf("%s cannot %s %s: %w: %s", actor, action, target, ErrInsufficientPower, why)
}

// banLevel and kickLevel read nil (no power levels event) as the spec's
// defaults.
func banLevel(pl *matrix.PowerLevels) int {
	if pl == nil {
		return matrix.DefaultBanLevel
	}
	return pl.BanLevel()
}

func kickLevel(pl *matrix.PowerLevels) int {
	if pl == nil {
		return matrix.DefaultKickLevel
	}
	return pl.KickLevel()
}
