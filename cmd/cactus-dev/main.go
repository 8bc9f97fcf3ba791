// Command cactus-dev runs the whole Cactus Comments system in one process
// for development (`make run`): an embedded NATS server with JetStream data
// in ./.cactus-dev, the gateway, a provisioner and a botworker, and the
// homeserver simulator with demo users unless CACTUS_HOMESERVER_URL names a
// real homeserver. It prints how to try it. Ctrl-C stops everything
// cleanly; the next start keeps the tokens and the NATS data, while the
// simulator starts empty.
//
// Every flag has an environment variable (CACTUS_DEV_*); the services'
// own CACTUS_* variables (log level, tuning, tokens) apply too.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"github.com/cactus-comments/appservice/cmd/internal/devrun"
	"github.com/cactus-comments/appservice/pkg/buildinfo"
	"github.com/cactus-comments/appservice/pkg/config"
	"github.com/cactus-comments/appservice/pkg/hssim"
	"github.com/cactus-comments/appservice/pkg/logging"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr, os.LookupEnv, os.Environ()))
}

// errUsage marks command-line and configuration mistakes (exit 2).
type errUsage struct{ error }

// errVersion asks for the version line instead of a run.
var errVersion = errors.New("version")

func parseOptions(args []string, stderr io.Writer, lookup func(string) (string, bool)) (devrun.Options, error) {
	env := func(k, def string) string {
		if v, ok := lookup(k); ok && v != "" {
			return v
		}
		return def
	}
	fs := flag.NewFlagSet("cactus-dev", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o devrun.Options
	var natsPort, adminPort, mode string
	fs.StringVar(&o.DataDir, "data", env("CACTUS_DEV_DATA", devrun.DefaultDataDir), "data directory: NATS storage, registration, tokens (CACTUS_DEV_DATA)")
	fs.StringVar(&natsPort, "nats-port", env("CACTUS_DEV_NATS_PORT", "4222"), "embedded NATS port on 127.0.0.1, 0 for any free port (CACTUS_DEV_NATS_PORT)")
	fs.StringVar(&o.GatewayAddr, "listen", env("CACTUS_DEV_LISTEN", "127.0.0.1:8080"), "gateway address the homeserver calls (CACTUS_DEV_LISTEN)")
	fs.StringVar(&adminPort, "admin-port", env("CACTUS_DEV_ADMIN_PORT", "9090"), "first admin port on 127.0.0.1: gateway, provisioner and botworker use it and the next two (CACTUS_DEV_ADMIN_PORT)")
	fs.StringVar(&o.HomeserverURL, "homeserver-url", env("CACTUS_HOMESERVER_URL", ""), "a real homeserver to run against instead of the simulator (CACTUS_HOMESERVER_URL)")
	fs.StringVar(&o.ServerName, "server-name", env("CACTUS_DEV_SERVER_NAME", ""), "homeserver server name (default localhost with the simulator) (CACTUS_DEV_SERVER_NAME)")
	fs.StringVar(&o.GatewayURL, "gateway-url", env("CACTUS_DEV_GATEWAY_URL", ""), "URL the homeserver uses to reach the gateway (default http://<listen>) (CACTUS_DEV_GATEWAY_URL)")
	fs.StringVar(&o.SimAddr, "hs-addr", env("CACTUS_DEV_HS_ADDR", "127.0.0.1:8008"), "simulator address (CACTUS_DEV_HS_ADDR)")
	fs.StringVar(&mode, "hs-mode", env("CACTUS_DEV_HS_MODE", "synapse"), "homeserver the simulator imitates: synapse, dendrite or conduit (CACTUS_DEV_HS_MODE)")
	fs.StringVar(&o.SimRoomVersion, "room-version", env("CACTUS_DEV_ROOM_VERSION", ""), "room version of the simulator's new rooms: 10, 11 or 12 (default: the mode's, 10 for synapse and dendrite, 12 for conduit) (CACTUS_DEV_ROOM_VERSION)")
	fs.BoolVar(&o.NATSAuth, "nats-auth", env("CACTUS_DEV_NATS_AUTH", "") != "", "run NATS with one least-privilege user per service, as production does (CACTUS_DEV_NATS_AUTH=1)")
	version := fs.Bool("version", false, "print the version and exit")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: cactus-dev [flags]\n\nRuns gateway, provisioner and botworker with an embedded NATS, and a homeserver\nsimulator unless CACTUS_HOMESERVER_URL is set. Ctrl-C stops it.\n\nflags:")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if *version {
		return o, errVersion
	}
	if fs.NArg() > 0 {
		return o, errUsage{fmt.Errorf("unexpected arguments %q", fs.Args())}
	}
	n, err := strconv.Atoi(natsPort)
	if err != nil || n < 0 || n > 65535 {
		return o, errUsage{fmt.Errorf("NATS port %q is not a port number", natsPort)}
	}
	o.NATSPort = n
	a, err := strconv.Atoi(adminPort)
	if err != nil || a < 0 || a > 65533 {
		return o, errUsage{fmt.Errorf("admin port %q is not a port number", adminPort)}
	}
	for i := range o.AdminAddrs {
		p := 0
		if a != 0 {
			p = a + i
		}
		o.AdminAddrs[i] = net.JoinHostPort("127.0.0.1", strconv.Itoa(p))
	}
	m, err := hssim.ParseMode(mode)
	if err != nil {
		return o, errUsage{err}
	}
	o.SimMode = m
	if err := devrun.CheckRoomVersion(o.SimRoomVersion); err != nil {
		return o, errUsage{fmt.Errorf("-room-version / CACTUS_DEV_ROOM_VERSION: %w", err)}
	}
	o.Env = lookup
	return o, nil
}

// warnings are the misspelt-name warnings for environ: CACTUS_DEV_* names
// the dev runner does not read, and CACTUS_* names the services do not.
func warnings(environ []string) []string {
	// The dev runner's names are those its flags look up.
	var dev []string
	_, _ = parseOptions(nil, io.Discard, func(k string) (string, bool) {
		if strings.HasPrefix(k, devPrefix) {
			dev = append(dev, k)
		}
		return "", false
	})
	return append(config.Misspelt(environ, devPrefix, dev, "the dev runner reads"), config.Unknown(environ)...)
}

const devPrefix = config.Prefix + "_DEV_"

func run(args []string, stdout, stderr io.Writer, lookup func(string) (string, bool), environ []string) int {
	warned := warnings(environ)
	o, err := parseOptions(args, stderr, lookup)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if errors.Is(err, errVersion) {
		fmt.Fprintln(stdout, "cactus-dev", buildinfo.Get())
		return 0
	}
	if err != nil {
		for _, w := range warned {
			fmt.Fprintf(stderr, "cactus-dev: warning: %s\n", w)
		}
		fmt.Fprintf(stderr, "cactus-dev: %v\n", err)
		return 2
	}
	get := func(k string) string { v, _ := lookup(k); return v }
	o.Log = logging.New(stderr, logging.Options{Format: get("CACTUS_LOG_FORMAT"), Level: get("CACTUS_LOG_LEVEL"), Service: "cactus-dev"})
	for _, w := range warned {
		o.Log.Warn(w)
	}
	o.Out = stdout

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	defer takeForeground()()
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)
	go func() {
		<-sigs
		fmt.Fprintln(stderr, "cactus-dev: stopping (press Ctrl-C again to quit at once)")
		cancel()
		<-sigs
		fmt.Fprintln(stderr, "cactus-dev: quit without a clean stop")
		os.Exit(1)

	}()
	if err := devrun.Run(ctx, o); err != nil {
		fmt.Fprintf(stderr, "cactus-dev: %v\n", err)
		return 1
	}
	fmt.Fprintln(stderr, "cactus-dev: stopped cleanly")
	return 0
}
