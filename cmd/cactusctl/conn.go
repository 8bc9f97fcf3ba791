package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/cactus-comments/appservice/cmd/internal/envconf"
	"github.com/cactus-comments/appservice/pkg/bus"
	"github.com/cactus-comments/appservice/pkg/config"
	"github.com/cactus-comments/appservice/pkg/service"
)

func (c *cfgFlags) lookup(e *env) (envconf.Lookup, error) {
	if c.envFile == "" {
		return e.lookup, nil
	}
	file, err := envconf.File(c.envFile)
	if err != nil {
		return nil, usageError{err}
	}
	return envconf.Chain(e.lookup, file), nil
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
	nc, err := bus.Connect(cctx, o, quietLogger())
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
