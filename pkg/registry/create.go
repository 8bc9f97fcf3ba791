package registry

import (
	"context"
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
