package registry

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/cactus-comments/appservice/pkg/event"
	"github.com/cactus-comments/appservice/pkg/matrix"
	"github.com/cactus-comments/appservice/pkg/mxid"
	"github.com/cactus-comments/appservice/pkg/namespace"
	"github.com/cactus-comments/appservice/pkg/power"
)

// RebuildConcurrency is how many homeserver reads a rebuild runs at once.
const RebuildConcurrency = 8

// RebuildReport says what a rebuild found on the homeserver and wrote.
type RebuildReport struct {
	JoinedRooms  int      // rooms the bot is joined to
	Sites        []string // sites written, sorted
	CommentRooms int      // comment rooms written
	// Orphans are comment rooms whose site has no moderation room the bot
	// is in; they are not written, since a room needs its site.
	Orphans []string
	// Skipped are rooms that could not be read, with the reason. Rooms
	// that are simply not ours (no alias in our namespace) are not listed.
	Skipped []string
}

// Rebuild reconstructs the registry from the homeserver, the original
// appservice's only store: the rooms the bot is joined to,
// their canonical aliases (which tell a site's moderation room from its
// comment rooms), and each moderation room's power levels and bans.
//
// It writes over what the registry holds but deletes nothing; wipe first
// for a rebuild from scratch. An owner already recorded is kept, because
// the homeserver only lets it be guessed (see SiteFromState).
func Rebuild(ctx context.Context, reg *Registry, hs *matrix.Client, ns namespace.Namespace, bot mxid.UserID, log *slog.Logger) (RebuildReport, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var rep RebuildReport
	joined, err := hs.JoinedRooms(ctx)
	if err != nil {
		return rep, fmt.Errorf("registry rebuild: joined rooms: %w", err)
	}
	rep.JoinedRooms = len(joined)
	log.Info("registry rebuild: reading rooms", "joined_rooms", len(joined))

	type found struct {
		room   mxid.RoomID
		parsed namespace.Parsed
		create *power.Room // comment rooms
	}
	var (
		mu       sync.Mutex
		mods     []found
		comments []found
		read     int
	)
	err = forEach(ctx, joined, func(ctx context.Context, room mxid.RoomID) error {
		alias, err := canonicalAlias(ctx, hs, room)
		mu.Lock()
		if read++; read%500 == 0 {
			log.Info("registry rebuild: rooms read", "done", read, "total", len(joined))
		}
		mu.Unlock()
		if err != nil {
			mu.Lock()
			rep.Skipped = append(rep.Skipped, fmt.Sprintf("%s: %v", room, err))
			mu.Unlock()
			return nil
		}
		if alias == "" {
			return nil
		}
		p, err := ns.Parse(alias)
		if err != nil {
			return nil
		}
		var create *power.Room
		if p.Kind == namespace.Comments {
			if create, err = currentRoom(ctx, hs, room); err != nil {
				mu.Lock()
				rep.Skipped = append(rep.Skipped, fmt.Sprintf("%s: %v", room, err))
				mu.Unlock()
				return nil
			}
		}
		mu.Lock()
		defer mu.Unlock()
		switch p.Kind {
		case namespace.Moderation:
			mods = append(mods, found{room, p, nil})
		case namespace.Comments:
			comments = append(comments, found{room, p, create})
		}
		return nil
	})
	if err != nil {
		return rep, err
	}

	sites := map[string]*Site{}
	err = forEach(ctx, mods, func(ctx context.Context, f found) error {
		// A canonical alias event can outlive the alias moving elsewhere:
		// the directory decides which room is the site's.
		target, err := hs.ResolveAlias(ctx, f.parsed.Alias)
		if err != nil || target != f.room {
			mu.Lock()
			rep.Skipped = append(rep.Skipped, fmt.Sprintf("%s: alias %s does not point to it (%v)", f.room, f.parsed.Alias, err))
			mu.Unlock()
			return nil
		}
		state, err := hs.State(ctx, f.room)
		if err != nil {
			mu.Lock()
			rep.Skipped = append(rep.Skipped, fmt.Sprintf("%s: state: %v", f.room, err))
			mu.Unlock()
			return nil
		}
		if tombstoned(state) {
			mu.Lock()
			rep.Skipped = append(rep.Skipped, fmt.Sprintf("%s: upgraded, its replacement is the site's room", f.room))
			mu.Unlock()
			return nil
		}
		s := SiteFromState(f.parsed.Site, f.room.String(), state, bot.String())
		mu.Lock()
		sites[s.Name] = s
		mu.Unlock()
		return nil
	})
	if err != nil {
		return rep, err
	}

	for _, name := range slices.Sorted(maps.Keys(sites)) {
		s := sites[name]
		if old, err := reg.Site(ctx, name); err == nil {
			if old.Owner != "" {
				s.Owner = old.Owner
			}
			if !old.CreatedAt.IsZero() {
				s.CreatedAt = old.CreatedAt
			}
		} else if !errors.Is(err, ErrNotFound) {
			return rep, fmt.Errorf("registry rebuild: %w", err)
		}
		if err := reg.PutSite(ctx, s); err != nil {
			return rep, fmt.Errorf("registry rebuild: %w", err)
		}
		rep.Sites = append(rep.Sites, name)
	}

	// Two rooms claiming one section (an alias moved by hand): the
	// directory decides, at one extra read per conflict.
	bySection := map[[2]string][]found{}
	for _, c := range comments {
		k := [2]string{c.parsed.Site, c.parsed.Section}
		bySection[k] = append(bySection[k], c)
	}
	keys := slices.SortedFunc(maps.Keys(bySection), func(a, b [2]string) int {
		return cmp.Or(cmp.Compare(a[0], b[0]), cmp.Compare(a[1], b[1]))
	})
	var rooms []Room
	for _, k := range keys {
		cands := bySection[k]
		if _, ok := sites[k[0]]; !ok {
			for _, c := range cands {
				rep.Orphans = append(rep.Orphans, c.parsed.Alias.String())
			}
			continue
		}
		pick := cands[0]
		if len(cands) > 1 {
			target, err := hs.ResolveAlias(ctx, pick.parsed.Alias)
			if err != nil {
				rep.Skipped = append(rep.Skipped, fmt.Sprintf("%s: %d rooms claim it and it does not resolve: %v", pick.parsed.Alias, len(cands), err))
				continue
			}
			i := slices.IndexFunc(cands, func(c found) bool { return c.room == target })
			if i < 0 {
				rep.Skipped = append(rep.Skipped, fmt.Sprintf("%s: points to %s, which the bot is not in", pick.parsed.Alias, target))
				continue
			}
			pick = cands[i]
		}
		rooms = append(rooms, Room{Site: k[0], Section: k[1], RoomID: pick.room.String(), Alias: pick.parsed.Alias.String(), Create: pick.create})
	}
	var written int
	err = forEach(ctx, rooms, func(ctx context.Context, r Room) error {
		if err := reg.PutRoom(ctx, r); err != nil {
			return fmt.Errorf("registry rebuild: %w", err)
		}
		mu.Lock()
		written++
		if written%1000 == 0 {
			log.Info("registry rebuild: comment rooms written", "done", written, "total", len(rooms))
		}
		mu.Unlock()
		return nil
	})
	rep.CommentRooms = written
	slices.Sort(rep.Skipped)
	slices.Sort(rep.Orphans)
	log.Info("registry rebuild finished", "sites", len(rep.Sites), "comment_rooms", rep.CommentRooms,
		"orphans", len(rep.Orphans), "skipped", len(rep.Skipped))
	return rep, err
}

// SiteFromHomeserver reads a site from the homeserver alone: its moderation
// alias, that room's power levels and bans. A site unknown to the
// homeserver is ErrNotFound. Provisioners use it when the registry misses a
// site that predates it.
func SiteFromHomeserver(ctx context.Context, hs *matrix.Client, ns namespace.Namespace, bot mxid.UserID, name string) (*Site, error) {
	alias, err := ns.ModerationAlias(name)
	if err != nil {
		return nil, fmt.Errorf("%w: site %q: %v", ErrNotFound, name, err)
	}
	room, err := hs.ResolveAlias(ctx, alias)
	if matrix.IsNotFound(err) {
		return nil, notFound("site", name)
	}
	if err != nil {
		return nil, fmt.Errorf("registry: resolve %s: %w", alias, err)
	}
	state, err := hs.State(ctx, room)
	if err != nil {
		return nil, fmt.Errorf("registry: state of %s: %w", room, err)
	}
	return SiteFromState(name, room.String(), state, bot.String()), nil
}

// SiteFromState builds a site from its moderation room's state: its
// version and creators, power levels and bans.
//
// The homeserver does not record who registered a site. The owner is
// guessed as the original left it: the user other than the bot with the
// highest effective power (the registrant got 100; in a room of version
// 12 or later they upgraded themselves, they are a creator), the earliest
// to become a member if several share it.
func SiteFromState(name, roomID string, state []event.Event, bot string) *Site {
	s := &Site{Name: name, ModerationRoom: roomID}
	memberSince := map[string]int64{}
	var pl *matrix.PowerLevels
	for _, e := range state {
		switch {
		case e.Type == "m.room.create" && e.StateKey != nil && *e.StateKey == "":
			if e.OriginServerTS > 0 {
				s.CreatedAt = time.UnixMilli(e.OriginServerTS).UTC()
			}
			if r, err := power.FromCreateEvent(e.Sender, e.Content); err == nil {
				s.ModerationCreate = &r
			}
		case e.Type == "m.room.power_levels" && e.StateKey != nil && *e.StateKey == "":
			var p matrix.PowerLevels
			if event.DecodeContent(e.Content, &p) == nil {
				pl = &p
				s.PowerLevels = []byte(slices.Clone(e.Content))
			}
		case e.Type == "m.room.member" && e.StateKey != nil:
			switch e.Membership() {
			case matrix.MembershipBan:
				s.SetBanned(*e.StateKey, true)
			case matrix.MembershipJoin, matrix.MembershipInvite:
				memberSince[*e.StateKey] = e.OriginServerTS
			}
		}
	}
	var room power.Room
	if s.ModerationCreate != nil {
		room = *s.ModerationCreate
	}
	var cands []string
	if pl != nil {
		for u := range pl.Users {
			cands = append(cands, u)
		}
	}
	cands = append(cands, room.Creators()...)
	slices.Sort(cands)
	cands = slices.Compact(cands)
	cands = slices.DeleteFunc(cands, func(u string) bool { return u == bot || s.Banned(u) })
	level := func(u string) int { return power.UserLevel(room, pl, u) }
	slices.SortFunc(cands, func(a, b string) int {
		ta, oka := memberSince[a]
		tb, okb := memberSince[b]
		return cmp.Or(
			-cmp.Compare(level(a), level(b)),
			-cmpBool(oka, okb),
			cmp.Compare(ta, tb),
			cmp.Compare(a, b),
		)
	})
	if len(cands) > 0 {
		s.Owner = cands[0]
	}
	return s
}

// tombstoned reports whether state has the room's m.room.tombstone: the
// room was upgraded and is no longer current.
func tombstoned(state []event.Event) bool {
	for _, e := range state {
		if e.Type == "m.room.tombstone" && e.StateKey != nil && *e.StateKey == "" {
			return true
		}
	}
	return false
}

// currentRoom reads a comment room's version and creators, and refuses a
// room that was upgraded (its replacement is the current one).
func currentRoom(ctx context.Context, hs *matrix.Client, room mxid.RoomID) (*power.Room, error) {
	err := hs.GetStateEvent(ctx, room, "m.room.tombstone", "", nil)
	if err == nil {
		return nil, errors.New("upgraded, its replacement is the section's room")
	}
	if !matrix.IsNotFound(err) {
		return nil, fmt.Errorf("tombstone: %w", err)
	}
	r, err := ReadRoom(ctx, hs, room)
	if err != nil {
		return nil, fmt.Errorf("create event: %w", err)
	}
	return &r, nil
}

func cmpBool(a, b bool) int {
	switch {
	case a == b:
		return 0
	case a:
		return 1
	}
	return -1
}

// canonicalAlias returns the room's m.room.canonical_alias alias, "" if it
// has none.
func canonicalAlias(ctx context.Context, hs *matrix.Client, room mxid.RoomID) (string, error) {
	var c struct {
		Alias string `json:"alias"`
	}
	err := hs.GetStateEvent(ctx, room, "m.room.canonical_alias", "", &c)
	if matrix.IsNotFound(err) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("canonical alias: %w", err)
	}
	return c.Alias, nil
}

// forEach runs fn over items, RebuildConcurrency at a time, and returns the
// first error (after which the remaining items are not started).
func forEach[T any](ctx context.Context, items []T, fn func(context.Context, T) error) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	sem := make(chan struct{}, RebuildConcurrency)
	var wg sync.WaitGroup
	for _, it := range items {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		wg.Go(func() {
			defer func() { <-sem }()
			if err := fn(ctx, it); err != nil {
				cancel(err)
			}
		})
	}
	wg.Wait()
	if err := context.Cause(ctx); err != nil {
		return err
	}
	return nil
}
