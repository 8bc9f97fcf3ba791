package registry

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// SiteSnapshot is every site in memory, kept current by a watch on the
// sites bucket: each change is decoded once, when it arrives, instead of
// on every read. It lags the bucket by the watch's delivery, so what it
// returns may be a little old; its revision says how old (see
// Registry.SiteIfMoved), and a site it has not seen yet is read from the
// bucket. It is safe for concurrent use.
type SiteSnapshot struct {
	reg   *Registry
	log   *slog.Logger
	mu    sync.RWMutex
	sites map[string]snapEntry // by bucket key
}

type snapEntry struct {
	site *Site
	rev  uint64
}

// WatchSites starts a snapshot of the sites that follows the bucket until
// ctx ends. It returns at once; until the watch has delivered a site,
// reads of it go to the bucket.
func (r *Registry) WatchSites(ctx context.Context, log *slog.Logger) *SiteSnapshot {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &SiteSnapshot{reg: r, log: log, sites: map[string]snapEntry{}}
	go s.follow(ctx)
	return s
}

// follow applies the bucket's changes until ctx ends, starting the watch
// again if it stops (the watch's own consumer survives reconnections; this
// covers the rest, e.g. the bucket being recreated).
func (s *SiteSnapshot) follow(ctx context.Context) {
	for ctx.Err() == nil {
		err := s.watch(ctx)
		if ctx.Err() != nil {
			return
		}
		s.log.Warn("site snapshot: watch stopped; starting it again", "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
}

func (s *SiteSnapshot) watch(ctx context.Context) error {
	w, err := s.reg.sites.KV().WatchAll(ctx)
	if err != nil {
		return err
	}
	return consume(ctx, w, func(e jetstream.KeyValueEntry) error { s.apply(e); return nil }, false)
}

func (s *SiteSnapshot) apply(e jetstream.KeyValueEntry) {
	if e.Operation() != jetstream.KeyValuePut {
		s.mu.Lock()
		if cur, ok := s.sites[e.Key()]; !ok || cur.rev < e.Revision() {
			delete(s.sites, e.Key())
		}
		s.mu.Unlock()
		return
	}
	var site Site
	if err := decode(e.Value(), &site); err != nil {
		// Left out: reads of it go to the bucket and report the error.
		s.log.Warn("site snapshot: undecodable site", "key", e.Key(), "err", err)
		s.mu.Lock()
		delete(s.sites, e.Key())
		s.mu.Unlock()
		return
	}
	s.mu.Lock()
	// A restarted watch replays from the start: never go backwards.
	if cur, ok := s.sites[e.Key()]; !ok || cur.rev < e.Revision() {
		s.sites[e.Key()] = snapEntry{site: &site, rev: e.Revision()}
	}
	s.mu.Unlock()
}

// Cached reports whether the snapshot holds a site, and as of which
// revision.
func (s *SiteSnapshot) Cached(name string) (rev uint64, ok bool) {
	s.mu.RLock()
	e, ok := s.sites[siteKey(name)]
	s.mu.RUnlock()
	return e.rev, ok
}

// Site returns a site and the bucket revision it is as of. The site is
// shared: callers must not modify it. A site the snapshot does not hold is
// read from the bucket.
func (s *SiteSnapshot) Site(ctx context.Context, name string) (*Site, uint64, error) {
	s.mu.RLock()
	e, ok := s.sites[siteKey(name)]
	s.mu.RUnlock()
	if ok {
		return e.site, e.rev, nil
	}
	return s.reg.siteRev(ctx, name)
}

// SiteIfMoved checks whether a site is still at revision rev: it reads
// the site's last revision from the stream leader (as Site does) and
// decodes it only if it moved, returning moved=false and a nil site
// otherwise. It is the cheap re-read after a write that must not miss a
// change made meanwhile.
func (r *Registry) SiteIfMoved(ctx context.Context, name string, rev uint64) (site *Site, moved bool, err error) {
	e, err := r.sites.Get(ctx, siteKey(name))
	if isNotFound(err) {
		return nil, true, notFound("site", name)
	}
	if err != nil {
		return nil, false, wrap("get site", name, err)
	}
	if e.Revision == rev {
		return nil, false, nil
	}
	var s Site
	if err := decode(e.Value, &s); err != nil {
		return nil, true, wrap("decode site", name, err)
	}
	return &s, true, nil
}
