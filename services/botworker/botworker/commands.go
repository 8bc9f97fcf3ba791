package botworker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/cactus-comments/appservice/pkg/event"
	"github.com/cactus-comments/appservice/pkg/matrix"
	"github.com/cactus-comments/appservice/pkg/mxid"
	"github.com/cactus-comments/appservice/pkg/registry"
	"github.com/cactus-comments/appservice/pkg/worker"
	"github.com/cactus-comments/appservice/services/botworker/command"
)

// Reasons a message is not a command.
const (
	ignoreOwn      = "own_message"
	ignoreNotText  = "not_text"
	ignoreNotice   = "notice"
	ignoreEdit     = "edit"
	ignoreSender   = "sender_not_allowed"
	ignoreOurRoom  = "comment_or_moderation_room"
	ignoreBadEvent = "malformed"
)

// ignoreReasons are every reason, for the metric's series at 0.
var ignoreReasons = []string{ignoreOwn, ignoreNotText, ignoreNotice, ignoreEdit, ignoreSender, ignoreOurRoom, ignoreBadEvent}

func (b *Bot) ignore(reason string) error {
	b.m.ignored.WithLabelValues(reason).Inc()
	return nil
}

func (b *Bot) onMessage(ctx context.Context, ev *event.Event, last bool, kind roomKind, log *slog.Logger) error {
	// The cheap tests first: most messages the bot sees are comments.
	if ev.Sender == b.bot.String() {
		return b.ignore(ignoreOwn)
	}
	var c event.Message
	if err := event.DecodeContent(ev.Content, &c); err != nil {
		// Not a message as the spec shapes one: dead-lettered with the
		// reason rather than dropped unseen.
		return worker.Permanent(fmt.Errorf("unreadable m.room.message content: %w", err))
	}
	switch {
	case c.MsgType == "m.notice":
		return b.ignore(ignoreNotice)
	case c.MsgType != "m.text":
		return b.ignore(ignoreNotText)
	case len(c.NewContent) > 0 || (c.RelatesTo != nil && c.RelatesTo.RelType == "m.replace"):
		return b.ignore(ignoreEdit)
	case !b.cfg.MayRegister(ev.Sender):
		return b.ignore(ignoreSender)
	}
	room, err := mxid.ParseRoomID(ev.RoomID)
	if err != nil {
		return b.ignore(ignoreBadEvent)
	}
	if kind == roomUnknown {
		ours, err := b.isOurRoom(ctx, ev.RoomID)
		if err != nil {
			return err
		}
		if ours {
			kind = roomOurs
		}
	}
	if kind == roomOurs {
		return b.ignore(ignoreOurRoom)
	}
	cmd := command.Parse(c.Body, b.mentions...)
	start := b.now()
	outcome, err := b.run(ctx, ev, room, cmd, last, log)
	if err != nil {
		if last || worker.IsPermanent(err) {
			b.m.commands.WithLabelValues(cmd.Kind.String(), outcomeError).Inc()
		}
		return err
	}
	b.m.commands.WithLabelValues(cmd.Kind.String(), outcome).Inc()
	b.m.handleTime.WithLabelValues(cmd.Kind.String()).Observe(b.now().Sub(start).Seconds())
	if outcome != outcomeSilent {
		log.Info("command handled", "command", cmd.Kind.String(), "outcome", outcome)
		if ev.OriginServerTS > 0 {
			lat := b.now().Sub(time.UnixMilli(ev.OriginServerTS))
			b.m.replyLatency.WithLabelValues(cmd.Kind.String()).Observe(max(lat, 0).Seconds())
		}
	}
	return nil
}

// run executes a command and answers it, returning the outcome for the
// metrics. An error means nothing final happened and the event should be
// delivered again.
func (b *Bot) run(ctx context.Context, ev *event.Event, room mxid.RoomID, cmd command.Command, last bool, log *slog.Logger) (string, error) {
	switch cmd.Kind {
	case command.Help:
		return outcomeOK, b.reply(ctx, room, ev, "help", b.texts.help())
	case command.Sites:
		if cmd.Usage {
			return outcomeUsage, b.reply(ctx, room, ev, "usage", b.texts.sitesUsage())
		}
		sites, err := b.reg.SitesOwnedBy(ctx, ev.Sender)
		if err != nil {
			return "", err
		}
		return outcomeOK, b.reply(ctx, room, ev, "sites", b.texts.sites(sites))
	case command.Register:
		if cmd.Usage {
			return outcomeUsage, b.reply(ctx, room, ev, "usage", b.texts.registerUsage())
		}
		return b.register(ctx, ev, room, cmd.Site, last, log)
	}
	direct, err := b.isDirect(ctx, room)
	if err != nil {
		return "", err
	}
	if !direct {
		return outcomeSilent, nil
	}
	return outcomeOK, b.reply(ctx, room, ev, "hint", b.texts.unknownHint())
}

// reply sends msg to room as a plain m.text (with an HTML rendering when
// msg has one). The transaction id comes from the triggering event and the
// purpose, so a redelivery sends nothing new.
func (b *Bot) reply(ctx context.Context, room mxid.RoomID, ev *event.Event, purpose string, msg message) error {
	content := matrix.MessageContent{MsgType: "m.text", Body: msg.Body}
	if msg.HTML != "" {
		content.Format, content.FormattedBody = matrix.FormatHTML, msg.HTML
	}
	if _, err := b.hs.SendEvent(ctx, room, "m.room.message", txnID(ev.EventID, purpose), content); err != nil {
		return hsError(fmt.Errorf("send %s reply: %w", purpose, err))
	}
	return nil
}

// isOurRoom reports whether room is a comment or moderation room of ours.
// Positive answers are cached: a room stays ours, and comment rooms are
// where most messages come from.
func (b *Bot) isOurRoom(ctx context.Context, room string) (bool, error) {
	if v, ok := b.ours.get(room); ok && v {
		return true, nil
	}
	_, err := b.reg.Lookup(ctx, room)
	switch {
	case err == nil:
		b.ours.put(room, true)
		return true, nil
	case errors.Is(err, registry.ErrNotFound):
		return false, nil
	}
	return false, err
}

// isDirect reports whether room is a direct chat: the bot was invited to
// it as one (is_direct), or it has exactly two members.
func (b *Bot) isDirect(ctx context.Context, room mxid.RoomID) (bool, error) {
	marked, err := b.state.isDirect(ctx, room.String())
	if err != nil {
		return false, err
	}
	if marked {
		return true, nil
	}
	if v, ok := b.direct.get(room.String()); ok {
		return v, nil
	}
	members, err := b.hs.Members(ctx, room, matrix.MembershipJoin)
	if err != nil {
		if matrix.IsPermanent(err) {
			// Not in the room any more, or not allowed to look: not a
			// conversation the bot should speak up in.
			b.direct.put(room.String(), false)
			return false, nil
		}
		return false, hsError(err)
	}
	v := len(members) == 2
	b.direct.put(room.String(), v)
	return v, nil
}
