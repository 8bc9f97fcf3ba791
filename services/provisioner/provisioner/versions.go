package provisioner

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/cactus-comments/appservice/pkg/matrix"
	"github.com/cactus-comments/appservice/pkg/mxid"
	"github.com/cactus-comments/appservice/pkg/power"
	"github.com/cactus-comments/appservice/pkg/registry"
	"github.com/cactus-comments/appservice/pkg/worker"
)

// Rooms of every version coexist (an old site's v10 moderation room gets
// v12 comment rooms once the homeserver's default moves), so every power
// decision takes the version and creators of the rooms it is about: the
// registry keeps them; what it lacks (rooms recorded before it kept them)
// is read from the room's create event once and recorded.

// versionCache remembers the homeserver's default room version for a
// while: an alias query should cost one createRoom, not a capabilities
// call too. The version is sent explicitly with the createRoom, so a
// stale value only makes a room of the previous default, never a room
// whose version we do not know.
type versionCache struct {
	fetch func(context.Context) (string, error)
	ttl   time.Duration
	now   func() time.Time

	mu sync.Mutex
	v  string
	at time.Time
}

func (c *versionCache) get(ctx context.Context) (string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.v != "" && c.now().Sub(c.at) < c.ttl {
		return c.v, nil
	}
	v, err := c.fetch(ctx)
	if err != nil {
		return "", fmt.Errorf("default room version: %w", err)
	}
	c.v, c.at = v, c.now()
	return v, nil
}

// forget drops the cached version (the homeserver refused it).
func (c *versionCache) forget() {
	c.mu.Lock()
	c.v = ""
	c.mu.Unlock()
}

// newRoom is the room the bot is about to create: the homeserver's
// default version, with the bot as its creator.
func (p *Provisioner) newRoom(ctx context.Context) (power.Room, error) {
	v, err := p.versions.get(ctx)
	if err != nil {
		return power.Room{}, err
	}
	return power.Room{Version: v, Creator: p.bot.String()}, nil
}

// errUnreadable: the bot may not read the room (it is not in it).
var errUnreadable = errors.New("the bot cannot read the room")

// learnCreate reads a room's version and creators from its create event
// and records them. errUnreadable if the bot may not read the room.
func (p *Provisioner) learnCreate(ctx context.Context, room mxid.RoomID) (power.Room, error) {
	r, err := registry.ReadRoom(ctx, p.hs, room)
	if matrix.IsForbidden(err) || matrix.IsNotFound(err) {
		// Retrying cannot help until someone invites the bot.
		return power.Room{}, worker.Permanent(fmt.Errorf("%w %s: %v", errUnreadable, room, err))
	}
	if err != nil {
		return power.Room{}, err
	}
	if err := p.reg.SetCreate(ctx, room.String(), r); err != nil && !errors.Is(err, registry.ErrNotFound) {
		p.log.Warn("room version not recorded; it will be read again", "room_id", room.String(), "err", err)
	}
	return r, nil
}

// moderationRoom is the version and creators of a site's moderation
// room, read from the homeserver if the registry lacks them. nil while
// the bot cannot read the room (a replacement it was not invited to):
// the site's power levels then keep their last snapshot.
func (p *Provisioner) moderationRoom(ctx context.Context, site *registry.Site) (*power.Room, error) {
	if site.ModerationCreate != nil {
		return site.ModerationCreate, nil
	}
	id, err := mxid.ParseRoomID(site.ModerationRoom)
	if err != nil {
		return nil, fmt.Errorf("site %q: bad moderation room id: %w", site.Name, err)
	}
	r, err := p.learnCreate(ctx, id)
	if errors.Is(err, errUnreadable) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return &r, nil
}

// roomOf is the version and creators of a site's room (comment or
// moderation), from the registry or the homeserver.
func (p *Provisioner) roomOf(ctx context.Context, site *registry.Site, room mxid.RoomID) (power.Room, error) {
	if room.String() == site.ModerationRoom {
		r, err := p.moderationRoom(ctx, site)
		if err != nil {
			return power.Room{}, err
		}
		if r == nil {
			return power.Room{}, worker.Permanent(fmt.Errorf("%w %s", errUnreadable, room))
		}
		return *r, nil
	}
	rec, err := p.reg.Lookup(ctx, room.String())
	if err == nil && rec.Create != nil {
		return *rec.Create, nil
	}
	if err != nil && !errors.Is(err, registry.ErrNotFound) {
		return power.Room{}, err
	}
	return p.learnCreate(ctx, room)
}

// siteLevels is a site's power levels as they should be in room dst:
// the snapshot copied into dst's version (see power.CopyFor). src is the
// moderation room, zero while unknown.
func siteLevels(src *power.Room, snapshot *matrix.PowerLevels, dst power.Room) *matrix.PowerLevels {
	var s power.Room
	if src != nil {
		s = *src
	}
	return power.CopyFor(s, snapshot, dst)
}

// refusal explains a ban or unban the homeserver refused (err) by the
// rules of the room's version. Nobody can ban a creator of a room of
// version 12 or later: that is reported (log and metric) as refused and
// not retried. Otherwise err stands, with the reason the rules give if
// they explain it (the bot's level, say).
func (p *Provisioner) refusal(ctx context.Context, site *registry.Site, room mxid.RoomID, user mxid.UserID, ban bool, err error) error {
	r, rerr := p.roomOf(ctx, site, room)
	if rerr != nil {
		return err
	}
	pl, perr := p.hs.GetPowerLevels(ctx, room)
	if matrix.IsNotFound(perr) {
		pl = nil // a room without power levels: the defaults apply
	} else if perr != nil {
		return err
	}
	action, why := "ban", power.CanBan(r, pl, p.bot.String(), user.String())
	if !ban {
		action, why = "unban", power.CanUnban(r, pl, p.bot.String(), user.String())
	}
	switch {
	case errors.Is(why, power.ErrCreator):
		p.m.refused.WithLabelValues(action, "creator").Inc()
		p.log.Warn("ban not applied: nobody can ban a creator of the room", "site", site.Name, "room_id", room.String(),
			"user", user.String(), "room_version", r.Version)
		return nil
	case why != nil:
		return fmt.Errorf("%w (%v)", err, why)
	}
	return err
}

// existingRoom reads the version and creators of a comment room that
// exists already (made by another replica, an earlier attempt, or before
// the registry), to record it with them.
func (p *Provisioner) existingRoom(ctx context.Context, room mxid.RoomID) (*power.Room, error) {
	create, err := registry.ReadRoom(ctx, p.hs, room)
	if err != nil {
		return nil, err
	}
	return &create, nil
}
