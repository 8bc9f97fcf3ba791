package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/cactus-comments/appservice/pkg/bus"
	"github.com/cactus-comments/appservice/pkg/config"
	"github.com/cactus-comments/appservice/pkg/embednats"
	"github.com/cactus-comments/appservice/pkg/hssim"
	"github.com/cactus-comments/appservice/pkg/matrix"
	"github.com/cactus-comments/appservice/pkg/mxid"
	"github.com/cactus-comments/appservice/pkg/namespace"
	"github.com/cactus-comments/appservice/pkg/power"
	"github.com/cactus-comments/appservice/pkg/registration"
	"github.com/cactus-comments/appservice/pkg/registry"
	"github.com/cactus-comments/appservice/pkg/service"
	"github.com/cactus-comments/appservice/services/gateway/gateway"
	"github.com/cactus-comments/appservice/services/provisioner/provisioner"
)

// The harness runs the whole system in the test process: embedded NATS,
// the homeserver simulator pushing to the gateway over HTTP, and any number
// of provisioners (and botworkers) each on its own NATS connection, as
// separate processes would be.
//
// Typical use:
//
//	h := Start(t, Options{Provisioners: 2})
//	owner := h.User("owner")
//	site := h.RegisterSite("blog", owner)
//	visitor := h.User("visitor")
//	room := h.Join(visitor, h.CommentAlias("blog", "post1"))
//
// Another service joins with h.StartService("botworker", botworker.Run)
// (its whole Run on a config pointing at the harness), or, to hold its
// runtime, rt := h.Runtime("botworker") and h.Go("botworker", rt, fn).

const (
	serverName = "cactus.test"
	botLocal   = "cactusbot"
	// Tokens of the test registration; never real secrets.
	testASToken = "as_token_for_tests_0123456789abcdef0123456789abcdef"
	testHSToken = "hs_token_for_tests_0123456789abcdef0123456789abcdef"
)

// Options configure Start.
type Options struct {
	Mode hssim.Mode // default Synapse
	// RoomVersion of the simulator's new rooms. Default: E2E_ROOM_VERSION
	// if set, else the mode's own (10 for Synapse and Dendrite, 12 for
	// Conduit).
	RoomVersion string
	// V12CreateCollisions: the simulator answers 500 to a v12 createRoom
	// while another by the same user is under way, as Synapse up to
	// 1.157.1 does.
	V12CreateCollisions bool
	// Provisioners started by Start (default 1; -1 for none).
	Provisioners int
	// RetryHorizon of the workers (default 1 h): how long a transient
	// failure is retried before the message is dead-lettered.
	RetryHorizon time.Duration
	// RetryMaxBackoff caps the workers' wait between attempts (default
	// 500 ms, so that retries in tests come quickly).
	RetryMaxBackoff time.Duration
	// AliasQueryTimeout is how long the gateway waits for a provisioner's
	// answer (default 20 s).
	AliasQueryTimeout time.Duration
	// HomeserverTimeout bounds each homeserver request of the workers
	// (default 10 s).
	HomeserverTimeout time.Duration
	// Duplicates overrides the streams' duplicate window, and the
	// simulator's send transaction window with it, for tests of what
	// happens after them.
	Duplicates time.Duration
	// NATSLatency, if set, puts this delay each way between the services
	// and NATS, as a network between them would (benchmarks).
	NATSLatency time.Duration
	// Concurrency of each worker (default 8).
	Concurrency int
	// AckWait overrides the consumers' AckWait (default bus.AckWait), so
	// that a test that kills a worker sees its messages redelivered soon.
	AckWait time.Duration
	// Memory keeps streams in memory (benchmarks).
	Memory bool
	// LogLevel of every service's logger, into the test log (default warn;
	// debug when E2E_DEBUG is set).
	LogLevel slog.Level
}

// Harness is one running system.
type Harness struct {
	t    testing.TB
	opts Options
	Ctx  context.Context

	NATS *embednats.Server
	HS   *hssim.Server
	// HSProxy is the workers' way to the simulator: HSProxy.Down() is a
	// homeserver that refuses connections.
	HSProxy  *hsProxy
	NC       *nats.Conn
	JS       jetstream.JetStream
	Registry *registry.Registry
	// Bot acts as the appservice's bot user with the as_token.
	Bot        *matrix.Client
	BotID      mxid.UserID
	NS         namespace.Namespace
	GatewayURL string

	cfg     *config.Config
	natsURL string // what the services connect to
	gateway atomic.Pointer[http.Handler]
	// httpc is shared by the clients the harness makes, so that their
	// idle connections can be closed before the simulator stops (a
	// connection the server sees as new holds its shutdown for 5 s).
	httpc *http.Client
	logw  *testLogWriter

	mu       sync.Mutex
	services []*Service
	seq      int
}

// Start brings the system up; everything stops when the test ends.
func Start(t testing.TB, o Options) *Harness {
	t.Helper()
	if o.Mode == "" {
		o.Mode = hssim.Synapse
	}
	if o.RoomVersion == "" {
		o.RoomVersion = os.Getenv("E2E_ROOM_VERSION")
	}
	if o.Provisioners == 0 {
		o.Provisioners = 1
	}
	if o.RetryHorizon <= 0 {
		o.RetryHorizon = time.Hour
	}
	if o.RetryMaxBackoff <= 0 {
		o.RetryMaxBackoff = 500 * time.Millisecond
	}
	if o.AliasQueryTimeout <= 0 {
		o.AliasQueryTimeout = 20 * time.Second
	}
	if o.HomeserverTimeout <= 0 {
		o.HomeserverTimeout = 10 * time.Second
	}
	if o.Concurrency <= 0 {
		o.Concurrency = 8
	}
	switch {
	case os.Getenv("E2E_DEBUG") != "":
		o.LogLevel = slog.LevelDebug
	case o.LogLevel == 0:
		o.LogLevel = slog.LevelWarn
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	h := &Harness{t: t, opts: o, Ctx: ctx, logw: &testLogWriter{t: t},
		httpc: &http.Client{Transport: http.DefaultTransport.(*http.Transport).Clone()}}
	t.Cleanup(h.logw.close)

	h.NATS = embednats.StartTest(t)
	h.natsURL = h.NATS.ClientURL()
	if o.NATSLatency > 0 {
		h.natsURL = startProxy(t, strings.TrimPrefix(h.natsURL, "nats://"), o.NATSLatency).addr
	}

	// The gateway's address must be in the registration before the
	// simulator starts, and the simulator's in the gateway's config: the
	// listener comes first and the handler is set once the gateway exists.
	gw := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hp := h.gateway.Load()
		if hp == nil {
			http.Error(w, `{"errcode":"M_UNKNOWN","error":"gateway not started"}`, http.StatusServiceUnavailable)
			return
		}
		(*hp).ServeHTTP(w, r)
	}))
	t.Cleanup(gw.Close)
	h.GatewayURL = gw.URL

	rateLimited := false
	reg := &registration.Registration{
		ID: "cactus", URL: &h.GatewayURL, ASToken: testASToken, HSToken: testHSToken,
		SenderLocalpart: botLocal, RateLimited: &rateLimited,
		Namespaces: registration.Namespaces{
			Users:   []registration.Namespace{{Exclusive: true, Regex: "@" + botLocal + ":" + strings.ReplaceAll(serverName, ".", `\.`)}},
			Aliases: []registration.Namespace{{Exclusive: true, Regex: "#comments_.*"}},
		},
	}
	hs, err := hssim.Start(ctx, hssim.Options{
		ServerName: serverName, Mode: o.Mode, RoomVersion: o.RoomVersion, TimeUnit: 5 * time.Millisecond, TxnWindow: o.Duplicates,
		V12CreateCollisions: o.V12CreateCollisions,
		Registrations:       []*registration.Registration{reg},
		Logger:              slog.New(slog.NewTextHandler(h.logw, &slog.HandlerOptions{Level: o.LogLevel})),
	})
	if err != nil {
		t.Fatalf("start simulator: %v", err)
	}
	t.Cleanup(func() {
		h.httpc.CloseIdleConnections()
		_ = hs.Close()
	})
	h.HS = hs
	h.HSProxy = startHSProxy(t, strings.TrimPrefix(hs.URL(), "http://"))

	h.cfg = h.newConfig()
	h.BotID = h.cfg.Bot()
	h.NS = h.cfg.Namespace()
	h.NC, h.JS = h.connect("harness")
	topo := service.Topology(h.cfg)
	topo.Memory = o.Memory
	topo.Duplicates = o.Duplicates
	if err := topo.Ensure(ctx, h.JS); err != nil {
		t.Fatalf("ensure topology: %v", err)
	}
	if o.AckWait > 0 {
		for _, cs := range topo.Consumers() {
			cs.Config.AckWait = o.AckWait
			if _, err := h.JS.CreateOrUpdateConsumer(ctx, cs.Stream, cs.Config); err != nil {
				t.Fatalf("shorten AckWait of %s: %v", cs.Config.Durable, err)
			}
		}
		// The partition lease follows AckWait, so a killed botworker's
		// partitions move sooner too.
		kc := topo.PartitionBucket()
		kc.TTL = bus.LeaseTTL(o.AckWait)
		kc.LimitMarkerTTL = kc.TTL
		if _, err := h.JS.CreateOrUpdateKeyValue(ctx, kc); err != nil {
			t.Fatalf("shorten the partition lease: %v", err)
		}
	}
	if h.Registry, err = registry.Open(ctx, h.JS); err != nil {
		t.Fatal(err)
	}
	if h.Bot, err = matrix.NewClient(matrix.Config{HomeserverURL: hs.URL(), Token: testASToken, HTTPClient: h.httpc}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.Bot.RegisterAppserviceUser(ctx, botLocal); err != nil {
		t.Fatalf("register bot: %v", err)
	}

	h.startGateway()
	for range max(o.Provisioners, 0) {
		h.StartProvisioner(provisioner.Options{})
	}
	return h
}

// newConfig is the configuration every service of the harness shares, as
// one environment file would give it.
func (h *Harness) newConfig() *config.Config {
	c := &config.Config{
		HSToken: testHSToken, ASToken: testASToken,
		// The workers reach the homeserver through the proxy; browsers
		// would use its own address.
		HomeserverURL: h.HSProxy.URL(), PublicHomeserverURL: h.HS.URL(), UserID: "@" + botLocal + ":" + serverName,
		NamespaceRegex: "#comments_.*", NamespacePrefix: "comments_", RegistrationRegex: "@.*:.*",
		AppserviceID: "cactus", BotDisplayName: "Cactus Comments",
		NATSURL: h.natsURL, NATSReplicas: 1,
		ListenAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0", LogFormat: "text", LogLevel: "warn",
		PublishTimeout: 10 * time.Second, AliasQueryTimeout: h.opts.AliasQueryTimeout, MaxBodyBytes: 32 << 20,
		BodyBytesInFlight: 64 << 20, BodyReadTimeout: 30 * time.Second, MinBodyRate: 64 << 10,
		ShutdownTimeout: 10 * time.Second, RegistrationLimit: 10, HomeserverTimeout: h.opts.HomeserverTimeout,
		Concurrency: h.opts.Concurrency, RetryHorizon: h.opts.RetryHorizon, RetryMaxBackoff: h.opts.RetryMaxBackoff,
	}
	if err := c.Validate(); err != nil {
		h.t.Fatalf("harness config: %v", err)
	}
	return c
}

// Config returns a copy of the shared configuration.
func (h *Harness) Config() *config.Config {
	c := *h.cfg
	return &c
}

func (h *Harness) connect(name string) (*nats.Conn, jetstream.JetStream) {
	h.t.Helper()
	url := h.natsURL
	if name == "harness" {
		url = h.NATS.ClientURL()
	}
	nc, err := nats.Connect(url, nats.Name(name), nats.MaxReconnects(-1))
	if err != nil {
		h.t.Fatalf("nats connect: %v", err)
	}
	h.t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		h.t.Fatal(err)
	}
	return nc, js
}

// Logger is a logger into the test log, tagged with a service name.
func (h *Harness) Logger(name string) *slog.Logger {
	return slog.New(slog.NewTextHandler(h.logw, &slog.HandlerOptions{Level: h.opts.LogLevel})).With("service", name)
}

// Runtime is a service runtime on its own NATS connection, with the
// topology already ensured by the harness (so a shortened AckWait stays).
func (h *Harness) Runtime(name string) *service.Runtime {
	h.t.Helper()
	nc, js := h.connect(name)
	return &service.Runtime{Name: name, Config: h.Config(), Log: h.Logger(name), Metrics: prometheus.NewRegistry(), NC: nc, JS: js}
}

// Service is one running service of the harness.
type Service struct {
	Name string
	RT   *service.Runtime // nil for services started by StartService
	// Provisioner is set for provisioners started by StartProvisioner.
	Provisioner *provisioner.Provisioner

	cancel context.CancelFunc
	done   chan error
	once   sync.Once
	err    error
}

// Go runs fn as a service until the test ends or Stop/Kill. rt may be nil.
func (h *Harness) Go(name string, rt *service.Runtime, fn func(ctx context.Context) error) *Service {
	ctx, cancel := context.WithCancel(h.Ctx)
	s := &Service{Name: name, RT: rt, cancel: cancel, done: make(chan error, 1)}
	go func() { s.done <- fn(ctx) }()
	h.mu.Lock()
	h.services = append(h.services, s)
	h.mu.Unlock()
	h.t.Cleanup(func() {
		if err := s.Stop(); err != nil {
			h.t.Errorf("service %s: %v", name, err)
		}
	})
	return s
}

// StartService runs a service's whole Run(ctx, cfg) on the harness config.
func (h *Harness) StartService(name string, run func(context.Context, *config.Config) error) *Service {
	cfg := h.Config()
	return h.Go(name, nil, func(ctx context.Context) error { return run(ctx, cfg) })
}

// StartProvisioner starts one more provisioner replica and waits until it
// serves.
func (h *Harness) StartProvisioner(o provisioner.Options) *Service {
	h.t.Helper()
	h.mu.Lock()
	h.seq++
	name := fmt.Sprintf("provisioner-%d", h.seq)
	h.mu.Unlock()
	rt := h.Runtime(name)
	if o.MinBackoff == 0 {
		o.MinBackoff = 20 * time.Millisecond
	}
	if o.Progress == 0 && h.opts.AckWait > 0 {
		o.Progress = h.opts.AckWait / 4
	}
	p, err := provisioner.New(h.Ctx, rt, o)
	if err != nil {
		h.t.Fatalf("%s: %v", name, err)
	}
	if err := p.Bootstrap(h.Ctx); err != nil {
		h.t.Fatalf("%s: bootstrap: %v", name, err)
	}
	s := h.Go(name, rt, p.Serve)
	s.Provisioner = p
	h.Eventually(func() bool { return rt.Ready() == nil }, 10*time.Second, name+" ready")
	return s
}

// Provisioners are the provisioner replicas started so far, oldest first.
func (h *Harness) Provisioners() []*provisioner.Provisioner {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []*provisioner.Provisioner
	for _, s := range h.services {
		if s.Provisioner != nil {
			out = append(out, s.Provisioner)
		}
	}
	return out
}

// Stop ends the service gracefully and returns its error.
func (s *Service) Stop() error {
	s.once.Do(func() {
		s.cancel()
		select {
		case s.err = <-s.done:
		case <-time.After(30 * time.Second):
			s.err = errors.New("did not stop within 30s")
		}
	})
	return s.err
}

// Kill ends the service as a crash would: its NATS connection drops at
// once, so nothing it holds is acknowledged (JetStream redelivers it after
// AckWait) and requests it had in flight to the homeserver still land.
func (s *Service) Kill() {
	if s.RT == nil {
		panic("Kill needs a service started with a runtime")
	}
	s.RT.NC.Close()
	s.once.Do(func() {
		s.cancel()
		select {
		case <-s.done:
		case <-time.After(30 * time.Second):
		}
	})
}

// startGateway runs the gateway on its own runtime behind the harness's
// listener, whose address the registration names, and its splitter.
func (h *Harness) startGateway() {
	h.t.Helper()
	rt := h.Runtime("gateway")
	gw, err := gateway.New(rt)
	if err != nil {
		h.t.Fatalf("gateway: %v", err)
	}
	rt.SetReady(true)
	hd := gw.Handler()
	h.gateway.Store(&hd)
	h.Go("gateway-splitter", rt, gw.Split)
}

// User is a homeserver user with its own client.
type User struct {
	ID     mxid.UserID
	Client *matrix.Client
}

// User registers a user on the simulator.
func (h *Harness) User(localpart string) *User {
	h.t.Helper()
	id, tok, err := h.HS.RegisterUser(localpart, "password-"+localpart)
	if err != nil {
		h.t.Fatalf("register %s: %v", localpart, err)
	}
	c, err := matrix.NewClient(matrix.Config{HomeserverURL: h.HS.URL(), Token: tok, MaxAttempts: 1, HTTPClient: h.httpc})
	if err != nil {
		h.t.Fatal(err)
	}
	return &User{ID: mxid.MustUserID(id), Client: c}
}

// CommentAlias is the alias of a comment section.
func (h *Harness) CommentAlias(site, section string) mxid.RoomAlias {
	a, err := h.NS.CommentsAlias(site, section)
	if err != nil {
		h.t.Fatal(err)
	}
	return a
}

// RegisterSite does what the botworker does for `register <site>`: the
// moderation room on the homeserver, with the owner invited and joined at
// level 100, and the site in the registry. Provisioner tests use it so as
// not to depend on the botworker.
func (h *Harness) RegisterSite(name string, owner *User) *registry.Site {
	h.t.Helper()
	room := h.CreateModerationRoom(name, owner)
	cur, err := h.Bot.GetPowerLevels(h.Ctx, room)
	if err != nil {
		h.t.Fatal(err)
	}
	raw, _ := json.Marshal(cur)
	create := h.RoomOf(room)
	site := &registry.Site{Name: name, Owner: owner.ID.String(), ModerationRoom: room.String(), ModerationCreate: &create, PowerLevels: raw}
	if err := h.Registry.CreateSite(h.Ctx, site); err != nil {
		h.t.Fatalf("record site %s: %v", name, err)
	}
	return site
}

// CreateModerationRoom creates a site's moderation room on the homeserver
// only, as the original appservice did (a site from before the registry),
// in the homeserver's default room version.
func (h *Harness) CreateModerationRoom(name string, owner *User) mxid.RoomID {
	h.t.Helper()
	version := h.HS.RoomVersion()
	pl := power.ModerationRoomOverride(version, h.BotID.String(), owner.ID.String())
	room, err := h.Bot.CreateRoom(h.Ctx, &matrix.CreateRoomRequest{
		RoomVersion: version,
		Visibility:  matrix.VisibilityPrivate, RoomAliasName: h.NS.ModerationLocalpart(name),
		Name: name + " moderation room", Topic: "Moderation of " + name,
		Invite: []string{owner.ID.String()}, CreationContent: map[string]any{"m.federate": true},
		InitialState: []matrix.StateEvent{
			{Type: "m.room.join_rules", Content: map[string]string{"join_rule": "invite"}},
			{Type: "m.room.history_visibility", Content: map[string]string{"history_visibility": "invited"}},
		},
		PowerLevelContentOverride: pl,
	})
	if err != nil {
		h.t.Fatalf("create moderation room of %s: %v", name, err)
	}
	if _, err := owner.Client.JoinRoom(h.Ctx, room.String()); err != nil {
		h.t.Fatalf("owner joins moderation room: %v", err)
	}
	return room
}

// RoomOf is a room's version and creators, as the homeserver has them.
func (h *Harness) RoomOf(room mxid.RoomID) power.Room {
	h.t.Helper()
	r, err := registry.ReadRoom(h.Ctx, h.Bot, room)
	if err != nil {
		h.t.Fatalf("create event of %s: %v", room, err)
	}
	return r
}

// Join makes u join alias (the homeserver asks the appservice about an
// unknown alias) and returns the room.
func (h *Harness) Join(u *User, alias mxid.RoomAlias) mxid.RoomID {
	h.t.Helper()
	room, err := u.Client.JoinRoom(h.Ctx, alias.String())
	if err != nil {
		h.t.Fatalf("%s joins %s: %v", u.ID, alias, err)
	}
	return room
}

// WaitSim waits until cond holds, re-checking whenever the simulator's state
// changes (no polling).
func (h *Harness) WaitSim(cond func() bool, timeout time.Duration, what string) {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(h.Ctx, timeout)
	defer cancel()
	if err := h.HS.Wait(ctx, cond); err != nil {
		h.t.Fatalf("waiting for %s: %v (%s)", what, err, h.describe())
	}
}

// describe is the state of the pipeline, for failure messages.
func (h *Harness) describe() string {
	var b strings.Builder
	for _, cs := range service.Topology(h.cfg).Consumers() {
		c := struct{ stream, consumer string }{cs.Stream, cs.Config.Durable}
		cons, err := h.JS.Consumer(h.Ctx, c.stream, c.consumer)
		if err != nil {
			fmt.Fprintf(&b, "%s: %v; ", c.consumer, err)
			continue
		}
		info, err := cons.Info(h.Ctx)
		if err != nil {
			fmt.Fprintf(&b, "%s: %v; ", c.consumer, err)
			continue
		}
		if info.NumPending == 0 && info.NumAckPending == 0 && info.NumRedelivered == 0 {
			continue
		}
		fmt.Fprintf(&b, "%s: pending %d, ack pending %d, redelivered %d, delivered %d; ", c.consumer,
			info.NumPending, info.NumAckPending, info.NumRedelivered, info.Delivered.Consumer)
	}
	txns := h.HS.Transactions()
	failed := 0
	for _, tx := range txns {
		if !tx.OK {
			failed++
		}
	}
	fmt.Fprintf(&b, "homeserver pushes: %d, not 200: %d, all split: %v", len(txns), failed, h.TxnsSplit())
	return b.String()
}

// Eventually polls cond until it holds, for conditions nothing signals.
func (h *Harness) Eventually(cond func() bool, timeout time.Duration, what string) {
	h.t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			h.t.Fatalf("timed out after %v waiting for %s (%s)", timeout, what, h.describe())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// JobsDrained reports whether every job has been acknowledged.
func (h *Harness) JobsDrained() bool {
	return h.consumerIdle(bus.StreamJobs, bus.ConsumerJobs)
}

// ModerationDrained reports whether every moderation event has been handled.
func (h *Harness) ModerationDrained() bool {
	return h.consumerIdle(bus.StreamEvents, bus.ConsumerModeration)
}

// TxnsSplit reports whether the gateway's splitter has moved every
// transaction the homeserver was answered for into the event stream.
func (h *Harness) TxnsSplit() bool {
	s, err := h.JS.Stream(h.Ctx, bus.StreamTxns)
	if err != nil {
		return false
	}
	info, err := s.Info(h.Ctx)
	return err == nil && info.State.Msgs == 0
}

// consumerIdle reports whether a consumer has acknowledged every message
// of its filter, and, for the event stream, every transaction is split.
// The consumer's own pending count is updated after the stream stores a
// message, so the stream's last matching sequence is the reference.
func (h *Harness) consumerIdle(stream, consumer string) bool {
	if stream == bus.StreamEvents && !h.TxnsSplit() {
		return false
	}
	c, err := h.JS.Consumer(h.Ctx, stream, consumer)
	if err != nil {
		return false
	}
	info, err := c.Info(h.Ctx)
	if err != nil || info.NumPending != 0 || info.NumAckPending != 0 {
		return false
	}
	s, err := h.JS.Stream(h.Ctx, stream)
	if err != nil {
		return false
	}
	filter := info.Config.FilterSubject
	if filter == "" {
		filter = ">"
	}
	last, err := s.GetLastMsgForSubject(h.Ctx, filter)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return true
	}
	return err == nil && last.Sequence <= info.AckFloor.Stream
}

// Quiesce waits until the homeserver has pushed everything and every
// moderation event and job is done, so that a test can assert that
// something did NOT happen.
func (h *Harness) Quiesce(timeout time.Duration) {
	h.t.Helper()
	h.quiesce(timeout, func() (bool, string) {
		m, j := h.ModerationDrained(), h.JobsDrained()
		return m && j, fmt.Sprintf("moderation drained %v, jobs drained %v", m, j)
	})
}

// QuiesceJobs is Quiesce without waiting for the moderation consumer: for
// a test in which a moderation event may rightly wait (power levels of a
// moderation room the bot cannot read yet are retried until it can).
func (h *Harness) QuiesceJobs(timeout time.Duration) {
	h.t.Helper()
	h.quiesce(timeout, func() (bool, string) {
		j := h.JobsDrained()
		return j, fmt.Sprintf("jobs drained %v", j)
	})
}

// quiesce waits until the homeserver is idle and drained says so, twice
// in a row: a job can have produced an event the homeserver is about to
// push.
func (h *Harness) quiesce(timeout time.Duration, drained func() (bool, string)) {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(h.Ctx, timeout)
	defer cancel()
	for {
		if err := h.HS.WaitIdle(ctx); err != nil {
			h.t.Fatalf("quiesce: %v", err)
		}
		if ok, _ := drained(); ok {
			if err := h.HS.WaitIdle(ctx); err == nil {
				if ok, _ := drained(); ok {
					return
				}
			}
		}
		select {
		case <-ctx.Done():
			_, why := drained()
			h.t.Fatalf("quiesce: %s", why)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// DeadLetters returns every dead letter stored so far.
func (h *Harness) DeadLetters() []bus.DeadLetter {
	h.t.Helper()
	c, err := h.JS.OrderedConsumer(h.Ctx, bus.StreamDLQ, jetstream.OrderedConsumerConfig{})
	if err != nil {
		h.t.Fatal(err)
	}
	s, err := h.JS.Stream(h.Ctx, bus.StreamDLQ)
	if err != nil {
		h.t.Fatal(err)
	}
	info, err := s.Info(h.Ctx)
	if err != nil {
		h.t.Fatal(err)
	}
	var out []bus.DeadLetter
	for range info.State.Msgs {
		m, err := c.Next(jetstream.FetchMaxWait(5 * time.Second))
		if err != nil {
			h.t.Fatalf("read dead letters: %v", err)
		}
		out = append(out, bus.ReadDeadLetter(m))
	}
	return out
}

// testLogWriter sends service logs to the test log, and drops them once
// the test is over (late goroutines must not call t.Log then).
type testLogWriter struct {
	t      testing.TB
	mu     sync.Mutex
	closed bool
}

func (w *testLogWriter) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.closed {
		w.t.Log(strings.TrimRight(string(b), "\n"))
	}
	return len(b), nil
}

func (w *testLogWriter) close() {
	w.mu.Lock()
	w.closed = true
	w.mu.Unlock()
}

var _ io.Writer = (*testLogWriter)(nil)
