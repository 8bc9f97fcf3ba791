package matrix

import (
	"context"
	"fmt"
	"net/http"

	"github.com/cactus-comments/appservice/pkg/mxid"
)

// Profile is a user's public profile.
type Profile struct {
	DisplayName string `json:"displayname,omitempty"`
	AvatarURL   string `json:"avatar_url,omitempty"`
}

// Profile reads GET /profile/{userId}. A user without a profile (404
// M_NOT_FOUND) reads as the empty profile.
func (c *Client) Profile(ctx context.Context, user mxid.UserID) (Profile, error) {
	if user.IsZero() {
		return Profile{}, fmt.Errorf("matrix: profile: empty user id")
	}
	var p Profile
	err := c.call(ctx, "profile", http.MethodGet, nil, nil, &p, v3+"/profile/{}", user.String())
	if IsNotFound(err) {
		return Profile{}, nil
	}
	return p, err
}

// EnsureUser makes an appservice user exist with the given display name and
// avatar (an empty value leaves that field alone). It is idempotent and
// writes only what differs: a homeserver copies every profile change into a
// new member event in each room the user is in, and the bot is in every
// comment room. created reports whether the user was registered now.
func (c *Client) EnsureUser(ctx context.Context, user mxid.UserID, displayName, avatarURL string) (created bool, err error) {
	created, err = c.RegisterAppserviceUser(ctx, user.Localpart())
	if err != nil {
		return false, fmt.Errorf("register %s: %w", user, err)
	}
	as := c.As(user)
	have, err := as.Profile(ctx, user)
	if err != nil {
		// Reading only saves writes: write both when it fails.
		have = Profile{}
	}
	if displayName != "" && have.DisplayName != displayName {
		if err := as.SetDisplayName(ctx, user, displayName); err != nil {
			return created, fmt.Errorf("set display name of %s: %w", user, err)
		}
	}
	if avatarURL != "" && have.AvatarURL != avatarURL {
		if err := as.SetAvatarURL(ctx, user, avatarURL); err != nil {
			return created, fmt.Errorf("set avatar of %s: %w", user, err)
		}
	}
	return created, nil
}
