package botworker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"

	"github.com/cactus-comments/appservice/pkg/config"
	"github.com/cactus-comments/appservice/pkg/matrix"
	"github.com/cactus-comments/appservice/pkg/mxid"
)

// Setup makes sure the bot user exists and carries the configured display
// name and avatar. It is idempotent: an existing user (M_USER_IN_USE) is
// fine and an unchanged profile is not written again. A homeserver that is
// not reachable yet is retried until ctx ends; a refusal (wrong token,
// user outside our namespace) is returned, since retrying cannot fix it.
func (b *Bot) Setup(ctx context.Context) error {
	delay := 250 * time.Millisecond
	for {
		err := b.setupOnce(ctx)
		if err == nil {
			return nil
		}
		if matrix.IsPermanent(err) {
			return fmt.Errorf("botworker: set up bot user %s: %w", b.bot, err)
		}
		var e *matrix.Error
		if errors.As(err, &e) && e.RetryAfter > delay {
			delay = e.RetryAfter
		}
		b.log.Warn("bot user set-up failed, retrying", "err", err, "in", delay)
		select {
		case <-ctx.Done():
			return fmt.Errorf("botworker: set up bot user %s: %w (last error: %v)", b.bot, ctx.Err(), err)
		case <-time.After(delay):
		}
		delay = min(delay*2, 30*time.Second)
	}
}

func (b *Bot) setupOnce(ctx context.Context) error {
	created, err := b.hs.RegisterAppserviceUser(ctx, b.bot.Localpart())
	if err != nil {
		return fmt.Errorf("register: %w", err)
	}
	name, avatar := "", ""
	known := false
	if pr, ok := b.hs.(ProfileReader); ok && !created {
		if name, avatar, err = pr.Profile(ctx, b.bot); err != nil {
			b.log.Warn("cannot read the bot's profile; setting it anyway", "err", err)
		} else {
			known = true
		}
	}
	want := b.cfg.BotDisplayName
	if want != "" && (!known || name != want) {
		if err := b.hs.SetDisplayName(ctx, b.bot, want); err != nil {
			return fmt.Errorf("set display name: %w", err)
		}
	}
	if mxc := b.cfg.BotAvatarURL; mxc != "" && (!known || avatar != mxc) {
		if err := b.hs.SetAvatarURL(ctx, b.bot, mxc); err != nil {
			return fmt.Errorf("set avatar: %w", err)
		}
	}
	b.log.Info("bot user ready", "bot", b.bot.String(), "registered_now", created)
	return nil
}

// clientHomeserver is *matrix.Client plus the profile read it lacks.
type clientHomeserver struct {
	*matrix.Client
	base  string
	token string
	hc    *http.Client
}

func newClientHomeserver(c *matrix.Client, cfg *config.Config) *clientHomeserver {
	return &clientHomeserver{
		Client: c, base: cfg.HomeserverURL, token: cfg.ASToken.Reveal(),
		hc: &http.Client{
			Timeout:       cfg.HomeserverTimeout,
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
	}
}

// Profile reads GET /profile/{userId}. A user without a profile (404)
// reads as empty.
func (c *clientHomeserver) Profile(ctx context.Context, user mxid.UserID) (string, string, error) {
	u := c.base + "/_matrix/client/v3/profile/" + url.PathEscape(user.String())
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return "", "", fmt.Errorf("profile: %w", err)
	}
	// Some homeservers only answer profile requests of authenticated users.
	req.Header.Set("Authorization", "Bearer "+c.token)
	resp, err := c.hc.Do(req)
	if err != nil {
		// The URL holds no secret; the error may be returned as is.
		return "", "", fmt.Errorf("profile: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return "", "", fmt.Errorf("profile: read: %w", err)
	}
	switch {
	case resp.StatusCode == http.StatusNotFound:
		return "", "", nil
	case resp.StatusCode != http.StatusOK:
		return "", "", fmt.Errorf("profile: HTTP %d", resp.StatusCode)
	}
	var p struct {
		DisplayName string `json:"displayname"`
		AvatarURL   string `json:"avatar_url"`
	}
	if err := json.Unmarshal(body, &p); err != nil {
		return "", "", fmt.Errorf("profile: decode: %w", err)
	}
	return p.DisplayName, p.AvatarURL, nil
}
