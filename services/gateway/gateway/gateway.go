package gateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/cactus-comments/appservice/pkg/bus"
	"github.com/cactus-comments/appservice/pkg/config"
	"github.com/cactus-comments/appservice/pkg/jspub"
	"github.com/cactus-comments/appservice/pkg/partition"
	"github.com/cactus-comments/appservice/pkg/service"
)

// Name is the service name in logs, metrics and the NATS client name.
const Name = "gateway"

// Gateway serves the Application Service API. Create it with New and mount
// Handler on the homeserver-facing listener.
type Gateway struct {
	cfg     *config.Config
	log     *slog.Logger
	nc      *nats.Conn
	js      jetstream.JetStream
	pub     *jspub.Publisher
	metrics *metrics
	token   tokenChecker
	bot     string
	handler http.Handler
	// bodies is the budget of request body bytes held at once.
	bodies *bodyBudget
	// health is whether JetStream acknowledges: readiness.
	health storeHealth

	publishTimeout time.Duration
	aliasTimeout   time.Duration
	maxBody        int64
	// maxEvent is the largest event the event stream and the NATS server
	// take, less room for headers, that also fits in a transaction
	// message. Larger ones are dead-lettered: a refused publish would fail
	// the transaction forever.
	maxEvent int
	// maxChunk is the largest transaction message.
	maxChunk int
	// split moves transactions to the event stream (split.go).
	split *splitter

	// txns recycles the buffers of a transaction (*txnState).
	txns sync.Pool
	// pingRetry bounds the startup ping's retries (tests shorten it).
	pingRetry pingRetry
	// ask puts an alias query to the provisioners (askNATS; tests replace
	// it).
	ask func(ctx context.Context, alias string) (bus.AliasAnswer, error)
}

// Option changes how New builds a Gateway.
type Option func(*options)

type options struct {
	split     partition.Options
	splitConn *nats.Conn
}

// WithSplitter sets the options of this replica's member of the splitter
// group (its instance name, grace and heartbeat; tests shorten them).
func WithSplitter(o partition.Options) Option {
	return func(op *options) { op.split = o }
}

// WithSplitterConn makes the splitter use nc, which the caller closes,
// instead of a connection of its own.
func WithSplitterConn(nc *nats.Conn) Option {
	return func(op *options) { op.splitConn = nc }
}

// New builds a gateway on a started runtime (NATS connected, topology
// ensured). Its metrics are registered in rt.Metrics. The API is
// Handler; the splitter runs in Split.
func New(rt *service.Runtime, opts ...Option) (*Gateway, error) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	g, err := newGateway(rt.Config, rt.Log, rt.Metrics, rt.NC, rt.JS, o)
	if err != nil {
		return nil, err
	}
	if g.pub, err = jspub.New(rt.NC); err != nil {
		return nil, fmt.Errorf("publisher: %w", err)
	}
	rt.AddReadyCheck(g.health.ready)
	rt.AddReadyCheck(g.split.ready)
	return g, nil
}

// newGateway builds a gateway from its parts; nc and js may be nil in
// tests that never reach NATS.
func newGateway(cfg *config.Config, log *slog.Logger, reg prometheus.Registerer, nc *nats.Conn, js jetstream.JetStream, o options) (*Gateway, error) {
	if cfg.Bot().IsZero() {
		return nil, errors.New("gateway: configuration not validated (no bot user id)")
	}
	bodies := &bodyBudget{limit: cfg.BodyBytesInFlight}
	m, err := newMetrics(reg, bodies)
	if err != nil {
		return nil, err
	}
	g := &Gateway{
		cfg:            cfg,
		log:            log,
		nc:             nc,
		js:             js,
		metrics:        m,
		token:          newTokenChecker(cfg.HSToken.Reveal()),
		bot:            cfg.Bot().String(),
		publishTimeout: cfg.PublishTimeout,
		aliasTimeout:   cfg.AliasQueryTimeout,
		maxBody:        cfg.MaxBodyBytes,
		bodies:         bodies,
		pingRetry:      defaultPingRetry,
	}
	g.maxEvent, g.maxChunk = maxEventSize(nc), maxChunkSize(nc)
	g.split = &splitter{g: g, group: service.Topology(cfg).SplitterGroup(), popts: o.split, nc: o.splitConn, handoff: newHandoff()}
	g.split.setState(splitStandby, nil)
	g.ask = g.askNATS
	g.handler = g.routes()
	return g, nil
}

// headerRoom is what our headers and the NATS protocol line may add to an
// event's bytes; chunkRoom the same for a transaction message, whose
// headers are its hash and the transaction id (at most maxHeaderValue
// bytes and a note of its length).
const (
	headerRoom = 4 << 10
	chunkRoom  = 2 << 10
)

// maxEventSize is the largest event the event stream accepts from nc that
// also fits alone in a transaction message.
func maxEventSize(nc *nats.Conn) int {
	return min(streamLimit(bus.StreamEvents, nc)-headerRoom, maxChunkSize(nc)-chunkFraming)
}

// maxChunkSize is the largest transaction message's data.
func maxChunkSize(nc *nats.Conn) int { return streamLimit(bus.StreamTxns, nc) - chunkRoom }

// streamLimit is the largest message the stream named takes from nc.
func streamLimit(name string, nc *nats.Conn) int {
	limit := int64(1 << 20)
	for _, sc := range (bus.Topology{}).Streams() {
		if sc.Name == name && sc.MaxMsgSize > 0 {
			limit = int64(sc.MaxMsgSize)
		}
	}
	if nc != nil {
		if mp := nc.MaxPayload(); mp > 0 && mp < limit {
			limit = mp
		}
	}
	return int(limit)
}

// Handler is the Application Service API, for the homeserver-facing
// listener.
func (g *Gateway) Handler() http.Handler { return g.handler }

// Run is the gateway service: it connects to NATS and ensures the
// topology, serves the Application Service API on CACTUS_LISTEN_ADDR and
// the admin endpoints on CACTUS_ADMIN_ADDR, asks the homeserver to ping it,
// and on ctx's end shuts down gracefully: readiness goes false, in-flight
// transactions finish, then NATS is drained.
func Run(ctx context.Context, cfg *config.Config) error {
	return RunWith(ctx, cfg, RunOptions{})
}

// RunOptions are the extras of RunWith.
type RunOptions struct {
	// Logger replaces the logger built from cfg.
	Logger *slog.Logger
	// OnListen receives the bound addresses of the API and admin
	// listeners once both listen (the dev runner and tests bind port 0).
	OnListen func(api, admin net.Addr)
}

// RunWith is Run with options.
func RunWith(ctx context.Context, cfg *config.Config, o RunOptions) error {
	log := o.Logger
	if log == nil {
		log = service.NewLogger(cfg, Name)
	}
	// The admin listener comes first: while NATS or the topology is not
	// there yet the pod is alive (liveness), says what it waits for
	// (readiness) and can be scraped.
	rt := service.New(Name, cfg, log)
	adminCtx, stopAdmin := context.WithCancel(context.WithoutCancel(ctx))
	defer stopAdmin()
	adminAddr := make(chan net.Addr, 1)
	adminErr := make(chan error, 1)
	listening := make(chan struct{})
	go func() {
		adminErr <- service.Serve(adminCtx, cfg.AdminAddr, rt.AdminHandler(), cfg.ShutdownTimeout, log, func(a net.Addr) {
			log.Info("admin listening", "addr", a.String())
			adminAddr <- a
			close(listening)
		})
	}()
	// A taken admin port fails the start at once, not after NATS.
	select {
	case <-listening:
	case err := <-adminErr:
		return err
	}
	if err := rt.Connect(ctx); err != nil {
		stopAdmin()
		<-adminErr
		return err
	}
	defer func() {
		rt.Close()
		log.Info("nats drained; gateway stopped")
	}()
	g, err := New(rt)
	if err != nil {
		stopAdmin()
		<-adminErr
		return err
	}

	// Shutdown order: readiness false, then the API server stops accepting
	// and waits for in-flight transactions, then the splitter hands over
	// to another replica, then the admin server stops, then (deferred)
	// NATS drains. Each part gets a context of its own so that the order
	// holds whatever ctx does.
	apiCtx, stopAPI := context.WithCancel(context.WithoutCancel(ctx))
	defer stopAPI()
	splitCtx, stopSplit := context.WithCancel(context.WithoutCancel(ctx))
	defer stopSplit()
	pingCtx, stopPing := context.WithCancel(ctx)
	defer stopPing()
	go g.WatchStore(pingCtx)

	splitErr := make(chan error, 1)
	go func() { splitErr <- g.Split(splitCtx) }()
	apiErr := make(chan error, 1)
	go func() {
		apiErr <- service.Serve(apiCtx, cfg.ListenAddr, g.Handler(), cfg.ShutdownTimeout, log, func(a net.Addr) {
			log.Info("application service API listening", "addr", a.String())
			rt.SetReady(true)
			if o.OnListen != nil {
				go func() {
					select {
					case admin := <-adminAddr:
						o.OnListen(a, admin)
					case <-apiCtx.Done():
					}
				}()
			}
			// The homeserver calls us back during the ping, so it can
			// only run once we listen.
			go g.PingHomeserver(pingCtx)
		})
	}()

	var apiDone, adminDone, splitDone bool
	select {
	case <-ctx.Done():
		log.Info("shutting down: readiness off, finishing in-flight requests")
	case err = <-apiErr:
		apiDone = true
	case err = <-adminErr:
		adminDone = true
	case err = <-splitErr:
		splitDone = true
		if err == nil {
			err = errors.New("stopped")
		}
		err = fmt.Errorf("splitter: %w", err)
	}
	rt.SetReady(false)
	stopAPI()
	if !apiDone {
		if aerr := <-apiErr; err == nil {
			err = aerr
		}
	}
	stopSplit()
	if !splitDone {
		if serr := <-splitErr; err == nil && serr != nil {
			err = fmt.Errorf("splitter: %w", serr)
		}
	}
	stopAdmin()
	if !adminDone {
		if aerr := <-adminErr; err == nil {
			err = aerr
		}
	}
	return err
}
