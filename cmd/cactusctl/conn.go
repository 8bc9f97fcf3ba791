package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/cactus-comments/appservice/cmd/internal/envconf"
	"github.com/cactus-comments/appservice/pkg/bus"
	"github.com/cactus-comments/appservice/pkg/config"
	"github.com/cactus-comments/appservice/pkg/logging"
	"github.com/cactus-comments/appservice/pkg/service"
)

// lookup is the environment, then the --env file. The first call warns
// about misspelt CACTUS_* names in either, as the services do.
func (c *cfgFlags) lookup(e *env) (envconf.Lookup, error) {
	var file map[string]string
	if c.envFile != "" {
		var err error
		if file, err = envconf.ReadFile(c.envFile); err != nil {
			return nil, usageError{err}
		}
	}
	if !c.warned {
		c.warned = true
		var environ []string
		if e.environ != nil {
			environ = e.environ()
		}
		for _, w := range config.Unknown(environ) {
			fmt.Fprintf(e.stderr, "cactusctl: warning: %s\n", w)
		}
		var names []string
		for k := range file {
			names = append(names, k)
		}
		for _, w := range config.Unknown(names) {
			fmt.Fprintf(e.stderr, "cactusctl: warning: %s: %s\n", c.envFile, w)
		}
	}
	if file == nil {
		return e.lookup, nil
	}
	return envconf.Chain(e.lookup, envconf.Map(file)), nil
}

// full loads and validates the whole configuration; its error lists every
// problem (config.Problems).
func (c *cfgFlags) full(e *env) (*config.Config, error) {
	l, err := c.lookup(e)
	if err != nil {
		return nil, err
	}
	return envconf.Load(l)
}

// natsOnly loads the configuration for commands that only talk to NATS:
// the homeserver variables need not be set, but the NATS ones must be
// valid.
func (c *cfgFlags) natsOnly(e *env) (*config.Config, error) {
	l, err := c.lookup(e)
	if err != nil {
		return nil, err
	}
	cfg, err := envconf.Fill(l)
	if err != nil {
		return nil, err
	}
	var ps config.Problems
	if errors.As(cfg.Validate(), &ps) {
		var nats config.Problems
		for _, p := range ps {
			if strings.HasPrefix(p.Var, config.Prefix+"_NATS_") {
				nats = append(nats, p)
			}
		}
		if len(nats) > 0 {
			return nil, nats
		}
	}
	return cfg, nil
}

// quietLogger drops the bus package's connection chatter; failures come
// back as errors.
func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// connect dials NATS once: an operator at a terminal wants to hear at once
// that NATS is down, not after the timeout.
func (c *cfgFlags) connect(ctx context.Context, cfg *config.Config) (*nats.Conn, jetstream.JetStream, error) {
	if err := cfg.CheckFiles(); err != nil {
		return nil, nil, err
	}
	cctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	o := service.ConnOptions(cfg, "cactusctl")
	o.Once = true
	nc, err := dialWithin(cctx, o, c.timeout, logging.NewRedactor(nil, cfg.Secrets()).Scrub(cfg.NATSURL))
	if err != nil {
		return nil, nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, nil, fmt.Errorf("jetstream: %w", err)
	}
	return nc, js, nil
}

// dialWithin is bus.Connect bounded by ctx: the NATS client's handshake
// has a deadline of its own, longer than --timeout may be, and a server
// that accepts the connection but never speaks (a wrong port, a stuck
// proxy) would otherwise hold the operator until that one ends, with a raw
// "i/o timeout". A dial given up on finishes in the background and its
// connection, if any, is closed.
func dialWithin(ctx context.Context, o bus.ConnOptions, timeout time.Duration, url string) (*nats.Conn, error) {
	type dialed struct {
		nc  *nats.Conn
		err error
	}
	res := make(chan dialed, 1)
	go func() {
		nc, err := bus.Connect(ctx, o, quietLogger())
		res <- dialed{nc, err}
	}()
	silent := fmt.Errorf("NATS at %s did not answer within %s (is it a NATS client port?)", url, timeout)
	select {
	case d := <-res:
		var ne net.Error
		if errors.As(d.err, &ne) && ne.Timeout() {
			return nil, fmt.Errorf("NATS at %s did not answer the connection handshake in time (is it a NATS client port?)", url)
		}
		return d.nc, d.err
	case <-ctx.Done():
		go func() {
			if d := <-res; d.nc != nil {
				d.nc.Close()
			}
		}()
		if errors.Is(context.Cause(ctx), context.Canceled) {
			return nil, ctx.Err()
		}
		return nil, silent
	}
}

// connectEnsured is connect, then creates or updates every stream,
// consumer and bucket, as the operator may. The caller closes the
// connection.
func (c *cfgFlags) connectEnsured(ctx context.Context, cfg *config.Config) (*nats.Conn, jetstream.JetStream, error) {
	nc, js, err := c.connect(ctx, cfg)
	if err != nil {
		return nil, nil, err
	}
	if err := service.Topology(cfg).Ensure(ctx, js); err != nil {
		nc.Close()
		return nil, nil, err
	}
	return nc, js, nil
}

// connectNATS is natsOnly then connect: what every command that needs only
// NATS does first. The caller closes the connection.
func (c *cfgFlags) connectNATS(ctx context.Context, e *env) (*nats.Conn, jetstream.JetStream, error) {
	cfg, err := c.natsOnly(e)
	if err != nil {
		return nil, nil, err
	}
	return c.connect(ctx, cfg)
}
