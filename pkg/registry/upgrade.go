package registry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/cactus-comments/appservice/pkg/power"
)

// ErrReplaced means a room was already replaced by another room than the
// one a change names.
var ErrReplaced = errors.New("registry: room already replaced")

// FollowUpgrade records that room old was upgraded to next (old's
// m.room.tombstone names next): the site's moderation room, or the comment
// section's room, is next from now on, with create as its version and
// creators (nil: not known yet); next is indexed, and old's index entry
// keeps its site but says what replaced it. It returns the entry now
// recorded for next.
//
// Repeating it changes nothing more. A room that is no longer the site's
// current one (its section moved to another room meanwhile) is only
// marked as replaced. ErrNotFound: old is not a room of ours;
// ErrReplaced: old was replaced by another room. seq is the event-stream
// sequence of old's tombstone (0 if unknown): old's events from before it
// still count (Room.ReplacedAfter).
func (r *Registry) FollowUpgrade(ctx context.Context, old, next string, create *power.Room, seq uint64) (Room, error) {
	prev, err := r.Lookup(ctx, old)
	if err != nil {
		return Room{}, err
	}
	if prev.ReplacedBy != "" && prev.ReplacedBy != next {
		return Room{}, fmt.Errorf("%w: %s by %s", ErrReplaced, old, prev.ReplacedBy)
	}
	if err := r.CheckReplacement(ctx, prev, next); err != nil {
		return Room{}, err
	}
	now := Room{Site: prev.Site, Section: prev.Section, RoomID: next, Alias: prev.Alias, Create: create}
	if prev.IsModeration() {
		now.Alias = ""
		// The new room first: from then on its events find their site.
		if err := r.putIndex(ctx, now); err != nil {
			return Room{}, err
		}
		if _, err := r.UpdateSite(ctx, prev.Site, func(s *Site) (bool, error) {
			switch {
			case s.ModerationRoom == old:
				s.ModerationRoom, s.ModerationCreate = next, create
				return true, nil
			case s.ModerationRoom == next && s.ModerationCreate == nil && create != nil:
				s.ModerationCreate = create
				return true, nil
			}
			return false, nil
		}); err != nil {
			return Room{}, err
		}
	} else {
		cur, err := r.UpdateRoom(ctx, prev.Site, prev.Section, func(c *Room) (bool, error) {
			switch {
			case c.RoomID == old:
				*c = Room{Site: c.Site, Section: c.Section, RoomID: next, Alias: c.Alias, Create: create}
				return true, nil
			case c.RoomID == next && c.Create == nil && create != nil:
				c.Create = create
				return true, nil
			}
			return false, nil
		})
		if err != nil {
			return Room{}, err
		}
		if cur.RoomID == next {
			// Indexed again: a first attempt may have stopped between
			// the room's write and its index's.
			if err := r.putIndex(ctx, cur); err != nil {
				return Room{}, err
			}
			now = cur
		}
	}
	prev.ReplacedBy = next
	if prev.ReplacedSeq == 0 || (seq > 0 && seq < prev.ReplacedSeq) {
		prev.ReplacedSeq = seq
	}
	if err := r.putIndex(ctx, prev); err != nil {
		return Room{}, err
	}
	return now, nil
}

// SetCreate records the version and creators of a room recorded without
// them. A room that is no longer current, or already has them, is left as
// it is.
func (r *Registry) SetCreate(ctx context.Context, roomID string, create power.Room) error {
	room, err := r.Lookup(ctx, roomID)
	if err != nil {
		return err
	}
	if room.ReplacedBy != "" {
		return nil
	}
	if room.IsModeration() {
		_, err := r.UpdateSite(ctx, room.Site, func(s *Site) (bool, error) {
			if s.ModerationRoom != roomID || s.ModerationCreate != nil {
				return false, nil
			}
			s.ModerationCreate = &create
			return true, nil
		})
		return err
	}
	_, err = r.UpdateRoom(ctx, room.Site, room.Section, func(c *Room) (bool, error) {
		if c.RoomID != roomID || c.Create != nil {
			return false, nil
		}
		c.Create = &create
		return true, nil
	})
	return err
}

// CheckReplacement returns ErrNotSuccessor when next is already a room of
// ours other than prev's replacement (a redelivery, or a first attempt
// that stopped half-way): whatever a tombstone in prev says, another
// room's place is not prev's to take.
func (r *Registry) CheckReplacement(ctx context.Context, prev Room, next string) error {
	switch known, err := r.Lookup(ctx, next); {
	case errors.Is(err, ErrNotFound):
		return nil
	case err != nil:
		return err
	case known.Site != prev.Site || known.Section != prev.Section:
		return fmt.Errorf("%w: %s is already a room of site %q", ErrNotSuccessor, next, known.Site)
	}
	return nil
}

// UpdateRoom applies fn to a comment room's entry and stores the result
// with a compare-and-set, retrying on conflicting writes, and re-indexes
// it. fn returning false means no change is needed.
func (r *Registry) UpdateRoom(ctx context.Context, site, section string, fn func(*Room) (changed bool, err error)) (Room, error) {
	name := site + "_" + section
	var (
		out     Room
		changed bool
		fnErr   error
	)
	_, err := r.rooms.Update(ctx, roomKey(site, section), func(cur []byte) ([]byte, bool, error) {
		if cur == nil {
			return nil, false, notFound("room", name)
		}
		out = Room{}
		if err := decode(cur, &out); err != nil {
			return nil, false, wrap("decode room", name, err)
		}
		changed, fnErr = fn(&out)
		if fnErr != nil || !changed {
			return nil, false, fnErr
		}
		b, err := json.Marshal(out)
		if err != nil {
			return nil, false, wrap("encode room", name, err)
		}
		return b, true, nil
	})
	switch {
	case fnErr != nil:
		return out, fnErr
	case errors.Is(err, ErrNotFound):
		return Room{}, err
	case err != nil:
		return Room{}, wrap("update room", name, err)
	case !changed:
		return out, nil
	}
	return out, r.putIndex(ctx, out)
}
