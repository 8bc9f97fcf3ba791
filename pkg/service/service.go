// Package service is the runtime every binary shares: configuration and
// logger set-up, signal handling, the NATS connection with the topology
// ensured, and the admin HTTP server with /livez, /readyz and /metrics.
package service

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/cactus-comments/appservice/pkg/buildinfo"
	"github.com/cactus-comments/appservice/pkg/bus"
	"github.com/cactus-comments/appservice/pkg/config"
	"github.com/cactus-comments/appservice/pkg/logging"
)

// Main is the whole of a service's main function: it handles -h and
// --version, loads and
// validates the configuration (exit 2 with one line on error), sets up
// logging and signals, and calls run. It returns the process exit code.
func Main(name string, args []string, stderr io.Writer, run func(context.Context, *config.Config) error) int {
	for _, a := range args {
		switch a {
		case "-h", "-help", "--help":
			fmt.Fprintf(stderr, "%s: configured only through environment variables:\n\n", name)
			_ = config.Usage(stderr)
			return 0
		case "-version", "--version":
			fmt.Fprintf(stderr, "%s %s\n", name, buildinfo.Get())
			return 0
		}
	}
	if len(args) > 0 {
		fmt.Fprintf(stderr, "%s: unexpected arguments %q (configuration is through CACTUS_* environment variables; -h lists them)\n", name, args)
		return 2
	}
	unknown := config.Unknown(os.Environ())
	cfg, err := config.Load()
	if err == nil {
		err = cfg.CheckFiles()
	}
	if err != nil {
		// No logger without a configuration: plain lines.
		for _, w := range unknown {
			fmt.Fprintf(stderr, "%s: warning: %s\n", name, w)
		}
		PrintConfigError(stderr, name, err)
		return 2
	}
	log := newLogger(stderr, cfg, name)
	for _, w := range unknown {
		log.Warn(w)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg); err != nil {
		log.Error("stopped on an error", "err", err)
		return 1
	}
	return 0
}

// PrintConfigError writes a configuration error one problem per line, each
// prefixed with name, so that every line names its variable on its own.
func PrintConfigError(w io.Writer, name string, err error) {
	for _, line := range strings.Split(err.Error(), "\n") {
		fmt.Fprintf(w, "%s: configuration: %s\n", name, line)
	}
}

// NewLogger builds the logger of a service from its configuration, with
// every configured secret redacted.
func NewLogger(cfg *config.Config, name string) *slog.Logger {
	return newLogger(os.Stderr, cfg, name)
}

func newLogger(w io.Writer, cfg *config.Config, name string) *slog.Logger {
	return logging.New(w, logging.Options{
		Format: cfg.LogFormat, Level: cfg.LogLevel, Secrets: cfg.Secrets(), Service: name,
	})
}

// Runtime holds what a running service shares with its parts.
type Runtime struct {
	Name    string
	Config  *config.Config
	Log     *slog.Logger
	Metrics *prometheus.Registry
	NC      *nats.Conn
	JS      jetstream.JetStream

	ready atomic.Bool
	// waiting says what a runtime not ready yet waits for ("" once
	// connected).
	waiting atomic.Pointer[string]
	// checks are the service's own readiness conditions (AddReadyCheck).
	checks atomic.Pointer[[]func() error]
	// details are lines /readyz shows without changing readiness
	// (AddReadyDetail).
	mu           sync.Mutex
	details      []func() string
	instanceOnce sync.Once
	instance     string
}

// Start is New then Connect, for programs without an admin listener.
func Start(ctx context.Context, name string, cfg *config.Config, log *slog.Logger) (*Runtime, error) {
	rt := New(name, cfg, log)
	if err := rt.Connect(ctx); err != nil {
		return nil, err
	}
	return rt, nil
}

// New builds a runtime not yet connected: its admin handler already
// answers (/livez 200, /readyz 503 saying what it waits for, /metrics with
// cactus_service_ready 0), so that a service serves it before it connects
// and probes and scrapes see a starting service rather than a dead one.
func New(name string, cfg *config.Config, log *slog.Logger) *Runtime {
	if log == nil {
		log = NewLogger(cfg, name)
	}
	for _, d := range cfg.Deprecations() {
		log.Warn("deprecated setting: " + d)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), buildinfo.Get().Collector())
	rt := &Runtime{Name: name, Config: cfg, Log: log, Metrics: reg}
	rt.setWaiting("starting")
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "cactus_service_ready",
		Help: "1 while /readyz answers 200 (NATS connected, the service started), else 0.",
	}, func() float64 {
		if rt.Ready() != nil {
			return 0
		}
		return 1
	}))
	return rt
}

// Connect connects to NATS and ensures the topology, retrying for up to
// two minutes or until ctx ends; meanwhile /readyz says what it waits for.
// It sets NC and JS; the runtime is not ready until the service calls
// SetReady(true).
func (r *Runtime) Connect(ctx context.Context) error {
	connectCtx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	scrub := logging.NewRedactor(nil, r.Config.Secrets())
	r.setWaiting("waiting for NATS at " + scrub.Scrub(r.Config.NATSURL))
	nc, err := bus.Connect(connectCtx, ConnOptions(r.Config, r.Name), r.Log)
	if err != nil {
		return err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return fmt.Errorf("jetstream: %w", err)
	}
	waiting := func(err error) {
		// errors.Join lists one missing part a line; /readyz says it in one.
		missing := strings.ReplaceAll(err.Error(), "\n", "; ")
		r.setWaiting("waiting for the NATS topology (cactusctl topology ensure creates it): " + scrub.Scrub(missing))
	}
	if err := prepareTopology(connectCtx, r.Config, js, bus.Identity(r.Name), r.Log, waiting); err != nil {
		nc.Close()
		return err
	}
	// NC and JS are written before the service's SetReady(true), which
	// Ready loads before it reads them.
	r.NC, r.JS = nc, js
	r.setWaiting("")
	return nil
}

// setWaiting sets what /readyz says while the service is not ready yet.
func (r *Runtime) setWaiting(reason string) { r.waiting.Store(&reason) }

// prepareTopology ensures the whole topology (CACTUS_NATS_TOPOLOGY=ensure),
// or, for an identity that may not change it (check), waits until what
// this service uses exists: the operator creates it with `cactusctl
// topology ensure`, maybe while the services start.
func prepareTopology(ctx context.Context, cfg *config.Config, js jetstream.JetStream, id bus.Identity, log *slog.Logger, waiting func(error)) error {
	topo := Topology(cfg)
	if cfg.NATSTopology != "check" {
		return topo.Ensure(ctx, js)
	}
	delay := 250 * time.Millisecond
	for {
		err := topo.CheckFor(ctx, js, id)
		if err == nil {
			return nil
		}
		waiting(err)
		log.Warn("waiting for the NATS topology (cactusctl topology ensure creates it)", "missing", err, "in", delay)
		select {
		case <-ctx.Done():
			return fmt.Errorf("the NATS topology is incomplete; run cactusctl topology ensure with the operator's credentials: %w", err)
		case <-time.After(delay):
		}
		delay = min(delay*2, 10*time.Second)
	}
}

// Topology is the bus topology for a configuration.
func Topology(cfg *config.Config) bus.Topology {
	return bus.Topology{Replicas: cfg.NATSReplicas}
}

// ConnOptions maps the configuration to NATS connection options.
func ConnOptions(cfg *config.Config, name string) bus.ConnOptions {
	return bus.ConnOptions{
		URL: cfg.NATSURL, Name: "cactus-" + name, InboxPrefix: bus.Identity(name).InboxPrefix(),
		Creds: cfg.NATSCreds, NKeySeed: cfg.NATSNKey,
		User: cfg.NATSUser, Password: cfg.NATSPassword.Reveal(), Token: cfg.NATSToken.Reveal(),
		CA: cfg.NATSCA, Cert: cfg.NATSCert, Key: cfg.NATSKey,
	}
}

// SetReady flips /readyz.
func (r *Runtime) SetReady(ok bool) { r.ready.Store(ok) }

// AddReadyCheck adds a condition to readiness: while check returns an
// error, /readyz fails with it. A check must answer at once (it runs on
// every probe); slow work belongs in the service's own loop.
func (r *Runtime) AddReadyCheck(check func() error) {
	for {
		old := r.checks.Load()
		var next []func() error
		if old != nil {
			next = append(next, *old...)
		}
		next = append(next, check)
		if r.checks.CompareAndSwap(old, &next) {
			return
		}
	}
}

// AddReadyDetail adds a line that /readyz shows when fn returns one. It
// does not change readiness: it says what a ready service is struggling
// with (the homeserver unreachable, say), which restarting it or taking
// it out of service would not fix.
func (r *Runtime) AddReadyDetail(fn func() string) {
	r.mu.Lock()
	r.details = append(r.details, fn)
	r.mu.Unlock()
}

// ReadyDetails returns the current detail lines of /readyz.
func (r *Runtime) ReadyDetails() []string {
	r.mu.Lock()
	fns := slices.Clone(r.details)
	r.mu.Unlock()
	var out []string
	for _, fn := range fns {
		if d := fn(); d != "" {
			out = append(out, d)
		}
	}
	return out
}

// Ready reports readiness: the service said so, NATS is connected, and
// every check added with AddReadyCheck passes.
func (r *Runtime) Ready() error {
	if !r.ready.Load() {
		if w := r.waiting.Load(); w != nil && *w != "" {
			return errors.New(*w)
		}
		return errors.New("not ready")
	}
	if !r.NC.IsConnected() {
		return fmt.Errorf("nats %s", r.NC.Status())
	}
	if checks := r.checks.Load(); checks != nil {
		for _, c := range *checks {
			if err := c(); err != nil {
				return err
			}
		}
	}
	return nil
}

// AdminHandler serves /livez, /readyz and /metrics.
func (r *Runtime) AdminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /livez", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		status := "ok"
		if err := r.Ready(); err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			status = err.Error()
		}
		_, _ = io.WriteString(w, strings.Join(append([]string{status}, r.ReadyDetails()...), "\n")+"\n")
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(r.Metrics, promhttp.HandlerOpts{Registry: r.Metrics}))
	return mux
}

// Serve runs an HTTP server on addr until ctx ends, then shuts it down
// gracefully within timeout. It returns once the server has stopped.
// onListen, if set, receives the bound address (useful with port 0).
func Serve(ctx context.Context, addr string, h http.Handler, timeout time.Duration, log *slog.Logger, onListen func(net.Addr)) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen %s: %w", addr, err)
	}
	if onListen != nil {
		onListen(ln.Addr())
	}
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       120 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("serve %s: %w", addr, err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		_ = srv.Close()
		return fmt.Errorf("shutdown %s: %w", addr, err)
	}
	return nil
}

// Close drains the NATS connection: subscriptions stop, pending publishes
// are flushed.
func (r *Runtime) Close() {
	if r.NC == nil || r.NC.IsClosed() {
		return
	}
	done := make(chan struct{})
	r.NC.SetClosedHandler(func(*nats.Conn) { close(done) })
	if err := r.NC.Drain(); err != nil {
		r.NC.Close()
		return
	}
	select {
	case <-done:
	case <-time.After(r.Config.ShutdownTimeout):
		r.NC.Close()
	}
}
