// Package gateway is the only HTTP surface the homeserver sees: it
// authenticates the homeserver, stores every event of a transaction in
// JetStream before acknowledging it, asks a provisioner over NATS whether a
// comment room alias exists, and answers user queries and pings itself.
//
// The gateway keeps no state: run as many replicas as the load needs.
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
	"github.com/cactus-comments/appservice/pkg/service"
)

// Name is the service name in logs, metrics and the NATS client name.
const Name = "gateway"

// maxPendingAcks bounds publishes awaiting their PubAck across all
// transactions of one replica; beyond it publishing stalls briefly, then
// the transaction answers 503.
const maxPendingAcks = 8192

// Gateway serves the Application Service API. Create it with New and mount
// Handler on the homeserver-facing listener.
type Gateway struct {
	cfg     *config.Config
	log     *slog.Logger
	nc      *nats.Conn
	js      jetstream.JetStream
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
	// take, less room for headers. Larger ones are dead-lettered: a
	// refused publish would fail the transaction forever.
	maxEvent int

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
	js jetstream.JetStream
}

// WithJetStream publishes events through js instead of a JetStream context
// of the runtime's connection. Tests use it to inject a slow or failing
// JetStream.
func WithJetStream(js jetstream.JetStream) Option {
	return func(o *options) { o.js = js }
}

// New builds a gateway on a started runtime (NATS connected, topology
// ensured). Its metrics are registered in rt.Metrics.
func New(rt *service.Runtime, opts ...Option) (*Gateway, error) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	js := o.js
	if js == nil {
		// A context of our own: an ack that never comes must not hold a
		// pending slot forever, so async publishes time out.
		var err error
		js, err = jetstream.New(rt.NC,
			jetstream.WithPublishAsyncTimeout(rt.Config.PublishTimeout),
			jetstream.WithPublishAsyncMaxPending(maxPendingAcks))
		if err != nil {
			return nil, fmt.Errorf("gateway: jetstream: %w", err)
		}
	}
	g, err := newGateway(rt.Config, rt.Log, rt.Metrics, rt.NC, js)
	if err != nil {
		return nil, err
	}
	rt.AddReadyCheck(g.health.ready)
	return g, nil
}

// newGateway builds a gateway from its parts; nc and js may be nil in
// tests that never reach NATS.
func newGateway(cfg *config.Config, log *slog.Logger, reg prometheus.Registerer, nc *nats.Conn, js jetstream.JetStream) (*Gateway, error) {
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
	g.maxEvent = maxEventSize(nc)
	g.ask = g.askNATS
	g.handler = g.routes()
	return g, nil
}

// headerRoom is what our headers and the NATS protocol line may add to an
// event's bytes.
const headerRoom = 4 << 10

// maxEventSize is the largest event the event stream accepts from nc.
func maxEventSize(nc *nats.Conn) int {
	limit := int64(1 << 20)
	for _, sc := range (bus.Topology{}).Streams() {
		if sc.Name == bus.StreamEvents && sc.MaxMsgSize > 0 {
			limit = int64(sc.MaxMsgSize)
		}
	}
	if nc != nil {
		if mp := nc.MaxPayload(); mp > 0 && mp < limit {
			limit = mp
		}
	}
	return int(limit) - headerRoom
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
	rt, err := service.Start(ctx, Name, cfg, log)
	if err != nil {
		return err
	}
	defer func() {
		rt.Close()
		log.Info("nats drained; gateway stopped")
	}()
	g, err := New(rt)
	if err != nil {
		return err
	}

	// Shutdown order: readiness false, then the API server stops accepting
	// and waits for in-flight transactions, then the admin server stops,
	// then (deferred) NATS drains. The servers get contexts of their own so
	// that the order holds whatever ctx does.
	apiCtx, stopAPI := context.WithCancel(context.WithoutCancel(ctx))
	defer stopAPI()
	adminCtx, stopAdmin := context.WithCancel(context.WithoutCancel(ctx))
	defer stopAdmin()
	pingCtx, stopPing := context.WithCancel(ctx)
	defer stopPing()
	go g.WatchStore(pingCtx)

	adminAddr := make(chan net.Addr, 1)
	adminErr := make(chan error, 1)
	go func() {
		adminErr <- service.Serve(adminCtx, cfg.AdminAddr, rt.AdminHandler(), cfg.ShutdownTimeout, log, func(a net.Addr) {
			log.Info("admin listening", "addr", a.String())
			adminAddr <- a
		})
	}()
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

	select {
	case <-ctx.Done():
		log.Info("shutting down: readiness off, finishing in-flight requests")
	case err := <-apiErr:
		rt.SetReady(false)
		stopAdmin()
		<-adminErr
		return err
	case err := <-adminErr:
		rt.SetReady(false)
		stopAPI()
		<-apiErr
		return err
	}
	rt.SetReady(false)
	stopAPI()
	err = <-apiErr
	stopAdmin()
	if aerr := <-adminErr; err == nil {
		err = aerr
	}
	return err
}
