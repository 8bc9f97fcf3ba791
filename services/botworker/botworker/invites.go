package botworker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/go-json-experiment/json/jsontext"

	"github.com/cactus-comments/appservice/pkg/event"
	"github.com/cactus-comments/appservice/pkg/matrix"
	"github.com/cactus-comments/appservice/pkg/mxid"
	"github.com/cactus-comments/appservice/pkg/power"
	"github.com/cactus-comments/appservice/pkg/registry"
	"github.com/cactus-comments/appservice/pkg/worker"
)

// onMembership handles a change of the bot's own membership: invites are
// accepted from people allowed to register sites and rejected otherwise;
// leaving a room forgets what the bot knew about it.
func (b *Bot) onMembership(ctx context.Context, ev *event.Event, log *slog.Logger) error {
	var content event.Member
	if err := event.DecodeContent(ev.Content, &content); err != nil {
		return worker.Permanent(fmt.Errorf("unreadable m.room.member content: %w", err))
	}
	room, err := mxid.ParseRoomID(ev.RoomID)
	if err != nil {
		log.Warn("membership event with a bad room id; ignored", "err", err)
		return nil
	}
	switch content.Membership {
	case matrix.MembershipInvite:
		return b.onInvite(ctx, ev, room, content, log)
	case matrix.MembershipLeave, matrix.MembershipBan:
		b.ours.drop(ev.RoomID)
		b.direct.drop(ev.RoomID)
		return b.state.forgetDirect(ctx, ev.RoomID)
	}
	return nil
}

func (b *Bot) onInvite(ctx context.Context, ev *event.Event, room mxid.RoomID, content event.Member, log *slog.Logger) error {
	if ev.Sender == b.bot.String() {
		return nil
	}
	if !b.cfg.MayRegister(ev.Sender) {
		// Rejecting an invite is leaving the room.
		err := b.hs.LeaveRoom(ctx, room, "This bot only talks to users allowed to register sites here.")
		switch {
		case err == nil:
			b.m.invites.WithLabelValues("rejected").Inc()
			log.Info("invite rejected: inviter may not register sites")
			return nil
		case matrix.IsPermanent(err):
			// The invite is gone (withdrawn, room left): nothing to reject.
			b.m.invites.WithLabelValues("failed").Inc()
			log.Warn("could not reject invite", "err", err)
			return nil
		}
		return hsError(err)
	}
	// Remember a direct chat before joining: once joined, the first
	// message may come at once and is answered differently in a DM.
	if content.IsDirect {
		if err := b.state.markDirect(ctx, ev.RoomID, ev.Sender); err != nil {
			return err
		}
	}
	_, err := b.hs.JoinRoom(ctx, ev.RoomID)
	switch {
	case err == nil:
		b.m.invites.WithLabelValues("joined").Inc()
		log.Info("joined on invite", "is_direct", content.IsDirect)
		return b.joinedModerationRoom(ctx, ev, room, log)
	case matrix.IsPermanent(err):
		// Withdrawn invite, room gone, or a server that refuses us: a
		// retry would meet the same answer.
		b.m.invites.WithLabelValues("failed").Inc()
		log.Warn("could not join on invite", "err", err)
		return nil
	}
	return hsError(err)
}

// joinedModerationRoom completes the move of a site to the replacement of
// its upgraded moderation room, which the bot could not join by itself
// (it is invite-only) until the owner invited it: the registry learns the
// room's version and creators, so that its power levels apply to the
// comment sections again, and the bot says so in the room.
func (b *Bot) joinedModerationRoom(ctx context.Context, ev *event.Event, room mxid.RoomID, log *slog.Logger) error {
	rec, err := b.reg.Lookup(ctx, room.String())
	if errors.Is(err, registry.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if !rec.IsModeration() || rec.ReplacedBy != "" {
		return nil
	}
	site, err := b.reg.Site(ctx, rec.Site)
	if err != nil {
		return err
	}
	if site.ModerationRoom != room.String() {
		return nil
	}
	// Said before it is recorded: a redelivery after a crash in between
	// says it again with the same transaction id, which sends nothing.
	// Said even when the creators are known already: the provisioner,
	// retrying a power levels change that waited for the bot, may read
	// them as soon as the bot has joined.
	if err := b.reply(ctx, room, ev, "upgraded", b.texts.followingUpgrade(site.Name)); err != nil {
		return err
	}
	if site.ModerationCreate != nil {
		return nil
	}
	create, ok := inviteCreate(ev)
	if !ok {
		if create, err = registry.ReadRoom(ctx, b.hs, room); err != nil {
			return hsError(fmt.Errorf("create event of %s: %w", room, err))
		}
	}
	if err := b.reg.SetCreate(ctx, room.String(), create); err != nil {
		return err
	}
	log.Info("the upgraded moderation room of a site is followed again", "site", site.Name, "room_version", create.Version)
	return nil
}

// inviteCreate reads the room's version and creators from the stripped
// m.room.create an invite carries (every homeserver sends it).
func inviteCreate(ev *event.Event) (power.Room, bool) {
	var u event.Unsigned
	if len(ev.Unsigned) == 0 || event.DecodeContent(ev.Unsigned, &u) != nil {
		return power.Room{}, false
	}
	for _, raw := range u.InviteRoomState {
		var st struct {
			Type     string         `json:"type"`
			StateKey *string        `json:"state_key"`
			Sender   string         `json:"sender"`
			Content  jsontext.Value `json:"content"`
		}
		if event.DecodeContent(raw, &st) != nil || st.Type != "m.room.create" || st.StateKey == nil || *st.StateKey != "" {
			continue
		}
		r, err := power.FromCreateEvent(st.Sender, st.Content)
		return r, err == nil
	}
	return power.Room{}, false
}
