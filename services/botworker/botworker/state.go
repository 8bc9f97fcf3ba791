package botworker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/cactus-comments/appservice/pkg/bus"
	"github.com/cactus-comments/appservice/pkg/cas"
)

// state is the bot's own bookkeeping in the bus.BucketLimit bucket, shared
// by every replica: which sites each user has registered (for the per-user
// limit and to recognise a redelivered registration) and which rooms are
// direct chats. Losing it loses no site: the registry and the homeserver
// hold those; only the limit counts restart from zero.
type state struct {
	b   *cas.Bucket
	now func() time.Time
}

// pendingTTL is how long an unfinished registration holds a place in its
// user's limit. A registration that crashed half-way and was never
// redelivered must not count for ever; one that is still being retried
// finishes well within this (worker backoff is bounded by a minute).
const pendingTTL = 15 * time.Minute

// claim is one site a user has registered, or is registering.
type claim struct {
	// Event is the command that claimed the site; its redelivery finds
	// the claim and continues instead of starting over.
	Event string `json:"event"`
	// Room is the moderation room, once created.
	Room string `json:"room,omitempty"`
	// Done is set once the site is in the registry.
	Done bool      `json:"done,omitempty"`
	At   time.Time `json:"at"`
}

type userRecord struct {
	Sites map[string]claim `json:"sites"`
}

func userKey(user string) string { return "user." + bus.Token(user) }
func dmKey(room string) string   { return "dm." + bus.Token(room) }

// claimResult says what claim found.
type claimResult int

const (
	// claimedNew: the site is now claimed by this event.
	claimedNew claimResult = iota
	// claimedBefore: this very event claimed it before (a redelivery).
	claimedBefore
	// ownedAlready: an earlier command of the same user registered it.
	ownedAlready
	// overLimit: the user has as many sites as allowed.
	overLimit
)

func (r userRecord) count(now time.Time, except string) int {
	n := 0
	for site, c := range r.Sites {
		if site == except {
			continue
		}
		if c.Done || now.Sub(c.At) < pendingTTL {
			n++
		}
	}
	return n
}

// claim records that eventID of user is registering site, unless the user
// is at limit (not checked when owned: the registry already has the site
// under this user). It returns the claim as stored.
func (s *state) claim(ctx context.Context, user, site, eventID string, limit int, owned bool) (claimResult, claim, error) {
	var (
		res claimResult
		out claim
	)
	err := s.update(ctx, userKey(user), func(r *userRecord) (bool, error) {
		now := s.now().UTC()
		if c, ok := r.Sites[site]; ok {
			switch {
			case c.Event == eventID:
				res, out = claimedBefore, c
				return false, nil
			case c.Done:
				res, out = ownedAlready, c
				return false, nil
			}
			// An unfinished claim of an earlier command: that command
			// failed or is still running; this one takes over.
		}
		if !owned && r.count(now, site) >= limit {
			res = overLimit
			return false, nil
		}
		out = claim{Event: eventID, At: now}
		r.Sites[site] = out
		res = claimedNew
		return true, nil
	})
	return res, out, err
}

// complete marks the claim of eventID as done, with its moderation room.
func (s *state) complete(ctx context.Context, user, site, eventID, room string) error {
	return s.update(ctx, userKey(user), func(r *userRecord) (bool, error) {
		if c, ok := r.Sites[site]; ok && c.Done {
			return false, nil
		}
		r.Sites[site] = claim{Event: eventID, Room: room, Done: true, At: s.now().UTC()}
		return true, nil
	})
}

// release drops an unfinished claim of eventID, so that a refused
// registration does not count against the user's limit.
func (s *state) release(ctx context.Context, user, site, eventID string) error {
	return s.update(ctx, userKey(user), func(r *userRecord) (bool, error) {
		c, ok := r.Sites[site]
		if !ok || c.Done || c.Event != eventID {
			return false, nil
		}
		delete(r.Sites, site)
		return true, nil
	})
}

// update applies fn to the user's record with compare-and-set, retrying
// when another replica wrote in between.
func (s *state) update(ctx context.Context, key string, fn func(*userRecord) (bool, error)) error {
	_, err := s.b.Update(ctx, key, func(cur []byte) ([]byte, bool, error) {
		var r userRecord
		if cur != nil {
			if err := json.Unmarshal(cur, &r); err != nil {
				return nil, false, fmt.Errorf("bot state: decode %s: %w", key, err)
			}
		}
		if r.Sites == nil {
			r.Sites = map[string]claim{}
		}
		changed, err := fn(&r)
		if err != nil || !changed {
			return nil, false, err
		}
		b, err := json.Marshal(r)
		if err != nil {
			return nil, false, fmt.Errorf("bot state: encode %s: %w", key, err)
		}
		return b, true, nil
	})
	if err != nil {
		return fmt.Errorf("bot state: %w", err)
	}
	return nil
}

// markDirect remembers that room is a direct chat with inviter.
func (s *state) markDirect(ctx context.Context, room, inviter string) error {
	if _, err := s.b.KV().Put(ctx, dmKey(room), []byte(inviter)); err != nil {
		return fmt.Errorf("bot state: mark direct %s: %w", room, err)
	}
	return nil
}

// isDirect reports whether room was marked as a direct chat.
func (s *state) isDirect(ctx context.Context, room string) (bool, error) {
	// From the leader: the invite that marked it may have been handled
	// a moment ago on another replica.
	_, err := s.b.Get(ctx, dmKey(room))
	switch {
	case errors.Is(err, cas.ErrNotFound):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("bot state: direct %s: %w", room, err)
	}
	return true, nil
}

// forgetDirect drops the mark when the bot leaves a room.
func (s *state) forgetDirect(ctx context.Context, room string) error {
	if err := s.b.KV().Purge(ctx, dmKey(room)); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		return fmt.Errorf("bot state: forget direct %s: %w", room, err)
	}
	return nil
}
