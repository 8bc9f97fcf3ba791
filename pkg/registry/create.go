package registry

import (
	"context"
	"errors"
	"fmt"

	"github.com/cactus-comments/appservice/pkg/event"
	"github.com/cactus-comments/appservice/pkg/mxid"
	"github.com/cactus-comments/appservice/pkg/power"
)

// CreateReader reads a room's m.room.create event, sender included
// (*matrix.Client does).
type CreateReader interface {
	CreateEvent(ctx context.Context, room mxid.RoomID) (*event.Event, error)
}

// ReadRoom reads a room's version and creators from the homeserver.
// Errors of the homeserver are returned as they are (matrix.IsForbidden:
// the bot may not read the room).
func ReadRoom(ctx context.Context, hs CreateReader, room mxid.RoomID) (power.Room, error) {
	ev, err := hs.CreateEvent(ctx, room)
	if err != nil {
		return power.Room{}, err
	}
	r, err := power.FromCreateEvent(ev.Sender, ev.Content)
	if err != nil {
		return power.Room{}, fmt.Errorf("registry: room %s: %w", room, err)
	}
	return r, nil
}

// ErrNotSuccessor is the answer to a tombstone that names a room which is
// not an upgrade of the tombstoned room: anyone allowed to send a
// tombstone (a site's owner, in the site's rooms) may name any room in
// it, another site's included.
var ErrNotSuccessor = errors.New("registry: the named replacement is not an upgrade of the room")

// ReadSuccessor reads the version and creators of next, the replacement
// that a tombstone in old names, and checks that next is an upgrade of
// old: its create event names old as its predecessor, as every upgrade
// (POST /rooms/{id}/upgrade, on every homeserver) writes it.
func ReadSuccessor(ctx context.Context, hs CreateReader, next, old mxid.RoomID) (power.Room, error) {
	ev, err := hs.CreateEvent(ctx, next)
	if err != nil {
		return power.Room{}, err
	}
	var c struct {
		Predecessor *struct {
			RoomID string `json:"room_id"`
		} `json:"predecessor"`
	}
	if err := event.DecodeContent(ev.Content, &c); err != nil || c.Predecessor == nil || c.Predecessor.RoomID != old.String() {
		return power.Room{}, fmt.Errorf("%w: %s does not name %s as its predecessor", ErrNotSuccessor, next, old)
	}
	r, err := power.FromCreateEvent(ev.Sender, ev.Content)
	if err != nil {
		return power.Room{}, fmt.Errorf("registry: room %s: %w", next, err)
	}
	return r, nil
}
