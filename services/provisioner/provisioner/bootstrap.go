package provisioner

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"
)

// Bootstrap makes sure the bot user exists with its display name and
// avatar. It is idempotent and cheap to repeat: the profile is only written
// when it differs, because a homeserver copies a profile change into a new
// member event in every room the user is in, and the bot is in every
// comment room.
func (p *Provisioner) Bootstrap(ctx context.Context) error {
	created, err := p.hs.RegisterAppserviceUser(ctx, p.bot.Localpart())
	if err != nil {
		return fmt.Errorf("provisioner: register bot %s: %w", p.bot, err)
	}
	p.log.Info("bot user ready", "user_id", p.bot.String(), "created", created)
	want := map[string]string{"displayname": p.cfg.BotDisplayName}
	if p.cfg.BotAvatarURL != "" {
		want["avatar_url"] = p.cfg.BotAvatarURL
	}
	have, err := p.profile(ctx)
	if err != nil {
		// Reading is an optimisation; writing is what matters.
		p.log.Warn("reading the bot's profile failed; setting it anyway", "err", err)
		have = map[string]string{}
	}
	if want["displayname"] != "" && have["displayname"] != want["displayname"] {
		if err := p.hs.SetDisplayName(ctx, p.bot, want["displayname"]); err != nil {
			return fmt.Errorf("provisioner: set bot display name: %w", err)
		}
	}
	if want["avatar_url"] != "" && have["avatar_url"] != want["avatar_url"] {
		if err := p.hs.SetAvatarURL(ctx, p.bot, want["avatar_url"]); err != nil {
			return fmt.Errorf("provisioner: set bot avatar: %w", err)
		}
	}
	return nil
}

// profile reads the bot's public profile. The matrix client has no profile
// read, and the endpoint needs no authentication, so this is a plain GET.
func (p *Provisioner) profile(ctx context.Context) (map[string]string, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	u := p.cfg.HomeserverURL + "/_matrix/client/v3/profile/" + url.PathEscape(p.bot.String())
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, fmt.Errorf("get profile: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return nil, fmt.Errorf("get profile: %w", err)
	}
	p.observe("profile.get", resp.StatusCode, 0)
	if resp.StatusCode == http.StatusNotFound {
		return map[string]string{}, nil
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("get profile: HTTP %d", resp.StatusCode)
	}
	var raw map[string]any
	if err := json.Unmarshal(body, &raw); err != nil {
		return nil, fmt.Errorf("get profile: %w", err)
	}
	out := map[string]string{}
	for _, k := range []string{"displayname", "avatar_url"} {
		if s, ok := raw[k].(string); ok {
			out[k] = s
		}
	}
	return out, nil
}
