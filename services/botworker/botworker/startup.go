package botworker

import (
	"context"
	"fmt"
	"time"

	"github.com/cactus-comments/appservice/pkg/matrix"
)

// Setup makes sure the bot user exists and carries the configured display
// name and avatar. It is idempotent: an existing user (M_USER_IN_USE) is
// fine and an unchanged profile is not written again. A homeserver that is
// not reachable yet is retried until ctx ends; a refusal (wrong token,
// user outside our namespace) is returned, since retrying cannot fix it.
func (b *Bot) Setup(ctx context.Context) error {
	err := matrix.Retry(ctx, 250*time.Millisecond, 30*time.Second, b.setupOnce, func(err error, in time.Duration) {
		b.log.Warn("bot user set-up failed, retrying", "err", err, "in", in)
	})
	if err != nil {
		return fmt.Errorf("set up bot user %s: %w", b.bot, err)
	}
	return nil
}

func (b *Bot) setupOnce(ctx context.Context) error {
	created, err := b.hs.EnsureUser(ctx, b.bot, b.cfg.BotDisplayName, b.cfg.BotAvatarURL)
	if err != nil {
		return err
	}
	b.log.Info("bot user ready", "bot", b.bot.String(), "registered_now", created)
	return nil
}
