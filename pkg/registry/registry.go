// Package registry keeps the site and room registry in JetStream key-value
// buckets: each site's owner, moderation room, power levels and bans, and
// each site's comment rooms, with every room's version and creators. An
// upgraded room is replaced by its successor (FollowUpgrade). The
// homeserver remains the source of truth: everything here
// can be rebuilt from it.
package registry

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/cactus-comments/appservice/pkg/bus"
	"github.com/cactus-comments/appservice/pkg/cas"
	"github.com/cactus-comments/appservice/pkg/power"
)

// ErrNotFound means the registry has no such site or room.
var ErrNotFound = errors.New("registry: not found")

// ErrExists means a create found the key already present.
var ErrExists = errors.New("registry: already exists")

// Site is one registered site.
type Site struct {
	Name           string `json:"name"`
	Owner          string `json:"owner"`
	ModerationRoom string `json:"moderation_room"`
	// ModerationCreate is the moderation room's version and creators; nil
	// while unknown (a site recorded before they were, or a replacement
	// room the bot has not been able to read yet).
	ModerationCreate *power.Room `json:"moderation_create,omitempty"`
	// PowerLevels is the moderation room's m.room.power_levels content, as
	// last seen. Comment rooms are created with it.
	PowerLevels json.RawMessage `json:"power_levels,omitempty"`
	// Bans are the users banned in the moderation room, sorted.
	Bans []string `json:"bans,omitempty"`
	// BanDecisions holds, for every user whose ban or unban came from an
	// event, that decision and the event-stream sequence of the event
	// (see DecideBan). A ban without an entry (a site imported from the
	// homeserver) counts as decided before any event.
	BanDecisions map[string]Decision `json:"ban_decisions,omitempty"`
	// PowerLevelsSeq is the event-stream sequence of the event that set
	// PowerLevels, 0 if none did.
	PowerLevelsSeq uint64    `json:"power_levels_seq,omitempty"`
	CreatedAt      time.Time `json:"created_at"`
	UpdatedAt      time.Time `json:"updated_at"`
}

// Decision is a user's ban state as of an event.
type Decision struct {
	Banned bool   `json:"banned"`
	Seq    uint64 `json:"seq"`
}

// DecideBan records that user is banned (or not) as of the event with
// stream sequence seq, unless the snapshot already holds a decision about
// user from that event or a later one. taken reports whether it was
// recorded, changed whether the ban list changed.
//
// This makes a site's ban list a set of last-writer-wins registers, one
// per user, ordered by the event stream: the homeserver sends events one
// transaction at a time, so the stream's order is its order. Applying a
// site's events in any order, any number of times, on any number of
// replicas ends in the list that applying them once in order gives.
func (s *Site) DecideBan(user string, banned bool, seq uint64) (taken, changed bool) {
	if d, ok := s.BanDecisions[user]; ok && d.Seq >= seq {
		return false, false
	}
	if s.BanDecisions == nil {
		s.BanDecisions = map[string]Decision{}
	}
	s.BanDecisions[user] = Decision{Banned: banned, Seq: seq}
	return true, s.SetBanned(user, banned)
}

// DecidePowerLevels sets the site's power levels to content (canonical
// JSON, so equal contents compare equal) as of the event with sequence
// seq, unless they were set by that event or a later one. It is the
// last-writer-wins register of the site's power levels.
func (s *Site) DecidePowerLevels(content json.RawMessage, seq uint64) (taken, changed bool) {
	if s.PowerLevelsSeq >= seq && (seq > 0 || len(s.PowerLevels) > 0) {
		return false, false
	}
	s.PowerLevelsSeq = seq
	changed = string(s.PowerLevels) != string(content)
	s.PowerLevels = content
	return true, changed
}

// Banned reports whether user is in the site's ban list.
func (s *Site) Banned(user string) bool {
	_, ok := slices.BinarySearch(s.Bans, user)
	return ok
}

// SetBanned adds or removes user from the ban list and reports whether the
// list changed.
func (s *Site) SetBanned(user string, banned bool) bool {
	i, ok := slices.BinarySearch(s.Bans, user)
	switch {
	case banned && !ok:
		s.Bans = slices.Insert(s.Bans, i, user)
		return true
	case !banned && ok:
		s.Bans = slices.Delete(s.Bans, i, i+1)
		return true
	}
	return false
}

// Room is a room we manage: a comment section, or (Section == "") a site's
// moderation room.
type Room struct {
	Site      string    `json:"site"`
	Section   string    `json:"section,omitempty"`
	RoomID    string    `json:"room_id"`
	Alias     string    `json:"alias,omitempty"`
	CreatedAt time.Time `json:"created_at"`
	// Create is the room's version and creators; nil while unknown.
	Create *power.Room `json:"create,omitempty"`
	// ReplacedBy, on the index entry of an upgraded room, is the room
	// that replaced it: the entry is kept so that the old room's late
	// events are recognised, but the room is no longer the site's.
	ReplacedBy string `json:"replaced_by,omitempty"`
	// ReplacedSeq is the event-stream sequence of the tombstone that
	// replaced the room, 0 if unknown.
	ReplacedSeq uint64 `json:"replaced_seq,omitempty"`
}

// ReplacedAfter reports whether the event with stream sequence seq came
// before the room's tombstone: the room was still the site's then. Events
// are handled in any order, so the old room's events may be handled after
// the tombstone; those it sent before still count. Without a recorded
// sequence nothing counts.
func (r Room) ReplacedAfter(seq uint64) bool {
	return r.ReplacedSeq > 0 && seq > 0 && seq < r.ReplacedSeq
}

// IsModeration reports whether r is a site's moderation room.
func (r Room) IsModeration() bool { return r.Section == "" }

// Registry is the registry over JetStream KV. It is safe for concurrent use.
//
// Site snapshots are read from the stream leader (see package cas): a
// fan-out job must see the change the moderation event that queued it has
// just written. Rooms and the index are read with direct gets, which a
// lagging follower may answer; a room missed that way is found on the
// homeserver (see the provisioner's lookupRoom).
type Registry struct {
	sites, rooms *cas.Bucket
	index        jetstream.KeyValue
	// js writes a comment room's two entries at once (RoomMsgs).
	js  jetstream.JetStream
	now func() time.Time
}

// Open binds to the buckets, which bus.Topology.Ensure creates.
func Open(ctx context.Context, js jetstream.JetStream) (*Registry, error) {
	var r Registry
	sites, err := cas.Open(ctx, js, bus.BucketSites)
	if err != nil {
		return nil, fmt.Errorf("registry: %w", err)
	}
	r.sites = sites
	// Rooms change after creation too (a room's create event recorded, an
	// upgrade followed): their compare-and-set goes through cas as well.
	rooms, err := cas.Open(ctx, js, bus.BucketRooms)
	if err != nil {
		return nil, fmt.Errorf("registry: %w", err)
	}
	r.rooms = rooms
	index, err := js.KeyValue(ctx, bus.BucketIndex)
	if err != nil {
		return nil, fmt.Errorf("registry: open bucket %s: %w", bus.BucketIndex, err)
	}
	r.index = index
	r.js = js
	r.now = time.Now
	return &r, nil
}

func siteKey(name string) string            { return bus.Token(name) }
func roomKey(site, section string) string   { return bus.Token(site) + "." + bus.Token(section) }
func indexKey(roomID string) string         { return bus.Token(roomID) }
func decode[T any](b []byte, v *T) error    { return json.Unmarshal(b, v) }
func isNotFound(err error) bool             { return errors.Is(err, cas.ErrNotFound) }
func notFound(what, name string) error      { return fmt.Errorf("%w: %s %q", ErrNotFound, what, name) }
func wrap(op, name string, err error) error { return fmt.Errorf("registry: %s %q: %w", op, name, err) }

// Site returns a site.
func (r *Registry) Site(ctx context.Context, name string) (*Site, error) {
	s, _, err := r.siteRev(ctx, name)
	return s, err
}

// siteRev returns a site and its revision in the bucket.
func (r *Registry) siteRev(ctx context.Context, name string) (*Site, uint64, error) {
	e, err := r.sites.Get(ctx, siteKey(name))
	if isNotFound(err) {
		return nil, 0, notFound("site", name)
	}
	if err != nil {
		return nil, 0, wrap("get site", name, err)
	}
	var s Site
	if err := decode(e.Value, &s); err != nil {
		return nil, 0, wrap("decode site", name, err)
	}
	return &s, e.Revision, nil
}

// CreateSite records a new site and indexes its moderation room. It fails
// with ErrExists if the name is taken, which makes registration
// create-if-absent across replicas.
func (r *Registry) CreateSite(ctx context.Context, s *Site) error {
	now := r.now().UTC()
	if s.CreatedAt.IsZero() {
		s.CreatedAt = now
	}
	s.UpdatedAt = now
	b, err := json.Marshal(s)
	if err != nil {
		return wrap("encode site", s.Name, err)
	}
	created, err := r.sites.Create(ctx, siteKey(s.Name), b)
	if err != nil {
		return wrap("create site", s.Name, err)
	}
	if !created {
		// A retry of a create whose index write failed: repair the index,
		// which nothing else would ever write.
		if cur, err := r.Site(ctx, s.Name); err == nil && s.ModerationRoom != "" && cur.ModerationRoom == s.ModerationRoom {
			if err := r.putIndex(ctx, Room{Site: cur.Name, RoomID: cur.ModerationRoom, CreatedAt: cur.CreatedAt}); err != nil {
				return err
			}
		}
		return fmt.Errorf("%w: site %q", ErrExists, s.Name)
	}
	if s.ModerationRoom != "" {
		return r.putIndex(ctx, Room{Site: s.Name, RoomID: s.ModerationRoom, CreatedAt: s.CreatedAt})
	}
	return nil
}

// PutSite writes a site unconditionally (rebuild) and indexes its
// moderation room.
func (r *Registry) PutSite(ctx context.Context, s *Site) error {
	s.UpdatedAt = r.now().UTC()
	b, err := json.Marshal(s)
	if err != nil {
		return wrap("encode site", s.Name, err)
	}
	if _, err := r.sites.KV().Put(ctx, siteKey(s.Name), b); err != nil {
		return wrap("put site", s.Name, err)
	}
	if s.ModerationRoom != "" {
		return r.putIndex(ctx, Room{Site: s.Name, RoomID: s.ModerationRoom, CreatedAt: s.CreatedAt})
	}
	return nil
}

// UpdateSite applies fn to the current site and stores the result with a
// compare-and-set, retrying on conflicting writes from other replicas. fn
// returning false means no change is needed.
func (r *Registry) UpdateSite(ctx context.Context, name string, fn func(*Site) (changed bool, err error)) (*Site, error) {
	var out *Site
	_, err := r.sites.Update(ctx, siteKey(name), func(cur []byte) ([]byte, bool, error) {
		if cur == nil {
			return nil, false, notFound("site", name)
		}
		var s Site
		if err := decode(cur, &s); err != nil {
			return nil, false, wrap("decode site", name, err)
		}
		out = &s
		changed, err := fn(&s)
		if err != nil || !changed {
			return nil, false, err
		}
		s.UpdatedAt = r.now().UTC()
		b, err := json.Marshal(&s)
		if err != nil {
			return nil, false, wrap("encode site", name, err)
		}
		return b, true, nil
	})
	if err != nil {
		if errors.Is(err, ErrNotFound) {
			return nil, err
		}
		return nil, wrap("update site", name, err)
	}
	return out, nil
}

// DeleteSite removes a site, its rooms and their index entries.
func (r *Registry) DeleteSite(ctx context.Context, name string) error {
	rooms, err := r.Rooms(ctx, name)
	if err != nil {
		return err
	}
	for _, room := range rooms {
		if err := r.rooms.KV().Purge(ctx, roomKey(room.Site, room.Section)); err != nil {
			return wrap("delete room", room.RoomID, err)
		}
		if err := r.index.Purge(ctx, indexKey(room.RoomID)); err != nil && !isNotFound(err) {
			return wrap("delete index", room.RoomID, err)
		}
	}
	s, err := r.Site(ctx, name)
	if err != nil {
		return err
	}
	if s.ModerationRoom != "" {
		if err := r.index.Purge(ctx, indexKey(s.ModerationRoom)); err != nil && !isNotFound(err) {
			return wrap("delete index", s.ModerationRoom, err)
		}
	}
	if err := r.sites.KV().Purge(ctx, siteKey(name)); err != nil {
		return wrap("delete site", name, err)
	}
	return nil
}

// Sites lists every site.
func (r *Registry) Sites(ctx context.Context) ([]*Site, error) {
	var out []*Site
	err := scan(ctx, r.sites.KV(), ">", func(b []byte) error {
		var s Site
		if err := decode(b, &s); err != nil {
			return err
		}
		out = append(out, &s)
		return nil
	})
	if err != nil {
		return nil, wrap("list sites", "", err)
	}
	slices.SortFunc(out, func(a, b *Site) int { return cmp.Compare(a.Name, b.Name) })
	return out, nil
}

// SitesOwnedBy lists the sites whose owner is user.
func (r *Registry) SitesOwnedBy(ctx context.Context, user string) ([]*Site, error) {
	all, err := r.Sites(ctx)
	if err != nil {
		return nil, err
	}
	return slices.DeleteFunc(all, func(s *Site) bool { return s.Owner != user }), nil
}

// PutRoom records a comment room (or a moderation room with Section "")
// and indexes it by room id.
func (r *Registry) PutRoom(ctx context.Context, room Room) error {
	if room.CreatedAt.IsZero() {
		room.CreatedAt = r.now().UTC()
	}
	if room.Section == "" {
		return r.putIndex(ctx, room)
	}
	msgs, err := r.RoomMsgs(room)
	if err != nil {
		return err
	}
	// The two writes are independent (either alone is repaired by the
	// other's retry or a rebuild), so they share one wait for their acks.
	roomErr := make(chan error, 1)
	go func() {
		_, err := r.js.PublishMsg(ctx, msgs[0])
		roomErr <- err
	}()
	_, indexErr := r.js.PublishMsg(ctx, msgs[1])
	if err := <-roomErr; err != nil {
		return wrap("put room", room.RoomID, err)
	}
	if indexErr != nil {
		return wrap("put index", room.RoomID, indexErr)
	}
	return nil
}

// RoomMsgs is PutRoom as two messages, the room and its room-id index
// entry in that order, for a caller that pipelines them: it publishes
// both, does something else (messages of one connection reach the server
// in order), and then waits for both acks. Both stored is PutRoom done.
func (r *Registry) RoomMsgs(room Room) ([]*nats.Msg, error) {
	if room.Section == "" {
		return nil, fmt.Errorf("registry: room %q is a moderation room, not a comment room", room.RoomID)
	}
	if room.CreatedAt.IsZero() {
		room.CreatedAt = r.now().UTC()
	}
	b, err := json.Marshal(room)
	if err != nil {
		return nil, wrap("encode room", room.RoomID, err)
	}
	// The subjects the buckets' Put uses (the buckets are neither mirrors
	// nor behind a JetStream domain).
	return []*nats.Msg{
		{Subject: "$KV." + r.rooms.Name() + "." + roomKey(room.Site, room.Section), Data: b},
		{Subject: "$KV." + r.index.Bucket() + "." + indexKey(room.RoomID), Data: b},
	}, nil
}

func (r *Registry) putIndex(ctx context.Context, room Room) error {
	b, err := json.Marshal(room)
	if err != nil {
		return wrap("encode index", room.RoomID, err)
	}
	if _, err := r.index.Put(ctx, indexKey(room.RoomID), b); err != nil {
		return wrap("put index", room.RoomID, err)
	}
	return nil
}

// Room returns one comment room of a site.
func (r *Registry) Room(ctx context.Context, site, section string) (Room, error) {
	e, err := r.rooms.KV().Get(ctx, roomKey(site, section))
	if isNotFound(err) {
		return Room{}, notFound("room", site+"_"+section)
	}
	if err != nil {
		return Room{}, wrap("get room", site+"_"+section, err)
	}
	var room Room
	if err := decode(e.Value(), &room); err != nil {
		return Room{}, wrap("decode room", site+"_"+section, err)
	}
	return room, nil
}

// Rooms lists every comment room of a site.
func (r *Registry) Rooms(ctx context.Context, site string) ([]Room, error) {
	var out []Room
	err := scan(ctx, r.rooms.KV(), bus.Token(site)+".*", func(b []byte) error {
		var room Room
		if err := decode(b, &room); err != nil {
			return err
		}
		out = append(out, room)
		return nil
	})
	if err != nil {
		return nil, wrap("list rooms", site, err)
	}
	slices.SortFunc(out, func(a, b Room) int { return cmp.Compare(a.Section, b.Section) })
	return out, nil
}

// Lookup finds which site a room belongs to.
func (r *Registry) Lookup(ctx context.Context, roomID string) (Room, error) {
	return lookup(ctx, r.index, roomID)
}

// Index is the registry's room-id index alone, read-only: which rooms
// are comment or moderation rooms of ours. It is what a reader that needs
// no more (the gateway) opens, with no write permission on any bucket.
type Index struct{ kv jetstream.KeyValue }

// OpenIndex binds to the index bucket, which bus.Topology.Ensure creates.
func OpenIndex(ctx context.Context, js jetstream.JetStream) (*Index, error) {
	kv, err := js.KeyValue(ctx, bus.BucketIndex)
	if err != nil {
		return nil, fmt.Errorf("registry: open bucket %s: %w", bus.BucketIndex, err)
	}
	return &Index{kv: kv}, nil
}

// Lookup finds which site a room belongs to, as Registry.Lookup does.
func (x *Index) Lookup(ctx context.Context, roomID string) (Room, error) {
	return lookup(ctx, x.kv, roomID)
}

func lookup(ctx context.Context, index jetstream.KeyValue, roomID string) (Room, error) {
	e, err := index.Get(ctx, indexKey(roomID))
	if isNotFound(err) {
		return Room{}, notFound("room id", roomID)
	}
	if err != nil {
		return Room{}, wrap("lookup room", roomID, err)
	}
	var room Room
	if err := decode(e.Value(), &room); err != nil {
		return Room{}, wrap("decode index", roomID, err)
	}
	return room, nil
}

// Wipe removes every entry of every bucket, for a rebuild from scratch.
// It lists all keys before purging any, and fails rather than report
// success if the listing was cut short.
func (r *Registry) Wipe(ctx context.Context) error {
	for _, kv := range []jetstream.KeyValue{r.sites.KV(), r.rooms.KV(), r.index} {
		var keys []string
		err := watchKeys(ctx, kv, ">", func(e jetstream.KeyValueEntry) error {
			keys = append(keys, e.Key())
			return nil
		}, jetstream.MetaOnly())
		if err != nil {
			return fmt.Errorf("registry: wipe %s: %w", kv.Bucket(), err)
		}
		for _, k := range keys {
			if err := kv.Purge(ctx, k); err != nil {
				return fmt.Errorf("registry: wipe %s %s: %w", kv.Bucket(), k, err)
			}
		}
	}
	return nil
}

// scan calls fn with the value of every live key matching filter.
func scan(ctx context.Context, kv jetstream.KeyValue, filter string, fn func([]byte) error) error {
	return watchKeys(ctx, kv, filter, func(e jetstream.KeyValueEntry) error { return fn(e.Value()) })
}

// watchKeys calls fn with every live entry matching filter, as of now.
func watchKeys(ctx context.Context, kv jetstream.KeyValue, filter string, fn func(jetstream.KeyValueEntry) error, opts ...jetstream.WatchOpt) error {
	w, err := kv.Watch(ctx, filter, append(opts, jetstream.IgnoreDeletes())...)
	if err != nil {
		return err
	}
	return consume(ctx, w, fn, true)
}

// consume calls fn with the watcher's entries until ctx ends, fn fails,
// the watcher closes or, with untilCurrent, the initial values are done.
// It stops the watcher.
func consume(ctx context.Context, w jetstream.KeyWatcher, fn func(jetstream.KeyValueEntry) error, untilCurrent bool) error {
	defer func() { _ = w.Stop() }()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case e, ok := <-w.Updates():
			if !ok {
				return errors.New("watcher closed")
			}
			if e == nil { // initial values done
				if untilCurrent {
					return nil
				}
				continue
			}
			if err := fn(e); err != nil {
				return err
			}
		}
	}
}
