// Package provisioner is the provisioner service: it answers alias queries
// by creating comment rooms, keeps the site and room registry (following
// rooms that are upgraded), and propagates bans, unbans and power levels
// across every room of a site by fanning the work out as one small job per
// room that all replicas share. Rooms of versions 10, 11 and 12 coexist;
// every power decision is pkg/power's, for the version and creators of the
// rooms it is about.
//
// Moderation events are handled concurrently, on any replica, in any
// order, yet every site ends as the homeserver ordered its events: the
// site snapshot keeps each decision (a user's ban or unban, the power
// levels) with the event-stream sequence of the event that made it, and
// only a newer event changes it. The stream's order is the homeserver's
// (it sends one transaction at a time and the gateway stores them in
// order), so each decision is a last-writer-wins register, and applying a
// site's events in any order, any number of times, gives the snapshot that
// in-order application gives (TestModerationConvergesInAnyOrder). Jobs
// converge each room on the snapshot as it is when they run.
package provisioner

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/cactus-comments/appservice/pkg/bus"
	"github.com/cactus-comments/appservice/pkg/cas"
	"github.com/cactus-comments/appservice/pkg/config"
	"github.com/cactus-comments/appservice/pkg/matrix"
	"github.com/cactus-comments/appservice/pkg/mxid"
	"github.com/cactus-comments/appservice/pkg/namespace"
	"github.com/cactus-comments/appservice/pkg/registry"
	"github.com/cactus-comments/appservice/pkg/service"
	"github.com/cactus-comments/appservice/pkg/worker"
)

// Options tune a Provisioner beyond the configuration; zero values are the
// production defaults.
type Options struct {
	// Homeserver replaces the client built from the configuration.
	Homeserver *matrix.Client
	// Observe, if set, sees every homeserver call attempt as well as the
	// metrics do (benchmarks compare our latency with the homeserver's).
	Observe func(endpoint string, status int, d time.Duration)
	// Progress is how often running jobs tell JetStream they are alive;
	// default a third of the consumers' AckWait.
	Progress time.Duration
	// MinBackoff and MaxBackoff bound the wait between attempts at a
	// failed message (default 1 s and CACTUS_RETRY_MAX_BACKOFF).
	MinBackoff, MaxBackoff time.Duration
	// PublishWindow bounds fan-out publishes awaiting their acks
	// (default 512).
	PublishWindow int
	// AliasConcurrency bounds alias queries handled at once (default 256).
	AliasConcurrency int
	// Sites replaces the site snapshot the provisioner keeps while it
	// serves (tests give it one that lags on purpose).
	Sites *registry.SiteSnapshot
	// RoomVersionTTL is how long the homeserver's default room version is
	// remembered (default 1 min).
	RoomVersionTTL time.Duration
}

// Provisioner is one replica. Its parts share nothing but NATS and the
// homeserver, so any number of them can run side by side.
type Provisioner struct {
	rt  *service.Runtime
	cfg *config.Config
	log *slog.Logger
	hs  *matrix.Client
	reg *registry.Registry
	// sites is the registry's sites kept in memory by a watch while the
	// provisioner serves; nil before (reads go to the bucket).
	sites   atomic.Pointer[registry.SiteSnapshot]
	done    *cas.Bucket
	ns      namespace.Namespace
	bot     mxid.UserID
	m       *metrics
	wm      *worker.Metrics
	hsm     *matrix.Metrics
	opts    Options
	flights flightGroup
	// versions is the homeserver's default room version, for the rooms
	// the provisioner creates.
	versions *versionCache
	// pub publishes fan-out jobs asynchronously, with its own window of
	// acks awaited.
	pub jetstream.JetStream
	// roomPub publishes a new comment room's registry entries, on the
	// connection that answers the alias query (so they reach the server
	// before the answer) and apart from pub, whose window a fan-out may
	// fill.
	roomPub jetstream.JetStream
	// jobStream is the jobs stream, where a new room's safety net is
	// deleted once the room is settled.
	jobStream jetstream.Stream
	// jobsDone counts jobs this replica finished, for progress logs.
	jobsDone atomic.Int64
}

// New builds a provisioner on a started runtime (NATS connected, topology
// ensured).
func New(ctx context.Context, rt *service.Runtime, opts Options) (*Provisioner, error) {
	if rt == nil || rt.Config == nil || rt.JS == nil || rt.NC == nil {
		return nil, errors.New("provisioner: runtime without configuration or NATS")
	}
	if opts.PublishWindow <= 0 {
		opts.PublishWindow = 512
	}
	if opts.AliasConcurrency <= 0 {
		opts.AliasConcurrency = 256
	}
	log := rt.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	p := &Provisioner{
		rt: rt, cfg: rt.Config, log: log, opts: opts,
		ns: rt.Config.Namespace(), bot: rt.Config.Bot(),
		m: newMetrics(rt.Metrics), wm: worker.NewMetrics(rt.Metrics), hsm: matrix.NewMetrics(rt.Metrics),
	}
	p.m.registerPending(rt.Metrics, p.pendingJobs)
	p.hs = opts.Homeserver
	if p.hs == nil {
		hs, err := matrix.NewClient(matrix.Config{
			HomeserverURL:  rt.Config.HomeserverURL,
			Token:          rt.Config.ASToken.Reveal(),
			RequestTimeout: rt.Config.HomeserverTimeout,
			// A few quick attempts in the client; longer outages and rate
			// limits go back to the worker, which waits without holding
			// a lane.
			MaxAttempts:   3,
			MaxRetryAfter: time.Second,
			Observe:       p.observe,
			Logger:        log,
		})
		if err != nil {
			return nil, fmt.Errorf("homeserver client: %w", err)
		}
		p.hs = hs
	}
	if opts.RoomVersionTTL <= 0 {
		opts.RoomVersionTTL = time.Minute
	}
	p.versions = &versionCache{fetch: p.hs.DefaultRoomVersion, ttl: opts.RoomVersionTTL, now: time.Now}
	pub, err := jetstream.New(rt.NC, jetstream.WithPublishAsyncMaxPending(opts.PublishWindow+1))
	if err != nil {
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	p.pub = pub
	if p.roomPub, err = jetstream.New(rt.NC); err != nil {
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	reg, err := registry.Open(ctx, rt.JS)
	if err != nil {
		return nil, fmt.Errorf("open the registry: %w", err)
	}
	p.reg = reg
	if p.jobStream, err = rt.JS.Stream(ctx, bus.StreamJobs); err != nil {
		return nil, fmt.Errorf("open stream %s: %w", bus.StreamJobs, err)
	}
	if p.done, err = cas.Open(ctx, rt.JS, bus.BucketDone); err != nil {
		return nil, fmt.Errorf("open bucket %s: %w", bus.BucketDone, err)
	}
	return p, nil
}

func (p *Provisioner) observe(endpoint string, status int, d time.Duration) {
	p.hsm.Observe(endpoint, status, d)
	if p.opts.Observe != nil {
		p.opts.Observe(endpoint, status, d)
	}
}

// pendingJobs is how many fan-out jobs wait or run, over all replicas.
func (p *Provisioner) pendingJobs(ctx context.Context) (uint64, error) {
	c, err := p.rt.JS.Consumer(ctx, bus.StreamJobs, bus.ConsumerJobs)
	if err != nil {
		return 0, err
	}
	info, err := c.Info(ctx)
	if err != nil {
		return 0, err
	}
	return info.NumPending + uint64(info.NumAckPending), nil
}

// Registry is the registry this provisioner reads and writes.
func (p *Provisioner) Registry() *registry.Registry { return p.reg }

// Run is the whole provisioner service: it connects, ensures the topology,
// registers the bot, serves the admin endpoints and works until ctx ends.
func Run(ctx context.Context, cfg *config.Config) error {
	// The admin listener comes first: while NATS, the topology or the
	// homeserver is not up yet the pod is alive (liveness), says what it
	// waits for (readiness) and can be scraped.
	rt := service.New("provisioner", cfg, nil)
	adminCtx, stopAdmin := context.WithCancel(context.WithoutCancel(ctx))
	defer stopAdmin()
	adminErr := make(chan error, 1)
	listening := make(chan struct{})
	go func() {
		adminErr <- service.Serve(adminCtx, cfg.AdminAddr, rt.AdminHandler(), cfg.ShutdownTimeout, rt.Log, func(a net.Addr) {
			rt.Log.Info("admin listening", "addr", a.String())
			close(listening)
		})
	}()
	// A taken admin port fails the start at once, not after NATS.
	select {
	case <-listening:
	case err := <-adminErr:
		return err
	}
	stop := func(err error) error {
		stopAdmin()
		if aerr := <-adminErr; aerr != nil && err == nil {
			err = aerr
		}
		return err
	}
	if err := rt.Connect(ctx); err != nil {
		return stop(err)
	}
	defer func() {
		rt.Close()
		rt.Log.Info("nats drained; provisioner stopped")
	}()
	p, err := New(ctx, rt, Options{})
	if err != nil {
		return stop(err)
	}
	var serveErr error
	if err := p.Bootstrap(ctx); err != nil {
		if ctx.Err() == nil {
			serveErr = err
		}
	} else {
		serveErr = p.Serve(ctx)
	}
	return stop(serveErr)
}

// Serve answers alias queries and runs the moderation and job consumers
// until ctx ends, then stops taking work, lets what is running finish and
// returns. Readiness is true while all three run.
func (p *Provisioner) Serve(ctx context.Context) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)

	// Alias queries read sites from the snapshot: no round trip, no
	// decode. Sites it has not caught up with yet are read from the bucket.
	snap := p.opts.Sites
	if snap == nil {
		snap = p.reg.WatchSites(ctx, p.log)
	}
	p.sites.Store(snap)
	var wg sync.WaitGroup
	aliasSub, err := p.subscribeAliasQueries(ctx, &wg)
	if err != nil {
		return err
	}
	errc := make(chan error, 2)
	run := func(o worker.Options, h worker.Handler) {
		err := worker.Run(ctx, p.rt.JS, o, h)
		if err != nil {
			cancel(err)
		}
		errc <- err
	}
	base := worker.Options{
		Horizon: p.cfg.RetryHorizon, Progress: p.opts.Progress,
		MinBackoff: p.opts.MinBackoff, MaxBackoff: p.cfg.RetryMaxBackoff,
		Grace: p.cfg.ShutdownTimeout / 2,
		Log:   p.log, Metrics: p.wm,
	}
	if p.opts.MaxBackoff > 0 {
		base.MaxBackoff = p.opts.MaxBackoff
	}
	// Moderation events in any order, many at once: each site's decisions
	// are ordered by their events' stream sequences (see
	// handleModeration), so one site's slow or failing calls hold only
	// that site's events, and they wait through JetStream, not here.
	mod := base
	mod.Stream, mod.Consumer, mod.Concurrency = bus.StreamEvents, bus.ConsumerModeration, p.cfg.Concurrency
	mod.OrderKey = worker.Unordered
	mod.Done = p.done
	jobs := base
	jobs.Stream, jobs.Consumer, jobs.Concurrency = bus.StreamJobs, bus.ConsumerJobs, p.cfg.Concurrency
	// Jobs need no order: each converges on the current snapshot.
	jobs.OrderKey = worker.Unordered
	go run(mod, p.handleModeration)
	go run(jobs, p.handleJob)

	p.rt.SetReady(true)
	p.rt.ReportWorker(ctx, service.WorkerHealth{Homeserver: p.hsm, Worker: p.wm})
	p.log.Info("provisioner serving", "bot", p.bot.String(), "concurrency", p.cfg.Concurrency)
	<-ctx.Done()
	p.rt.SetReady(false)
	// Stop taking queries; those already received are answered.
	if err := aliasSub.Drain(); err != nil && !errors.Is(err, nats.ErrConnectionClosed) {
		p.log.Warn("draining alias query subscription", "err", err)
	}
	var errs []error
	for range 2 {
		if err := <-errc; err != nil {
			errs = append(errs, err)
		}
	}
	wg.Wait()
	if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, context.Canceled) {
		errs = append(errs, cause)
	}
	return errors.Join(errs...)
}
