package provisioner

import (
	"context"
	"fmt"
	"time"

	"github.com/cactus-comments/appservice/pkg/matrix"
)

// Bootstrap makes sure the bot user exists with its display name and
// avatar. It is idempotent and writes the profile only where it differs.
// A homeserver that is not reachable yet is retried with capped backoff
// until ctx ends; a refusal (wrong token, user outside our namespace) is
// returned, since retrying cannot fix it.
func (p *Provisioner) Bootstrap(ctx context.Context) error {
	err := matrix.Retry(ctx, 250*time.Millisecond, 30*time.Second, func(ctx context.Context) error {
		created, err := p.hs.EnsureUser(ctx, p.bot, p.cfg.BotDisplayName, p.cfg.BotAvatarURL)
		if err == nil {
			p.log.Info("bot user ready", "user_id", p.bot.String(), "created", created)
		}
		return err
	}, func(err error, in time.Duration) {
		p.log.Warn("bot user set-up failed, retrying", "err", err, "in", in)
	})
	if err != nil {
		return fmt.Errorf("bot user: %w", err)
	}
	return nil
}
