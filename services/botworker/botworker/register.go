package botworker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/cactus-comments/appservice/pkg/event"
	"github.com/cactus-comments/appservice/pkg/matrix"
	"github.com/cactus-comments/appservice/pkg/mxid"
	"github.com/cactus-comments/appservice/pkg/namespace"
	"github.com/cactus-comments/appservice/pkg/power"
	"github.com/cactus-comments/appservice/pkg/registry"
	"github.com/cactus-comments/appservice/pkg/worker"
)

// register registers site for the sender of ev. The order of the steps
// makes every one of them safe to repeat when the event is delivered again
// after a crash or a failed call:
//
//  1. validate the name (no homeserver call for a name that cannot work);
//  2. a name already in the registry is answered from there;
//  3. claim the name in the sender's record, which enforces the per-user
//     limit across replicas and remembers which event is registering it;
//  4. create the moderation room, in the homeserver's default room
//     version (named in the request, so that its power levels fit it);
//     M_ROOM_IN_USE is either someone else's site (taken) or a room this
//     sender's registration created before a crash, recognised by the
//     sender's power level in it (our alias namespace is exclusive, so
//     only we create rooms there), or a room a refused createRoom left
//     half made, which the registration completes;
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
		// An earlier attempt recorded the site, perhaps before it could
		// complete a half-made room.
		if err := b.completeModerationRoom(ctx, modRoom, site, sender); err != nil {
			return "", err
		}
	} else {
		var create power.Room
		version, err := b.hs.DefaultRoomVersion(ctx)
		if err == nil {
			create = power.Room{Version: version, Creator: b.bot.String()}
			modRoom, err = b.hs.CreateRoom(ctx, b.moderationRoomRequest(site, sender, version))
		}
		halfMade := false
		switch {
		case err == nil:
			log.Info("moderation room created", "moderation_room", modRoom.String(), "room_version", version)
		case matrix.IsRoomInUse(err):
			var a adoption
			a, err = b.adopt(ctx, alias, sender)
			if err != nil {
				return "", err
			}
			if !a.mine {
				release()
				return outcomeTaken, b.reply(ctx, room, ev, "taken", b.texts.taken(site))
			}
			modRoom, create, halfMade = a.room, a.create, a.halfMade
			log.Info("moderation room exists from an earlier attempt; continuing", "moderation_room", modRoom.String(), "half_made", halfMade)
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

		if err := b.record(ctx, site, sender, modRoom, create); err != nil {
			if errors.Is(err, registry.ErrExists) {
				// Another owner got into the registry first (a rebuild in
				// between); the homeserver's room is theirs now.
				release()
				log.Warn("site appeared in the registry under another owner during registration")
				return outcomeTaken, b.reply(ctx, room, ev, "taken", b.texts.taken(site))
			}
			return "", err
		}
		// Completed only once the site is recorded for this sender: two
		// registrations racing for a half-made room must not both shape it.
		if halfMade {
			if err := b.completeModerationRoom(ctx, modRoom, site, sender); err != nil {
				return "", err
			}
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

// moderationRoomRequest is the createRoom body of a site's moderation
// room of the given room version: the owner at 100, and the bot at 100
// where it is not a creator with infinite power (from version 12).
func (b *Bot) moderationRoomRequest(site, owner, version string) *matrix.CreateRoomRequest {
	return &matrix.CreateRoomRequest{
		Visibility:                matrix.VisibilityPrivate,
		RoomAliasName:             b.ns.ModerationLocalpart(site),
		Name:                      moderationRoomName(site),
		Topic:                     moderationRoomTopic(site),
		Invite:                    []string{owner},
		CreationContent:           map[string]any{"m.federate": true},
		InitialState:              moderationRoomState,
		PowerLevelContentOverride: power.ModerationRoomOverride(version, b.bot.String(), owner),
		RoomVersion:               version,
	}
}

// The state a moderation room is made with besides its power levels.
var moderationRoomState = []matrix.StateEvent{
	{Type: "m.room.join_rules", Content: map[string]string{"join_rule": "invite"}},
	{Type: "m.room.history_visibility", Content: map[string]string{"history_visibility": "invited"}},
}

func moderationRoomName(site string) string { return site + " moderation room" }

func moderationRoomTopic(site string) string {
	return fmt.Sprintf("Moderation of the comments of %s: power levels and bans set here apply to all of its comment sections.", site)
}

// adoption is what adopt found behind a moderation alias in use.
type adoption struct {
	room mxid.RoomID
	// create is the room's version and creators.
	create power.Room
	// mine: the room is owner's site (or free to be).
	mine bool
	// halfMade: the bot created the room but the homeserver refused its
	// power levels (a createRoom naming a creator of a version 12 room in
	// users, which Synapse refuses after storing the room and its alias):
	// nobody owns it yet, and it lacks its power levels, join rules and
	// the owner's invite.
	halfMade bool
}

// adopt decides whether an existing moderation alias belongs to owner: it
// does when the registry says so, or, before the registry knows the site,
// when owner and the bot both hold the admin level in the room the alias
// names (our registration gave it to them; nobody else creates rooms in
// our exclusive namespace), counting a creator's infinite power in a room
// of version 12 or later. A room the bot made whose power levels never
// came is half made and free for the first registration to complete.
func (b *Bot) adopt(ctx context.Context, alias mxid.RoomAlias, owner string) (adoption, error) {
	site := aliasSite(b.ns, alias)
	s, err := b.reg.Site(ctx, site)
	switch {
	case err == nil:
		if s.Owner != owner {
			return adoption{}, nil
		}
		r, err := mxid.ParseRoomID(s.ModerationRoom)
		if err != nil {
			return adoption{}, fmt.Errorf("registry: site %q holds a bad room id: %w", site, err)
		}
		a := adoption{room: r, mine: true}
		if s.ModerationCreate != nil {
			a.create = *s.ModerationCreate
		}
		return a, nil
	case !errors.Is(err, registry.ErrNotFound):
		return adoption{}, err
	}
	r, err := b.hs.ResolveAlias(ctx, alias)
	if err != nil {
		if matrix.IsNotFound(err) {
			// Taken a moment ago, gone now: let the next delivery try again.
			return adoption{}, fmt.Errorf("alias %s in use but not resolvable: %w", alias, err)
		}
		return adoption{}, hsError(err)
	}
	ev, err := b.hs.CreateEvent(ctx, r)
	if err != nil {
		if matrix.IsPermanent(err) {
			// We cannot read it, so it is not a room we made for owner.
			return adoption{}, nil
		}
		return adoption{}, hsError(err)
	}
	create, err := power.FromCreateEvent(ev.Sender, ev.Content)
	if err != nil {
		return adoption{}, nil
	}
	a := adoption{room: r, create: create}
	pl, err := b.powerLevels(ctx, r)
	switch {
	case matrix.IsNotFound(err) && create.Creator == b.bot.String():
		// The homeserver makes the alias before the room's first events:
		// a young room without power levels may be someone's createRoom
		// under way. Asked again later, it has them or is half made.
		if ev.OriginServerTS <= 0 || b.now().Sub(time.UnixMilli(ev.OriginServerTS)) < halfMadeAfter {
			return adoption{}, fmt.Errorf("moderation room %s has no power levels yet: its creation may be under way", r)
		}
		a.mine, a.halfMade = true, true
		return a, nil
	case err != nil && matrix.IsPermanent(err):
		return adoption{}, nil
	case err != nil:
		return adoption{}, hsError(err)
	}
	var levels matrix.PowerLevels
	if err := json.Unmarshal(pl, &levels); err != nil {
		return adoption{}, nil
	}
	a.mine = power.UserLevel(create, &levels, owner) >= power.AdminLevel &&
		power.UserLevel(create, &levels, b.bot.String()) >= power.AdminLevel
	return a, nil
}

// halfMadeAfter is the age from which a room the bot made without power
// levels is a refused createRoom rather than one under way: far longer
// than any createRoom takes.
const halfMadeAfter = time.Minute

// completeModerationRoom gives a moderation room what a refused createRoom
// left out: its power levels (which must come first: before them the
// bot's power is only a creator's), join rule, history visibility, name,
// topic and the owner's invite. A complete room costs one read.
func (b *Bot) completeModerationRoom(ctx context.Context, room mxid.RoomID, site, owner string) error {
	_, err := b.powerLevels(ctx, room)
	if err == nil {
		return nil
	}
	if !matrix.IsNotFound(err) {
		return hsError(err)
	}
	create, err := registry.ReadRoom(ctx, b.hs, room)
	if err != nil {
		return hsError(err)
	}
	state := []matrix.StateEvent{
		{Type: "m.room.power_levels", Content: completeLevels(create, b.bot.String(), owner)},
	}
	state = append(state, moderationRoomState...)
	state = append(state,
		matrix.StateEvent{Type: "m.room.name", Content: map[string]string{"name": moderationRoomName(site)}},
		matrix.StateEvent{Type: "m.room.topic", Content: map[string]string{"topic": moderationRoomTopic(site)}},
	)
	for _, st := range state {
		if _, err := b.hs.SetStateEvent(ctx, room, st.Type, st.StateKey, st.Content); err != nil {
			return hsError(fmt.Errorf("complete moderation room %s: %s: %w", room, st.Type, err))
		}
	}
	user, err := mxid.ParseUserID(owner)
	if err != nil {
		return worker.Permanent(err)
	}
	if err := b.hs.Invite(ctx, room, user, ""); err != nil && !matrix.IsForbidden(err) {
		// Forbidden: already invited or joined.
		return hsError(fmt.Errorf("invite %s to moderation room %s: %w", owner, room, err))
	}
	b.log.Info("half-made moderation room completed", "site", site, "moderation_room", room.String(), "room_version", create.Version)
	return nil
}

// completeLevels are the power levels of a moderation room whose
// createRoom was refused: what the homeserver's defaults and our override
// would have made (Synapse's defaults for a private chat), so that only
// admins change power levels, history visibility or the room's version.
func completeLevels(create power.Room, bot, owner string) *matrix.PowerLevels {
	pl := power.ModerationRoomOverride(create.Version, bot, owner)
	tombstone := 100
	if create.PrivilegedCreators() {
		tombstone = 150
	}
	n := func(v int) *int { return &v }
	pl.Ban, pl.Kick, pl.Redact, pl.Invite = n(50), n(50), n(50), n(0)
	pl.EventsDefault, pl.StateDefault, pl.UsersDefault = n(0), n(50), n(0)
	pl.Events = map[string]int{
		"m.room.name": 50, "m.room.avatar": 50, "m.room.canonical_alias": 50, "m.room.topic": 50,
		"m.room.power_levels": 100, "m.room.history_visibility": 100, "m.room.server_acl": 100,
		"m.room.encryption": 100, "m.room.tombstone": tombstone,
	}
	return pl
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

// record writes the site to the registry with the moderation room's
// version and creators, and its power levels as the homeserver made them,
// which comment rooms are created with. A site already recorded for the
// same owner and room (an earlier attempt of this registration) counts as
// done.
func (b *Bot) record(ctx context.Context, site, owner string, modRoom mxid.RoomID, create power.Room) error {
	pl, err := b.powerLevels(ctx, modRoom)
	if err != nil {
		if !matrix.IsPermanent(err) {
			return hsError(fmt.Errorf("read moderation room power levels: %w", err))
		}
		// Fall back to what the room gets (or got) from us.
		pl, _ = json.Marshal(power.ModerationRoomOverride(create.Version, b.bot.String(), owner))
	}
	var mc *power.Room
	if create.Version != "" {
		mc = &create
	}
	err = b.reg.CreateSite(ctx, &registry.Site{
		Name: site, Owner: owner, ModerationRoom: modRoom.String(), ModerationCreate: mc, PowerLevels: pl,
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
