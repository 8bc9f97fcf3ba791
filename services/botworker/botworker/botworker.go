// Package botworker is the chat interface of the comment service: the bot
// user accepts invites from people allowed to register sites, answers
// help, registers sites (creating each site's moderation room and
// recording the site in the registry the provisioner shares) and lists a
// user's sites.
//
// It consumes the bot's events as a member of their partitioned consumer
// group (bus.Topology.BotGroup, pkg/partition): the rooms are split into
// partitions, each consumed by one replica at a time through pkg/worker, so
// replicas share the work, each room's commands are handled in order
// however many replicas run, and failures are retried in place with
// backoff or dead-lettered. Every side effect is
// idempotent and derived from the triggering event: replies carry a
// transaction id made from the event id, and a registration is a
// create-if-absent on both the homeserver (the alias) and the registry.
package botworker

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/cactus-comments/appservice/pkg/bus"
	"github.com/cactus-comments/appservice/pkg/cas"
	"github.com/cactus-comments/appservice/pkg/config"
	"github.com/cactus-comments/appservice/pkg/event"
	"github.com/cactus-comments/appservice/pkg/matrix"
	"github.com/cactus-comments/appservice/pkg/mxid"
	"github.com/cactus-comments/appservice/pkg/namespace"
	"github.com/cactus-comments/appservice/pkg/partition"
	"github.com/cactus-comments/appservice/pkg/registry"
	"github.com/cactus-comments/appservice/pkg/service"
	"github.com/cactus-comments/appservice/pkg/worker"
)

// Name is the service name in logs and NATS connection names.
const Name = "botworker"

// Homeserver is what the bot needs from the client-server API.
// *matrix.Client implements it; tests substitute their own.
type Homeserver interface {
	// EnsureUser registers the bot and sets its profile where it differs.
	EnsureUser(ctx context.Context, user mxid.UserID, displayName, avatarURL string) (created bool, err error)
	JoinRoom(ctx context.Context, roomIDOrAlias string) (mxid.RoomID, error)
	LeaveRoom(ctx context.Context, room mxid.RoomID, reason string) error
	CreateRoom(ctx context.Context, req *matrix.CreateRoomRequest) (mxid.RoomID, error)
	SendEvent(ctx context.Context, room mxid.RoomID, eventType, txnID string, content any) (mxid.EventID, error)
	GetStateEvent(ctx context.Context, room mxid.RoomID, eventType, stateKey string, out any) error
	ResolveAlias(ctx context.Context, alias mxid.RoomAlias) (mxid.RoomID, error)
	Members(ctx context.Context, room mxid.RoomID, membership string) ([]event.Event, error)
	// DefaultRoomVersion is the version of rooms whose createRoom names none.
	DefaultRoomVersion(ctx context.Context) (string, error)
	// CreateEvent is a room's m.room.create event, sender included.
	CreateEvent(ctx context.Context, room mxid.RoomID) (*event.Event, error)
	SetStateEvent(ctx context.Context, room mxid.RoomID, eventType, stateKey string, content any) (mxid.EventID, error)
	Invite(ctx context.Context, room mxid.RoomID, user mxid.UserID, reason string) error
}

// Options are the parts of a Bot that tests or an embedding program may
// supply. Zero values are built from the runtime's configuration.
type Options struct {
	Homeserver Homeserver
	Registry   *registry.Registry
	// Now is the clock (default time.Now).
	Now func() time.Time
	// DocsURL, ClientScript and ClientStyle override where the bot's
	// messages point for documentation and the web client's files.
	DocsURL, ClientScript, ClientStyle string
	// MinBackoff is the first wait before a failed message is tried
	// again (default 1 s, as every worker).
	MinBackoff time.Duration
	// Instance names this replica in the bot's partitioned consumer group
	// (default: the host name and a random suffix).
	Instance string
}

// Bot handles the bot's events. It is safe for concurrent use.
type Bot struct {
	cfg      *config.Config
	log      *slog.Logger
	js       jetstream.JetStream
	hs       Homeserver
	reg      *registry.Registry
	state    *state
	texts    texts
	m        *metrics
	wm       *worker.Metrics
	pm       *partition.Metrics
	hsm      *matrix.Metrics
	group    bus.PartitionGroup
	instance string
	bot      mxid.UserID
	ns       namespace.Namespace
	mentions []string
	now      func() time.Time
	backoff  time.Duration
	done     *cas.Bucket // done markers

	ours   *ttlCache // rooms known to be comment or moderation rooms
	direct *ttlCache // direct-chat verdicts of rooms without a DM mark
}

// New builds a Bot on a started runtime.
func New(ctx context.Context, rt *service.Runtime, o Options) (*Bot, error) {
	cfg := rt.Config
	m := newMetrics(rt.Metrics)
	hsm := matrix.NewMetrics(rt.Metrics)
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Homeserver == nil {
		c, err := matrix.NewClient(matrix.Config{
			HomeserverURL:  cfg.HomeserverURL,
			Token:          cfg.ASToken.Reveal(),
			RequestTimeout: cfg.HomeserverTimeout,
			// A long rate limit goes back to the worker, which waits
			// without holding a lane.
			MaxRetryAfter: time.Second,
			Observe:       hsm.Observe,
			Logger:        rt.Log,
		})
		if err != nil {
			return nil, fmt.Errorf("homeserver client: %w", err)
		}
		o.Homeserver = c
	}
	if o.Registry == nil {
		reg, err := registry.Open(ctx, rt.JS)
		if err != nil {
			return nil, fmt.Errorf("open the registry: %w", err)
		}
		o.Registry = reg
	}
	sb, err := cas.Open(ctx, rt.JS, bus.BucketLimit)
	if err != nil {
		return nil, fmt.Errorf("open bucket %s: %w", bus.BucketLimit, err)
	}
	done, err := cas.Open(ctx, rt.JS, bus.BucketDone)
	if err != nil {
		return nil, fmt.Errorf("open bucket %s: %w", bus.BucketDone, err)
	}
	t := texts{
		ServerName: cfg.ServerName(), PublicURL: cfg.PublicHomeserverURL, Namespace: cfg.Namespace(),
		Limit: cfg.RegistrationLimit, DocsURL: o.DocsURL, ClientScript: o.ClientScript, ClientStyle: o.ClientStyle,
	}
	if t.DocsURL == "" {
		t.DocsURL = defaultDocsURL
	}
	if t.ClientScript == "" {
		t.ClientScript = defaultClientScript
	}
	if t.ClientStyle == "" {
		t.ClientStyle = defaultClientStyle
	}
	bot := cfg.Bot()
	mentions := []string{bot.String(), bot.Localpart()}
	if cfg.BotDisplayName != "" {
		mentions = append(mentions, cfg.BotDisplayName)
	}
	if o.MinBackoff <= 0 {
		o.MinBackoff = time.Second
	}
	group := service.Topology(cfg).BotGroup()
	pm := partition.NewMetrics(rt.Metrics)
	pm.Init(group.Name)
	return &Bot{
		cfg: cfg, log: rt.Log, js: rt.JS, hs: o.Homeserver, reg: o.Registry,
		state: &state{b: sb, now: o.Now}, texts: t, m: m, wm: worker.NewMetrics(rt.Metrics), hsm: hsm,
		// Once per service, however many partitions it consumes.
		pm:    pm,
		group: group, instance: o.Instance,
		bot: bot, ns: cfg.Namespace(), mentions: mentions, now: o.Now, backoff: o.MinBackoff, done: done,
		ours:   newTTLCache(o.Now, time.Minute, 50_000),
		direct: newTTLCache(o.Now, time.Minute, 50_000),
	}, nil
}

// Run is the whole botworker service: NATS and topology, the admin
// listener, the bot user, then the consumer until ctx ends.
func Run(ctx context.Context, cfg *config.Config) error {
	// The admin listener comes first: while NATS or the topology is not
	// there yet the pod is alive (liveness), says what it waits for
	// (readiness) and can be scraped.
	rt := service.New(Name, cfg, nil)
	adminCtx, stopAdmin := context.WithCancel(context.WithoutCancel(ctx))
	adminErr := make(chan error, 1)
	listening := make(chan struct{})
	go func() {
		adminErr <- service.Serve(adminCtx, cfg.AdminAddr, rt.AdminHandler(), cfg.ShutdownTimeout, rt.Log, func(a net.Addr) {
			rt.Log.Info("admin listener up", "addr", a.String())
			close(listening)
		})
	}()
	// A taken admin port fails the start at once, not after NATS.
	select {
	case <-listening:
	case err := <-adminErr:
		stopAdmin()
		return err
	}
	defer func() {
		stopAdmin()
		<-adminErr
	}()
	if err := rt.Connect(ctx); err != nil {
		if ctx.Err() != nil {
			// Asked to stop while starting: not a failure.
			return nil
		}
		return err
	}
	// Deferred after the admin listener's stop, so it runs before it:
	// NATS drains once the admin listener is down.
	defer rt.Close()
	b, err := New(ctx, rt, Options{})
	if err != nil {
		return err
	}
	if err := b.Setup(ctx); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	rt.SetReady(true)
	rt.ReportWorker(ctx, service.WorkerHealth{Homeserver: b.hsm, Worker: b.wm})
	rt.Log.Info("botworker ready", "bot", b.bot.String(), "concurrency", cfg.Concurrency)
	err = b.Consume(ctx)
	rt.SetReady(false)
	return err
}

// Consume handles the bot's events until ctx ends: the replica joins the
// bot's partitioned consumer group and consumes the partitions it owns,
// all of them sharing CACTUS_CONCURRENCY lanes.
func (b *Bot) Consume(ctx context.Context) error {
	lanes := worker.NewLanes(b.cfg.Concurrency)
	consume := func(ctx context.Context, consumer string) error {
		return worker.Run(ctx, b.js, worker.Options{
			Stream:     b.group.Stream,
			Consumer:   consumer,
			Lanes:      lanes,
			Horizon:    b.cfg.RetryHorizon,
			MinBackoff: b.backoff,
			MaxBackoff: b.cfg.RetryMaxBackoff,
			// A room's events in order: retried in place (the default
			// order key is the subject, which names the room), pulled
			// through the group's pinned priority group, in short pulls,
			// and handed back in order within the partition's grace
			// period: pkg/partition's contract.
			PriorityGroup: b.group.PriorityGroup,
			PullWait:      partitionPullWait,
			Grace:         bus.PartitionGrace - partitionPullWait - time.Second,
			Done:          b.done,
			Log:           b.log,
			Metrics:       b.wm,
		}, b.HandleMsg)
	}
	m, err := partition.New(b.js, b.group, consume, partition.Options{
		Instance: b.instance, Log: b.log, Metrics: b.pm,
	})
	if err != nil {
		return fmt.Errorf("partitioned consumer group: %w", err)
	}
	return m.Run(ctx)
}

// partitionPullWait bounds one pull from a partition consumer: a pull the
// server may still answer after this replica died is covered by the
// partition lease only for a few seconds.
const partitionPullWait = 2 * time.Second

// HandleMsg is the worker handler: one event of the bot's partitions. The
// worker hands a room's events over one at a time, in stream order, and
// retries a failing one in place before the next; the partition group
// makes this replica the only one consuming the room's partition.
func (b *Bot) HandleMsg(ctx context.Context, m jetstream.Msg) error {
	ev, err := event.Decode(m.Data())
	if err != nil {
		return worker.Permanent(fmt.Errorf("botworker: %w", err))
	}
	last := worker.LastAttempt(ctx)
	if ev.Sender == b.bot.String() {
		return b.HandleEvent(ctx, ev, last)
	}
	ours, err := b.isOurRoom(ctx, ev.RoomID)
	if err != nil {
		return err
	}
	if ours {
		return b.handleEvent(ctx, ev, last, roomOurs)
	}
	// Invites and commands have effects a second run must not repeat
	// once the homeserver has forgotten their transaction ids: an event
	// stored again after the duplicate window is recognised here.
	if done, err := worker.CheckDone(ctx, ev.EventID); err != nil || done {
		return err
	}
	return b.handleEvent(ctx, ev, last, roomNotOurs)
}

// HandleEvent handles one event. last says this is the final delivery:
// a command that still cannot reach the homeserver gets an answer saying
// so instead of silence.
func (b *Bot) HandleEvent(ctx context.Context, ev *event.Event, last bool) error {
	return b.handleEvent(ctx, ev, last, roomUnknown)
}

// roomKind is what is already known about an event's room.
type roomKind int

const (
	roomUnknown roomKind = iota
	roomOurs             // a comment or moderation room
	roomNotOurs
)

// handleEvent is HandleEvent with what the caller knows of the room.
func (b *Bot) handleEvent(ctx context.Context, ev *event.Event, last bool, kind roomKind) error {
	log := b.log.With("event_id", ev.EventID, "room_id", ev.RoomID, "sender", ev.Sender)
	switch ev.Type {
	case "m.room.member":
		if ev.StateKeyIs(b.bot.String()) {
			return b.onMembership(ctx, ev, log)
		}
	case "m.room.message":
		return b.onMessage(ctx, ev, last, kind, log)
	}
	return nil
}

// txnID derives a send transaction id from the triggering event and the
// purpose of the message, so a redelivered event resends with the same id
// (which the homeserver deduplicates) and different messages caused by one
// event never collide. Event ids are globally unique, which Synapse needs
// because it deduplicates on the path regardless of the acting user.
func txnID(eventID, purpose string) string {
	h := sha256.Sum256([]byte(eventID))
	return "cactus." + base64.RawURLEncoding.EncodeToString(h[:18]) + "." + purpose
}

// hsError turns a homeserver error into what the worker should do: wait
// as long as a rate limit asks, give up at once on a refusal, otherwise
// retry with backoff.
func hsError(err error) error {
	if err == nil {
		return nil
	}
	var e *matrix.Error
	if errors.As(err, &e) && e.RetryAfter > 0 {
		return worker.RetryAfter(err, e.RetryAfter)
	}
	if matrix.IsPermanent(err) {
		return worker.Permanent(err)
	}
	return err
}

// ttlCache remembers room verdicts for a short while. It is bounded: when
// full it starts over, which costs lookups, never correctness.
type ttlCache struct {
	mu  sync.Mutex
	m   map[string]cacheEntry
	ttl time.Duration
	max int
	now func() time.Time
}

type cacheEntry struct {
	v  bool
	at time.Time
}

func newTTLCache(now func() time.Time, ttl time.Duration, max int) *ttlCache {
	return &ttlCache{m: map[string]cacheEntry{}, ttl: ttl, max: max, now: now}
}

func (c *ttlCache) get(k string) (v, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[k]
	if !ok || c.now().Sub(e.at) > c.ttl {
		return false, false
	}
	return e.v, true
}

func (c *ttlCache) put(k string, v bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.m) >= c.max {
		clear(c.m)
	}
	c.m[k] = cacheEntry{v: v, at: c.now()}
}

func (c *ttlCache) drop(k string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.m, k)
}
