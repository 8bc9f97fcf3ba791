package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/cactus-comments/appservice/cmd/internal/envconf"
	"github.com/cactus-comments/appservice/pkg/bus"
	"github.com/cactus-comments/appservice/pkg/config"
	"github.com/cactus-comments/appservice/pkg/service"
)

// cfgFlags are the flags of every command that reads the configuration.
type cfgFlags struct {
	envFile string
	timeout time.Duration
}

func (c *cfgFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&c.envFile, "env", "", "read CACTUS_* variables from this .env file too (the environment wins)")
	fs.DurationVar(&c.timeout, "timeout", 10*time.Second, "give up reaching NATS or the homeserver after this long")
}

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

// full loads and validates the whole configuration.
func (c *cfgFlags) full(e *env) (*config.Config, error) {
	l, err := c.lookup(e)
	if err != nil {
		return nil, err
	}
	cfg, err := envconf.Load(l)
	if err != nil {
		return nil, usagef("configuration: %v", err)
	}
	return cfg, nil
}

// natsOnly loads the configuration for commands that only talk to NATS:
// the homeserver variables need not be set.
func (c *cfgFlags) natsOnly(e *env) (*config.Config, error) {
	l, err := c.lookup(e)
	if err != nil {
		return nil, err
	}
	cfg, err := envconf.Fill(l)
	if err != nil {
		return nil, usagef("configuration: %v", err)
	}
	if cfg.NATSURL == "" {
		return nil, usagef("configuration: CACTUS_NATS_URL is empty")
	}
	return cfg, nil
}

// quietLogger drops the bus package's connection chatter; failures come
// back as errors.
func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// connect dials NATS within the timeout.
func (c *cfgFlags) connect(ctx context.Context, cfg *config.Config) (*nats.Conn, jetstream.JetStream, error) {
	cctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	nc, err := bus.Connect(cctx, service.ConnOptions(cfg, "cactusctl"), quietLogger())
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

// connectNATS is natsOnly then connect: what every command that needs only
// NATS does first. The caller closes the connection.
func (c *cfgFlags) connectNATS(ctx context.Context, e *env) (*nats.Conn, jetstream.JetStream, error) {
	cfg, err := c.natsOnly(e)
	if err != nil {
		return nil, nil, err
	}
	return c.connect(ctx, cfg)
}
