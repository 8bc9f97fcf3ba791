package botworker

import (
	"context"
	"log/slog"

	"github.com/cactus-comments/appservice/pkg/event"
	"github.com/cactus-comments/appservice/pkg/matrix"
	"github.com/cactus-comments/appservice/pkg/mxid"
)

// onMembership handles a change of the bot's own membership: invites are
// accepted from people allowed to register sites and rejected otherwise;
// leaving a room forgets what the bot knew about it.
func (b *Bot) onMembership(ctx context.Context, ev *event.Event, log *slog.Logger) error {
	var content event.Member
	if err := event.DecodeContent(ev.Content, &content); err != nil {
		log.Warn("unreadable membership of the bot; ignored", "err", err)
		return nil
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
		return nil
	case matrix.IsPermanent(err):
		// Withdrawn invite, room gone, or a server that refuses us: a
		// retry would meet the same answer.
		b.m.invites.WithLabelValues("failed").Inc()
		log.Warn("could not join on invite", "err", err)
		return nil
	}
	return hsError(err)
}
