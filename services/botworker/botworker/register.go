package botworker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"

	"github.com/cactus-comments/appservice/pkg/event"
	"github.com/cactus-comments/appservice/pkg/matrix"
	"github.com/cactus-comments/appservice/pkg/mxid"
	"github.com/cactus-comments/appservice/pkg/namespace"
	"github.com/cactus-comments/appservice/pkg/registry"
)

// Power level of a site's owner and of the bot in a moderation room.
const adminLevel = 100

// register registers site for the sender of ev. The order of the steps
// makes every one of them safe to repeat when the event is delivered again
// after a crash or a failed call:
//
//  1. validate the name (no homeserver call for a name that cannot work);
//  2. a name already in the registry is answered from there;
//  3. claim the name in the sender's record, which enforces the per-user
//     limit across replicas and remembers which event is registering it;
//  4. create the moderation room; M_ROOM_IN_USE is either someone else's
//     site (taken) or a room this sender's registration created before a
//     crash, recognised by the sender's power level in it (our alias
//     namespace is exclusive, so only we create rooms there);
//  5. record the site in the registry (create-if-absent);
//  6. post the explanation in the moderation room and the reply in the
//     command room, with transaction ids derived from the event.
func (b *Bot) register(ctx context.Context, ev *event.Event, room mxid.RoomID, site string, last bool, log *slog.Logger) (string, error) {
	log = log.With("site", site)
	alias, err := b.validateSite(site)
	if err != nil {
		return outcomeInvalid, b.reply(ctx, room, ev, "invalid", b.texts.invalidName(site, err))
	}
	sender := ev.Sender

	existing, err := b.reg.Site(ctx, site)
	switch {
	case errors.Is(err, registry.ErrNotFound):
	case err != nil:
		return "", err
	case existing.Owner != sender:
		return outcomeTaken, b.reply(ctx, room, ev, "taken", b.texts.taken(site))
	}

	// A site the sender already owns in the registry does not count
	// against the limit a second time.
	res, cl, err := b.state.claim(ctx, sender, site, ev.EventID, b.cfg.RegistrationLimit, existing != nil)
	if err != nil {
		return "", err
	}
	switch res {
	case overLimit:
		return outcomeLimit, b.reply(ctx, room, ev, "limit", b.texts.limitReached(site))
	case ownedAlready:
		return outcomeOwned, b.reply(ctx, room, ev, "owned", b.texts.alreadyYours(site))
	case claimedBefore:
		if cl.Done {
			// Everything but (perhaps) the replies happened already.
			modRoom, err := mxid.ParseRoomID(cl.Room)
			if err != nil {
				return "", fmt.Errorf("bot state: claim of %q holds a bad room id: %w", site, err)
			}
			if err := b.announce(ctx, ev, room, modRoom, site); err != nil {
				return "", err
			}
			return outcomeRedelivered, nil
		}
	}
	if existing != nil {
		// The sender owns it in the registry, but this claim is not done:
		// an earlier command of theirs, or a registration interrupted
		// after the registry write.
		if res == claimedNew {
			if err := b.state.complete(ctx, sender, site, ev.EventID, existing.ModerationRoom); err != nil {
				return "", err
			}
			return outcomeOwned, b.reply(ctx, room, ev, "owned", b.texts.alreadyYours(site))
		}
	}

	release := func() {
		if err := b.state.release(ctx, sender, site, ev.EventID); err != nil {
			log.Warn("could not release the claim of a refused registration", "err", err)
		}
	}

	var modRoom mxid.RoomID
	if existing != nil {
		if modRoom, err = mxid.ParseRoomID(existing.ModerationRoom); err != nil {
			return "", fmt.Errorf("registry: site %q holds a bad room id: %w", site, err)
		}
	} else {
		modRoom, err = b.hs.CreateRoom(ctx, b.moderationRoomRequest(site, sender))
		switch {
		case err == nil:
			log.Info("moderation room created", "moderation_room", modRoom.String())
		case matrix.IsRoomInUse(err):
			var mine bool
			modRoom, mine, err = b.adopt(ctx, alias, sender)
			if err != nil {
				return "", err
			}
			if !mine {
				release()
				return outcomeTaken, b.reply(ctx, room, ev, "taken", b.texts.taken(site))
			}
			log.Info("moderation room exists from an earlier attempt; continuing", "moderation_room", modRoom.String())
		case matrix.IsPermanent(err):
			release()
			log.Warn("homeserver refused the moderation room", "err", err)
			return outcomeHSError, b.reply(ctx, room, ev, "hs-error", b.texts.homeserverRefused(site, err))
		default:
			if last {
				release()
				if rerr := b.reply(ctx, room, ev, "hs-unavailable", b.texts.homeserverUnavailable(site)); rerr != nil {
					log.Warn("could not tell the user the homeserver is unavailable", "err", rerr)
				}
			}
			return "", hsError(fmt.Errorf("create moderation room: %w", err))
		}

		if err := b.record(ctx, site, sender, modRoom); err != nil {
			if errors.Is(err, registry.ErrExists) {
				// Another owner got into the registry first (a rebuild in
				// between); the homeserver's room is theirs now.
				release()
				log.Warn("site appeared in the registry under another owner during registration")
				return outcomeTaken, b.reply(ctx, room, ev, "taken", b.texts.taken(site))
			}
			return "", err
		}
	}
	if err := b.state.complete(ctx, sender, site, ev.EventID, modRoom.String()); err != nil {
		return "", err
	}
	if err := b.announce(ctx, ev, room, modRoom, site); err != nil {
		return "", err
	}
	return outcomeCreated, nil
}

// validateSite checks a site name and returns its moderation alias.
func (b *Bot) validateSite(site string) (mxid.RoomAlias, error) {
	if err := namespace.ValidateSiteName(site); err != nil {
		return mxid.RoomAlias{}, err
	}
	alias, err := b.ns.ModerationAlias(site)
	if err != nil {
		return mxid.RoomAlias{}, fmt.Errorf("%w: it does not make a valid room alias (%v)", namespace.ErrBadSiteName, err)
	}
	return alias, nil
}

// moderationRoomRequest is the createRoom body of a site's moderation room.
func (b *Bot) moderationRoomRequest(site, owner string) *matrix.CreateRoomRequest {
	return &matrix.CreateRoomRequest{
		Visibility:      matrix.VisibilityPrivate,
		RoomAliasName:   b.ns.ModerationLocalpart(site),
		Name:            site + " moderation room",
		Topic:           fmt.Sprintf("Moderation of the comments of %s: power levels and bans set here apply to all of its comment sections.", site),
		Invite:          []string{owner},
		CreationContent: map[string]any{"m.federate": true},
		InitialState: []matrix.StateEvent{
			{Type: "m.room.join_rules", Content: map[string]string{"join_rule": "invite"}},
			{Type: "m.room.history_visibility", Content: map[string]string{"history_visibility": "invited"}},
		},
		PowerLevelContentOverride: &matrix.PowerLevels{
			Users: map[string]int{owner: adminLevel, b.bot.String(): adminLevel},
		},
	}
}

// adopt decides whether an existing moderation alias belongs to owner: it
// does when the registry says so, or, before the registry knows the site,
// when owner holds the admin level in the room the alias names (our
// registration gave it to them; nobody else creates rooms in our
// exclusive namespace).
func (b *Bot) adopt(ctx context.Context, alias mxid.RoomAlias, owner string) (mxid.RoomID, bool, error) {
	site := aliasSite(b.ns, alias)
	s, err := b.reg.Site(ctx, site)
	switch {
	case err == nil:
		if s.Owner != owner {
			return mxid.RoomID{}, false, nil
		}
		r, err := mxid.ParseRoomID(s.ModerationRoom)
		if err != nil {
			return mxid.RoomID{}, false, fmt.Errorf("registry: site %q holds a bad room id: %w", site, err)
		}
		return r, true, nil
	case !errors.Is(err, registry.ErrNotFound):
		return mxid.RoomID{}, false, err
	}
	r, err := b.hs.ResolveAlias(ctx, alias)
	if err != nil {
		if matrix.IsNotFound(err) {
			// Taken a moment ago, gone now: let the next delivery try again.
			return mxid.RoomID{}, false, fmt.Errorf("alias %s in use but not resolvable: %w", alias, err)
		}
		return mxid.RoomID{}, false, hsError(err)
	}
	pl, err := b.powerLevels(ctx, r)
	if err != nil {
		if matrix.IsPermanent(err) {
			// We cannot read it, so it is not a room we made for owner.
			return mxid.RoomID{}, false, nil
		}
		return mxid.RoomID{}, false, hsError(err)
	}
	var levels matrix.PowerLevels
	if err := json.Unmarshal(pl, &levels); err != nil {
		return mxid.RoomID{}, false, nil
	}
	mine := levels.UserLevel(owner) >= adminLevel && levels.UserLevel(b.bot.String()) >= adminLevel
	return r, mine, nil
}

func aliasSite(ns namespace.Namespace, alias mxid.RoomAlias) string {
	return ns.ParseAlias(alias).Site
}

// powerLevels reads a room's power levels verbatim.
func (b *Bot) powerLevels(ctx context.Context, room mxid.RoomID) (json.RawMessage, error) {
	var raw json.RawMessage
	if err := b.hs.GetStateEvent(ctx, room, "m.room.power_levels", "", &raw); err != nil {
		return nil, err
	}
	return raw, nil
}

// record writes the site to the registry with the moderation room's power
// levels as the homeserver made them, which comment rooms are created
// with. A site already recorded for the same owner and room (an earlier
// attempt of this registration) counts as done.
func (b *Bot) record(ctx context.Context, site, owner string, modRoom mxid.RoomID) error {
	pl, err := b.powerLevels(ctx, modRoom)
	if err != nil {
		if !matrix.IsPermanent(err) {
			return hsError(fmt.Errorf("read moderation room power levels: %w", err))
		}
		// Fall back to what we asked the homeserver for.
		pl, _ = json.Marshal(b.moderationRoomRequest(site, owner).PowerLevelContentOverride)
	}
	err = b.reg.CreateSite(ctx, &registry.Site{
		Name: site, Owner: owner, ModerationRoom: modRoom.String(), PowerLevels: pl,
	})
	if !errors.Is(err, registry.ErrExists) {
		return err
	}
	s, gerr := b.reg.Site(ctx, site)
	if gerr != nil {
		return gerr
	}
	if s.Owner == owner && s.ModerationRoom == modRoom.String() {
		return nil
	}
	return err
}

// announce posts the explanation in the moderation room and the reply in
// the command room.
func (b *Bot) announce(ctx context.Context, ev *event.Event, room, modRoom mxid.RoomID, site string) error {
	if err := b.reply(ctx, modRoom, ev, "intro", b.texts.moderationIntro(site, ev.Sender)); err != nil {
		return err
	}
	return b.reply(ctx, room, ev, "created", b.texts.created(site))
}
