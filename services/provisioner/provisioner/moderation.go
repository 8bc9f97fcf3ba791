package provisioner

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/cactus-comments/appservice/pkg/event"
	"github.com/cactus-comments/appservice/pkg/matrix"
	"github.com/cactus-comments/appservice/pkg/mxid"
	"github.com/cactus-comments/appservice/pkg/namespace"
	"github.com/cactus-comments/appservice/pkg/registry"
	"github.com/cactus-comments/appservice/pkg/worker"
)

// handleModeration applies one moderation event. The consumer hands them
// over one at a time in stream order (invariant 5); the work itself is
// queued as jobs, so this stays short even for a site with many rooms.
//
// The snapshot in the registry is updated first, then jobs are queued.
// Jobs are queued only when the snapshot changed, or when this is a
// redelivery (the previous attempt may have changed the snapshot and died
// before queuing): an event that changes nothing, such as a moderator
// banning a user the site already bans, costs no homeserver call. The job
// ids derive from the event id, so a redelivery queues nothing twice.
func (p *Provisioner) handleModeration(ctx context.Context, m jetstream.Msg) error {
	var e event.Event
	if err := json.Unmarshal(m.Data(), &e); err != nil {
		p.m.moderation.WithLabelValues("ignored").Inc()
		return worker.Permanent(fmt.Errorf("undecodable event: %w", err))
	}
	// The bot only acts to propagate: its own bans and power levels coming
	// back are echoes, and acting on them would loop. This is checked
	// first because a fan-out over 10,000 rooms sends 10,000 echoes.
	if e.Sender == p.bot.String() {
		p.m.moderation.WithLabelValues("echo").Inc()
		return nil
	}
	if err := e.Validate(); err != nil {
		p.m.moderation.WithLabelValues("ignored").Inc()
		return worker.Permanent(err)
	}
	redelivered := worker.Retried(ctx)
	log := p.log.With("event_id", e.EventID, "room_id", e.RoomID, "type", e.Type, "sender", e.Sender)

	room, err := p.lookupRoom(ctx, e.RoomID)
	if errors.Is(err, registry.ErrNotFound) {
		p.m.moderation.WithLabelValues("ignored").Inc()
		log.Debug("moderation event in a room that is not ours")
		return nil
	}
	if err != nil {
		return classify(err)
	}
	log = log.With("site", room.Site)
	progress := func() { _ = m.InProgress() }

	switch {
	case e.Type == "m.room.member" && e.StateKey != nil:
		user := *e.StateKey
		var ban bool
		switch e.Membership() {
		case matrix.MembershipBan:
			ban = true
		case matrix.MembershipLeave:
			if e.Sender == user {
				p.m.moderation.WithLabelValues("ignored").Inc()
				return nil
			}
			// A leave caused by someone else is an unban if the user was
			// banned, else a kick, which is not propagated.
			prev := e.PrevMembership()
			if prev != matrix.MembershipBan {
				if prev != "" {
					p.m.moderation.WithLabelValues("ignored").Inc()
					return nil
				}
				site, err := p.reg.Site(ctx, room.Site)
				if err != nil {
					return classify(err)
				}
				if !site.Banned(user) {
					p.m.moderation.WithLabelValues("ignored").Inc()
					return nil
				}
			}
		default:
			p.m.moderation.WithLabelValues("ignored").Inc()
			return nil
		}
		action := map[bool]string{true: "ban", false: "unban"}[ban]
		p.m.moderation.WithLabelValues(action).Inc()
		changed := false
		if _, err := p.reg.UpdateSite(ctx, room.Site, func(s *registry.Site) (bool, error) {
			changed = s.SetBanned(user, ban)
			return changed, nil
		}); err != nil {
			return classify(err)
		}
		if !changed && !redelivered {
			log.Info("moderation change already in the site's snapshot; nothing to propagate", "action", action, "user", user)
			return nil
		}
		targets, err := p.siteRooms(ctx, room.Site, e.RoomID)
		if err != nil {
			return classify(err)
		}
		jobs := make([]Job, 0, len(targets))
		for _, t := range targets {
			jobs = append(jobs, Job{Kind: KindMember, Site: room.Site, Room: t, User: user, Cause: e.EventID})
		}
		log.Info("propagating", "action", action, "user", user, "rooms", len(jobs))
		return p.fanOut(ctx, jobs, progress)

	case e.Type == "m.room.power_levels" && e.StateKeyIs(""):
		if !room.IsModeration() {
			// Power levels set in one comment room stay there, as in the
			// original: the moderation room is where a site's are set.
			p.m.moderation.WithLabelValues("ignored").Inc()
			return nil
		}
		var pl matrix.PowerLevels
		if err := json.Unmarshal(e.Content, &pl); err != nil {
			p.m.moderation.WithLabelValues("ignored").Inc()
			return worker.Permanent(fmt.Errorf("unreadable power levels: %w", err))
		}
		p.m.moderation.WithLabelValues("power_levels").Inc()
		want, err := canonicalJSON(&pl)
		if err != nil {
			return worker.Permanent(err)
		}
		changed := false
		if _, err := p.reg.UpdateSite(ctx, room.Site, func(s *registry.Site) (bool, error) {
			var old matrix.PowerLevels
			if len(s.PowerLevels) > 0 && json.Unmarshal(s.PowerLevels, &old) == nil {
				if c, err := canonicalJSON(&old); err == nil && bytes.Equal(c, want) {
					return false, nil
				}
			}
			s.PowerLevels = want
			changed = true
			return true, nil
		}); err != nil {
			return classify(err)
		}
		if !changed && !redelivered {
			return nil
		}
		targets, err := p.siteRooms(ctx, room.Site, e.RoomID)
		if err != nil {
			return classify(err)
		}
		jobs := make([]Job, 0, len(targets))
		for _, t := range targets {
			jobs = append(jobs, Job{Kind: KindPower, Site: room.Site, Room: t, Cause: e.EventID})
		}
		log.Info("propagating power levels", "rooms", len(jobs))
		return p.fanOut(ctx, jobs, progress)

	default:
		// Canonical alias changes only matter for rooms we did not know,
		// which lookupRoom has just recorded.
		p.m.moderation.WithLabelValues("ignored").Inc()
		return nil
	}
}

// siteRooms lists every room of a site (moderation room and comment rooms)
// except the one the change came from.
func (p *Provisioner) siteRooms(ctx context.Context, siteName, except string) ([]string, error) {
	site, err := p.reg.Site(ctx, siteName)
	if err != nil {
		return nil, err
	}
	rooms, err := p.reg.Rooms(ctx, siteName)
	if err != nil {
		return nil, err
	}
	out := make([]string, 0, len(rooms)+1)
	if site.ModerationRoom != "" && site.ModerationRoom != except {
		out = append(out, site.ModerationRoom)
	}
	for _, r := range rooms {
		if r.RoomID != except {
			out = append(out, r.RoomID)
		}
	}
	return out, nil
}

// lookupRoom finds which site a room belongs to. A room the registry does
// not know is looked up on the homeserver by its canonical alias, so that
// sites and rooms made before the registry existed (or lost with it) are
// moderated too; what is found is recorded.
func (p *Provisioner) lookupRoom(ctx context.Context, roomID string) (registry.Room, error) {
	room, err := p.reg.Lookup(ctx, roomID)
	if !errors.Is(err, registry.ErrNotFound) {
		return room, err
	}
	id, perr := mxid.ParseRoomID(roomID)
	if perr != nil {
		return registry.Room{}, err
	}
	var c struct {
		Alias string `json:"alias"`
	}
	if herr := p.hs.GetStateEvent(ctx, id, "m.room.canonical_alias", "", &c); herr != nil {
		if matrix.IsNotFound(herr) || matrix.IsForbidden(herr) {
			return registry.Room{}, err
		}
		return registry.Room{}, herr
	}
	parsed, perr := p.ns.Parse(c.Alias)
	if perr != nil || parsed.Kind == namespace.NotOurs {
		return registry.Room{}, err
	}
	site, serr := p.site(ctx, parsed.Site)
	if serr != nil {
		return registry.Room{}, serr
	}
	if parsed.Kind == namespace.Moderation {
		if site.ModerationRoom != roomID {
			return registry.Room{}, err
		}
		return registry.Room{Site: site.Name, RoomID: roomID}, nil
	}
	room = registry.Room{Site: site.Name, Section: parsed.Section, RoomID: roomID, Alias: parsed.Alias.String()}
	if err := p.reg.PutRoom(ctx, room); err != nil {
		return registry.Room{}, err
	}
	p.m.registryMisses.WithLabelValues("imported").Inc()
	p.log.Info("comment room imported from the homeserver", "site", site.Name, "room_id", roomID)
	return room, nil
}
