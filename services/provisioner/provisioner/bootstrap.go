package provisioner

import (
	"context"
	"fmt"
)

// Bootstrap makes sure the bot user exists with its display name and
// avatar. It is idempotent and writes the profile only where it differs.
func (p *Provisioner) Bootstrap(ctx context.Context) error {
	created, err := p.hs.EnsureUser(ctx, p.bot, p.cfg.BotDisplayName, p.cfg.BotAvatarURL)
	if err != nil {
		return fmt.Errorf("provisioner: bot user: %w", err)
	}
	p.log.Info("bot user ready", "user_id", p.bot.String(), "created", created)
	return nil
}
