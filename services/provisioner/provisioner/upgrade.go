package provisioner

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/cactus-comments/appservice/pkg/event"
	"github.com/cactus-comments/appservice/pkg/matrix"
	"github.com/cactus-comments/appservice/pkg/mxid"
	"github.com/cactus-comments/appservice/pkg/power"
	"github.com/cactus-comments/appservice/pkg/registry"
	"github.com/cactus-comments/appservice/pkg/worker"
)

// Room upgrades. POST /rooms/{id}/upgrade makes a replacement room of the
// new version, moves the local aliases to it and puts an m.room.tombstone
// naming it in the old room. Only the upgrader is in the replacement
// (Synapse joins and invites nobody else; it copies the join rules, the
// power levels and the bans), so who else can get in depends on its join
// rule: anyone into a comment room (public), only invited users into a
// moderation room (invite). The registry follows the replacement either
// way; the bot joins it when it can, and otherwise asks the site's owner
// in the old room to invite it.

// handleTombstone follows a site's room that was upgraded.
func (p *Provisioner) handleTombstone(ctx context.Context, m jetstream.Msg, e *event.Event) error {
	if err := e.Validate(); err != nil {
		p.m.moderation.WithLabelValues("ignored").Inc()
		return worker.Permanent(err)
	}
	log := p.log.With("event_id", e.EventID, "room_id", e.RoomID, "type", e.Type, "sender", e.Sender)
	if !e.StateKeyIs("") {
		p.m.moderation.WithLabelValues("ignored").Inc()
		return nil
	}
	next, ok, err := replacementRoom(e.Content)
	if err != nil {
		p.m.moderation.WithLabelValues("ignored").Inc()
		return worker.Permanent(err)
	}
	if !ok {
		p.m.moderation.WithLabelValues("ignored").Inc()
		log.Warn("tombstone without a usable replacement room ignored")
		return nil
	}
	old, err := p.reg.Lookup(ctx, e.RoomID)
	if errors.Is(err, registry.ErrNotFound) {
		p.m.moderation.WithLabelValues("ignored").Inc()
		log.Debug("tombstone in a room that is not ours")
		return nil
	}
	if err != nil {
		return classify(err)
	}
	// Following is idempotent, but the message asking for an invite is
	// not once the homeserver has forgotten its transaction id.
	if done, err := worker.CheckDone(ctx, e.EventID); err != nil {
		return classify(err)
	} else if done {
		p.m.moderation.WithLabelValues("duplicate").Inc()
		return nil
	}
	p.m.moderation.WithLabelValues("upgrade").Inc()
	kind := "comment"
	if old.IsModeration() {
		kind = "moderation"
	}
	log = log.With("site", old.Site, "kind", kind, "replacement", next.String())

	refused := func(err error) error {
		p.m.upgrades.WithLabelValues(kind, "refused").Inc()
		log.Warn("tombstone names a room that is no upgrade of this one; not followed", "err", err)
		return nil
	}
	// Checked before the bot joins anything: the tombstone's sender chose
	// the room.
	if err := p.reg.CheckReplacement(ctx, old, next.String()); errors.Is(err, registry.ErrNotSuccessor) {
		return refused(err)
	} else if err != nil {
		return classify(err)
	}
	joined := true
	if _, err := p.hs.JoinRoom(ctx, next.String()); err != nil {
		if !matrix.IsForbidden(err) && !matrix.IsNotFound(err) {
			return classify(err)
		}
		joined = false
		log.Info("the bot cannot join the replacement room", "err", err)
	}
	var create *power.Room
	if joined {
		oldID, err := mxid.ParseRoomID(e.RoomID)
		if err != nil {
			return worker.Permanent(err)
		}
		r, err := registry.ReadSuccessor(ctx, p.hs, next, oldID)
		if errors.Is(err, registry.ErrNotSuccessor) {
			return refused(err)
		}
		if err != nil {
			return classify(err)
		}
		create = &r
	}
	now, err := p.reg.FollowUpgrade(ctx, e.RoomID, next.String(), create, eventSequence(ctx, m))
	if errors.Is(err, registry.ErrNotSuccessor) {
		return refused(err)
	}
	if errors.Is(err, registry.ErrReplaced) {
		p.m.moderation.WithLabelValues("ignored").Inc()
		log.Warn("tombstone names another room than the one already followed; ignored", "err", err)
		return nil
	}
	if err != nil {
		return classify(err)
	}
	outcome := map[bool]string{true: "joined", false: "not_joined"}[joined]
	p.m.upgrades.WithLabelValues(kind, outcome).Inc()
	log.Info("following the upgraded room", "joined", joined)

	switch {
	case old.IsModeration() && !joined:
		return p.askForInvite(ctx, e, now.Site, next, log)
	case !old.IsModeration() && joined:
		// The replacement copied the old room's power levels and bans;
		// make it follow the site's as they are now, in its version.
		jobs := []Job{
			{Kind: KindPower, Site: now.Site, Room: next.String(), Cause: e.EventID},
			{Kind: KindSync, Site: now.Site, Room: next.String(), Cause: e.EventID},
		}
		return p.fanOut(ctx, jobs, func() { _ = m.InProgress() })
	case !old.IsModeration():
		log.Warn("comment section moved to a room the bot cannot join: its moderation stops until the bot is invited there")
	}
	return nil
}

// askForInvite tells the site's owner, in the old moderation room (the bot
// is still there), that the bot needs an invite to the replacement.
func (p *Provisioner) askForInvite(ctx context.Context, e *event.Event, siteName string, next mxid.RoomID, log *slog.Logger) error {
	site, err := p.reg.Site(ctx, siteName)
	if err != nil {
		return classify(err)
	}
	old, err := mxid.ParseRoomID(e.RoomID)
	if err != nil {
		return worker.Permanent(err)
	}
	who := site.Owner
	if who == "" {
		who = "the site's owner"
	}
	body := fmt.Sprintf("%s: this moderation room of %s was upgraded to %s, and I cannot join it: "+
		"it is invite-only. Please invite me (%s) there so that I keep carrying its bans and power levels "+
		"to the comment sections. Until then bans set there still apply everywhere, and the comment sections "+
		"keep the power levels set here.", who, siteName, next, p.bot)
	if _, err := p.hs.SendNotice(ctx, old, upgradeTxnID(e.EventID), body); err != nil {
		if matrix.IsPermanent(err) {
			log.Warn("could not ask the owner for an invite to the replacement room", "err", err)
			return nil
		}
		return classify(err)
	}
	return nil
}

// upgradeTxnID derives the send transaction id of the message about an
// upgrade from its tombstone, so that a redelivery sends nothing twice.
func upgradeTxnID(eventID string) string {
	h := sha256.Sum256([]byte(eventID))
	return "cactus." + base64.RawURLEncoding.EncodeToString(h[:18]) + ".upgrade"
}

// knowModerationRoom reports whether the version and creators of a site's
// moderation room are known, reading them if they are not. Power levels
// can only be copied into comment rooms knowing who the moderation room's
// creators are: until the bot can read a replacement room, its power
// levels are deferred (the last snapshot stays in force).
func (p *Provisioner) knowModerationRoom(ctx context.Context, siteName string, log *slog.Logger) (bool, error) {
	site, err := p.reg.Site(ctx, siteName)
	if err != nil {
		return false, err
	}
	r, err := p.moderationRoom(ctx, site)
	if err != nil {
		return false, err
	}
	if r == nil {
		p.m.moderation.WithLabelValues("deferred").Inc()
		if worker.Attempt(ctx) == 1 {
			log.Warn("power levels of a moderation room the bot cannot read yet wait: the comment sections keep the last ones until the bot is invited there")
		}
		return false, nil
	}
	return true, nil
}

// replacementRoom reads a tombstone's replacement room. Content that does
// not decode as a tombstone's is an error (to be dead-lettered, not
// dropped unseen); a replacement that is no room id is not ok (ignored).
func replacementRoom(content []byte) (mxid.RoomID, bool, error) {
	var c struct {
		Replacement string `json:"replacement_room"`
	}
	if err := event.DecodeContent(content, &c); err != nil {
		return mxid.RoomID{}, false, fmt.Errorf("unreadable m.room.tombstone content: %w", err)
	}
	next, err := mxid.ParseRoomID(c.Replacement)
	if err != nil {
		return mxid.RoomID{}, false, nil
	}
	return next, true, nil
}
