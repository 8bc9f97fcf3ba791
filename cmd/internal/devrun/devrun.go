// Package devrun is the one-process development system behind `make run`:
// an embedded NATS server with JetStream file storage in a local data
// directory, the gateway, a provisioner and a botworker, and, unless a real
// homeserver is configured, the homeserver simulator with demo users.
package devrun

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/cactus-comments/appservice/cmd/internal/appreg"
	"github.com/cactus-comments/appservice/cmd/internal/demo"
	"github.com/cactus-comments/appservice/cmd/internal/envconf"
	"github.com/cactus-comments/appservice/cmd/internal/rebuild"
	"github.com/cactus-comments/appservice/pkg/bus"
	"github.com/cactus-comments/appservice/pkg/config"
	"github.com/cactus-comments/appservice/pkg/embednats"
	"github.com/cactus-comments/appservice/pkg/hssim"
	"github.com/cactus-comments/appservice/pkg/matrix"
	"github.com/cactus-comments/appservice/pkg/natsconf"
	"github.com/cactus-comments/appservice/pkg/registration"
	"github.com/cactus-comments/appservice/pkg/registry"
	"github.com/cactus-comments/appservice/pkg/service"
	"github.com/cactus-comments/appservice/services/botworker/botworker"
	"github.com/cactus-comments/appservice/services/gateway/gateway"
	"github.com/cactus-comments/appservice/services/provisioner/provisioner"
)

// Service names, in start order.
var serviceNames = [3]string{"gateway", "provisioner", "botworker"}

// Options configure Run. The zero value of each field takes its default.
type Options struct {
	// DataDir holds NATS storage, the persisted registration and tokens,
	// and the demo's files. Default ./.cactus-dev.
	DataDir string
	// NATSPort of the embedded server; 0 picks a free port. The command
	// defaults it to 4222.
	NATSPort int
	// GatewayAddr is where the gateway serves the homeserver; port 0 picks
	// a free port. Default 127.0.0.1:8080.
	GatewayAddr string
	// AdminAddrs are the admin listeners of gateway, provisioner and
	// botworker. Default 127.0.0.1:9090, :9091, :9092.
	AdminAddrs [3]string
	// HomeserverURL of a real homeserver; empty runs the simulator.
	HomeserverURL string
	// ServerName of the homeserver. Default localhost with the simulator;
	// required with a real homeserver unless CACTUS_USER_ID is set.
	ServerName string
	// GatewayURL is the registration's url: where the homeserver reaches
	// the gateway. Default http:// + GatewayAddr (localhost for an
	// unspecified host).
	GatewayURL string
	// SimAddr is the simulator's address; default 127.0.0.1:8008.
	SimAddr string
	// SimMode is the homeserver the simulator imitates; default synapse.
	SimMode hssim.Mode
	// SimRoomVersion is the room version of the simulator's new rooms:
	// "10", "11" or "12"; empty takes the mode's default (10 for synapse
	// and dendrite, 12 for conduit).
	SimRoomVersion string
	// Env supplies CACTUS_* variables (tuning, tokens, log settings).
	// Nil: none.
	Env envconf.Lookup
	// Out receives the banner: addresses and how to try it.
	Out io.Writer
	// Log is the runner's own log; nil discards it. The services log to
	// stderr as configured by CACTUS_LOG_FORMAT and CACTUS_LOG_LEVEL.
	Log *slog.Logger
	// Ready, if set, is called once every service reports ready.
	Ready func(Info)
	// ReadyTimeout bounds the wait for readiness; default 2 minutes.
	ReadyTimeout time.Duration
	// RegistrationPoll is how often a real homeserver is asked whether it
	// accepts the registration yet; default 2 seconds.
	RegistrationPoll time.Duration
	// NATSAuth runs NATS with one user per identity and the permissions
	// production gives them (natsconf): each service connects with its own
	// least-privilege identity, cactusctl (through the env file) as the
	// operator.
	NATSAuth bool
}

// Info describes the running system.
type Info struct {
	DataDir          string
	NATSURL          string
	HomeserverURL    string
	Simulator        *hssim.Server // nil with a real homeserver
	GatewayURL       string
	Admin            map[string]string // service name -> admin base URL
	RegistrationPath string
	EnvPath          string
	Demo             *demo.Info // nil with a real homeserver
	// StaleSites are sites of a previous run dropped from the registry
	// because the fresh simulator no longer has them.
	StaleSites []string
	// NATSPasswords are the passwords of the NATS users (NATSAuth only),
	// fresh at every start.
	NATSPasswords map[bus.Identity]string
}

// Files in the data directory.
const (
	RegistrationFile = "registration.yaml"
	EnvFile          = "cactus.env"
	natsDir          = "nats"
)

func (o *Options) defaults() error {
	if o.DataDir == "" {
		o.DataDir = ".cactus-dev"
	}
	if o.GatewayAddr == "" {
		o.GatewayAddr = "127.0.0.1:8080"
	}
	for i, def := range []string{"127.0.0.1:9090", "127.0.0.1:9091", "127.0.0.1:9092"} {
		if o.AdminAddrs[i] == "" {
			o.AdminAddrs[i] = def
		}
	}
	if o.SimAddr == "" {
		o.SimAddr = "127.0.0.1:8008"
	}
	if o.SimMode == "" {
		o.SimMode = hssim.Synapse
	}
	if err := CheckRoomVersion(o.SimRoomVersion); err != nil {
		return err
	}
	if o.Env == nil {
		o.Env = envconf.Map(nil)
	}
	if o.Out == nil {
		o.Out = io.Discard
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.ReadyTimeout <= 0 {
		o.ReadyTimeout = 2 * time.Minute
	}
	if o.RegistrationPoll <= 0 {
		o.RegistrationPoll = 2 * time.Second
	}
	if o.NATSPort < 0 || o.NATSPort > 65535 {
		return fmt.Errorf("NATS port %d out of range", o.NATSPort)
	}
	return nil
}

// RoomVersions are the room versions the dev runner's simulator may make:
// those real homeservers create by default today.
var RoomVersions = []string{"10", "11", "12"}

// CheckRoomVersion validates a simulator room version ("" for the mode's
// default).
func CheckRoomVersion(v string) error {
	if v == "" || slices.Contains(RoomVersions, v) {
		return nil
	}
	return fmt.Errorf("room version %q is not one the simulator runs (want 10, 11 or 12)", v)
}

// Run runs the whole system until ctx ends, then stops it gracefully:
// services drain, the simulator stops, NATS shuts down. It returns nil
// after a clean stop.
func Run(ctx context.Context, o Options) (err error) {
	if err := o.defaults(); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Join(o.DataDir, natsDir), 0o700); err != nil {
		return fmt.Errorf("data directory: %w", err)
	}
	// Free ports are chosen now, so that the registration, the banner and
	// the readiness checks know every address before anything starts.
	if o.GatewayAddr, err = resolvePort(o.GatewayAddr); err != nil {
		return fmt.Errorf("gateway address: %w", err)
	}
	for i := range o.AdminAddrs {
		if o.AdminAddrs[i], err = resolvePort(o.AdminAddrs[i]); err != nil {
			return fmt.Errorf("%s admin address: %w", serviceNames[i], err)
		}
	}
	if o.HomeserverURL == "" {
		if o.SimAddr, err = resolvePort(o.SimAddr); err != nil {
			return fmt.Errorf("simulator address: %w", err)
		}
	}
	for i, a := range append([]string{o.GatewayAddr}, o.AdminAddrs[:]...) {
		if err := checkFree(a); err != nil {
			name, choose := "gateway", "CACTUS_DEV_LISTEN=127.0.0.1:8081 (or -listen)"
			if i > 0 {
				name, choose = serviceNames[i-1]+" admin", "CACTUS_DEV_ADMIN_PORT=9190 (or -admin-port)"
			}
			return fmt.Errorf("%s address %s is taken (another cactus-dev running?): %w; choose another, e.g. %s make run", name, a, err, choose)
		}
	}

	cfg, reg, err := prepare(&o)
	if err != nil {
		return err
	}
	info := Info{DataDir: o.DataDir, GatewayURL: *reg.URL, Admin: map[string]string{}, RegistrationPath: filepath.Join(o.DataDir, RegistrationFile), EnvPath: filepath.Join(o.DataDir, EnvFile)}
	for i, n := range serviceNames {
		info.Admin[n] = "http://" + o.AdminAddrs[i]
	}

	if o.NATSAuth {
		if info.NATSPasswords, err = natsPasswords(); err != nil {
			return err
		}
		cfg.NATSUser, cfg.NATSPassword = string(bus.Operator), config.Secret(info.NATSPasswords[bus.Operator])
	}
	ns, err := startNATS(o, info.NATSPasswords)
	if err != nil {
		return err
	}
	defer func() {
		ns.Shutdown()
		o.Log.Info("nats stopped")
	}()
	info.NATSURL = ns.ClientURL()
	cfg.NATSURL = info.NATSURL
	if err := writeEnv(o.DataDir, cfg, reg); err != nil {
		return err
	}
	// The operator's part: with NATSAuth the services may only check
	// that the topology exists.
	if err := ensureTopology(ctx, cfg, o.Log); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}

	var sim *hssim.Server
	if o.HomeserverURL == "" {
		sim, err = hssim.Start(context.WithoutCancel(ctx), hssim.Options{
			ServerName: cfg.ServerName(), Mode: o.SimMode, RoomVersion: o.SimRoomVersion, Addr: o.SimAddr,
			Registrations: []*registration.Registration{reg}, Logger: o.Log,
		})
		if err != nil {
			return fmt.Errorf("homeserver simulator: %w (is %s taken? choose another, e.g. CACTUS_DEV_HS_ADDR=127.0.0.1:8009 make run, or -hs-addr)", err, o.SimAddr)
		}
		defer func() {
			if cerr := sim.Close(); cerr != nil && err == nil {
				err = cerr
			}
			o.Log.Info("homeserver simulator stopped")
		}()
		if cfg.HomeserverURL != sim.URL() {
			cfg.HomeserverURL = sim.URL()
			if _, ok := o.Env("CACTUS_PUBLIC_HOMESERVER_URL"); !ok {
				cfg.PublicHomeserverURL = sim.URL()
			}
		}
		info.Simulator = sim
		if err := writeEnv(o.DataDir, cfg, reg); err != nil {
			return err
		}
		if info.Demo, err = demoUsers(sim, cfg, o.DataDir); err != nil {
			return err
		}
		if info.StaleSites, err = forgetStale(ctx, cfg, o.Log); err != nil {
			if ctx.Err() != nil {
				return nil // stopped while starting: not a failure
			}
			return err
		}
	}
	info.HomeserverURL = cfg.HomeserverURL
	if sim == nil {
		// A real homeserver refuses the bot until it has loaded the
		// registration, and the services would stop at that refusal: show
		// the registration first and wait until the homeserver knows it.
		printRegistration(o.Out, info)
		if err := waitForRegistration(ctx, cfg, o); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
	}

	return runServices(ctx, o, cfg, info)
}

// waitForRegistration polls whoami with the as_token until the homeserver
// accepts it: only the homeserver's answer tells that it has loaded the
// registration.
func waitForRegistration(ctx context.Context, cfg *config.Config, o Options) error {
	hs, err := matrix.NewClient(matrix.Config{HomeserverURL: cfg.HomeserverURL, Token: cfg.ASToken.Reveal(), MaxAttempts: 1, RequestTimeout: 10 * time.Second})
	if err != nil {
		return err
	}
	told := false
	t := time.NewTicker(o.RegistrationPoll)
	defer t.Stop()
	for {
		who, err := hs.Whoami(ctx)
		switch {
		case err == nil && who.String() == cfg.UserID:
			if told {
				fmt.Fprintln(o.Out, "The homeserver accepted the registration; starting the services.")
			}
			return nil
		case err == nil:
			return fmt.Errorf("the homeserver says the as_token belongs to %s, not %s: the registration it loaded is another one", who, cfg.UserID)
		case matrix.Status(err) == http.StatusUnauthorized || matrix.Status(err) == http.StatusForbidden:
			if !told {
				fmt.Fprintf(o.Out, "Waiting for %s to accept the registration (%s); Ctrl-C to stop.\n", cfg.HomeserverURL, matrix.ErrCode(err))
				told = true
			}
		default:
			if !told {
				fmt.Fprintf(o.Out, "Waiting for %s: %v\n", cfg.HomeserverURL, err)
				told = true
			}
			o.Log.Debug("homeserver not reachable yet", "err", err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

// prepare builds the services' configuration and the registration, reusing
// the tokens persisted in the data directory.
func prepare(o *Options) (*config.Config, *registration.Registration, error) {
	base, err := envconf.Fill(o.Env)
	if err != nil {
		return nil, nil, err
	}
	server := o.ServerName
	if uid, ok := o.Env("CACTUS_USER_ID"); ok && uid != "" {
		_, s, found := strings.Cut(uid, ":")
		if !found {
			return nil, nil, fmt.Errorf("CACTUS_USER_ID %q: want @localpart:server", uid)
		}
		if server != "" && server != s {
			return nil, nil, fmt.Errorf("the server name %q (CACTUS_DEV_SERVER_NAME or -server-name) differs from the server of CACTUS_USER_ID %q", server, uid)
		}
		server = s
	}
	if server == "" {
		if o.HomeserverURL != "" {
			return nil, nil, errors.New("with a real homeserver, give its server name: CACTUS_DEV_SERVER_NAME=example.org make run (or CACTUS_USER_ID, or -server-name)")
		}
		server = "localhost"
	}
	bot := appreg.DefaultBotLocalpart
	if base.UserID != "" {
		bot = strings.TrimPrefix(strings.SplitN(base.UserID, ":", 2)[0], "@")
	}
	gwURL := o.GatewayURL
	if gwURL == "" {
		host, port, _ := net.SplitHostPort(o.GatewayAddr)
		if host == "" || host == "0.0.0.0" || host == "::" {
			host = "localhost"
		}
		gwURL = "http://" + net.JoinHostPort(host, port)
	}
	p := appreg.Params{ServerName: server, GatewayURL: gwURL, HomeserverURL: o.HomeserverURL, BotLocalpart: bot, Prefix: base.NamespacePrefix}
	if id, ok := o.Env("CACTUS_APPSERVICE_ID"); ok && id != "" {
		p.ID = id
	}
	regPath := filepath.Join(o.DataDir, RegistrationFile)
	if old, err := registration.Load(regPath); err == nil {
		p.ASToken, p.HSToken = old.ASToken, old.HSToken
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, nil, fmt.Errorf("%w (delete it to start with fresh tokens)", err)
	}
	// Tokens given in the environment win: a real homeserver may already
	// have a registration with them.
	if v, ok := o.Env("CACTUS_AS_TOKEN"); ok && v != "" {
		p.ASToken = v
	}
	if v, ok := o.Env("CACTUS_HS_TOKEN"); ok && v != "" {
		p.HSToken = v
	}
	g, err := generateKeepingTokens(p)
	if err != nil {
		return nil, nil, err
	}
	reg := g.Registration
	y, err := g.YAML()
	if err != nil {
		return nil, nil, err
	}
	if err := os.WriteFile(regPath, y, 0o600); err != nil {
		return nil, nil, fmt.Errorf("write registration: %w", err)
	}

	cfg := *base
	cfg.ASToken, cfg.HSToken = config.Secret(reg.ASToken), config.Secret(reg.HSToken)
	cfg.HomeserverURL = o.HomeserverURL
	if cfg.HomeserverURL == "" {
		cfg.HomeserverURL = "http://" + o.SimAddr
	}
	cfg.UserID = "@" + reg.SenderLocalpart + ":" + server
	cfg.AppserviceID = reg.ID
	if _, ok := o.Env("CACTUS_NAMESPACE_REGEX"); !ok {
		cfg.NamespaceRegex = appreg.AliasRegex(cfg.NamespacePrefix, server)
	}
	cfg.ListenAddr = o.GatewayAddr
	if err := cfg.Validate(); err != nil {
		return nil, nil, err
	}
	return &cfg, reg, nil
}

// generateKeepingTokens generates the registration; tokens from the
// environment need not be hex, so they bypass appreg's check.
func generateKeepingTokens(p appreg.Params) (*appreg.Generated, error) {
	as, hs := p.ASToken, p.HSToken
	if !isHex64(as) {
		p.ASToken = ""
	}
	if !isHex64(hs) {
		p.HSToken = ""
	}
	g, err := appreg.Generate(p)
	if err != nil {
		return nil, err
	}
	if as != "" {
		g.Registration.ASToken, g.Params.ASToken = as, as
	}
	if hs != "" {
		g.Registration.HSToken, g.Params.HSToken = hs, hs
	}
	if err := g.Registration.Validate(); err != nil {
		return nil, err
	}
	return g, nil
}

func isHex64(s string) bool {
	if len(s) != 64 {
		return false
	}
	for _, c := range s {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// writeEnv writes the env file cactusctl reads (-env .cactus-dev/cactus.env).
func writeEnv(dir string, cfg *config.Config, reg *registration.Registration) error {
	lines := []string{
		"# The dev runner's configuration, for cactusctl: cactusctl doctor -env " + filepath.Join(dir, EnvFile),
		"# Rewritten at every start. It holds the appservice tokens.",
		"CACTUS_HOMESERVER_URL=" + cfg.HomeserverURL,
		"CACTUS_USER_ID=" + cfg.UserID,
		"CACTUS_APPSERVICE_ID=" + reg.ID,
		"CACTUS_NAMESPACE_PREFIX=" + cfg.NamespacePrefix,
		"CACTUS_NAMESPACE_REGEX=" + cfg.NamespaceRegex,
		"CACTUS_NATS_URL=" + cfg.NATSURL,
		"CACTUS_AS_TOKEN=" + cfg.ASToken.Reveal(),
		"CACTUS_HS_TOKEN=" + cfg.HSToken.Reveal(),
	}
	if cfg.NATSUser != "" {
		lines = append(lines, "CACTUS_NATS_USER="+cfg.NATSUser, "CACTUS_NATS_PASSWORD="+cfg.NATSPassword.Reveal())
	}
	if err := os.WriteFile(filepath.Join(dir, EnvFile), []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		return fmt.Errorf("write env file: %w", err)
	}
	return nil
}

// resolvePort replaces port 0 by a port that is free now. The service
// binds it a moment later, so the port comes from below the kernel's
// ephemeral range (32768 and up on Linux): a port the kernel hands out
// for :0 may meanwhile become the local port of any outgoing connection
// on the machine, and the service's bind would fail.
func resolvePort(addr string) (string, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", err
	}
	if port != "0" {
		return addr, nil
	}
	p, err := embednats.StablePort(host)
	if err != nil {
		return "", err
	}
	return net.JoinHostPort(host, strconv.Itoa(p)), nil
}

func checkFree(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	return ln.Close()
}

// natsPasswords makes a password for every NATS identity.
func natsPasswords() (map[bus.Identity]string, error) {
	out := map[bus.Identity]string{}
	for _, id := range bus.Identities() {
		var b [24]byte
		if _, err := rand.Read(b[:]); err != nil {
			return nil, err
		}
		out[id] = hex.EncodeToString(b[:])
	}
	return out, nil
}

// ensureTopology creates the streams, consumers and buckets as the
// operator would with `cactusctl topology ensure`.
func ensureTopology(ctx context.Context, cfg *config.Config, log *slog.Logger) error {
	cctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	nc, err := bus.Connect(cctx, service.ConnOptions(cfg, string(bus.Operator)), log)
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	return service.Topology(cfg).Ensure(cctx, js)
}

func startNATS(o Options, passwords map[bus.Identity]string) (*embednats.Server, error) {
	if o.NATSPort != 0 {
		if err := checkFree(net.JoinHostPort("127.0.0.1", strconv.Itoa(o.NATSPort))); err != nil {
			return nil, fmt.Errorf("NATS port %d is taken (another NATS or cactus-dev running?): choose another, e.g. CACTUS_DEV_NATS_PORT=4223 make run (or -nats-port)", o.NATSPort)
		}
	}
	var conf strings.Builder
	if passwords != nil {
		for _, id := range bus.Identities() {
			fmt.Fprintf(&conf, "%s: %q\n", natsconf.PasswordVar(id), passwords[id])
		}
		conf.WriteString(natsconf.ServerConfig(bus.Topology{}))
	}
	ns, err := embednats.Start(embednats.Options{Dir: filepath.Join(o.DataDir, natsDir), Port: o.NATSPort, Config: conf.String()})
	if err != nil {
		return nil, fmt.Errorf("embedded NATS (data in %s): %w", filepath.Join(o.DataDir, natsDir), err)
	}
	o.Log.Info("embedded nats listening", "url", ns.ClientURL(), "store", filepath.Join(o.DataDir, natsDir))
	return ns, nil
}

// Demo users of the simulator.
const (
	ownerLocalpart   = "demo"
	visitorLocalpart = "visitor"
)

func demoUsers(sim *hssim.Server, cfg *config.Config, dir string) (*demo.Info, error) {
	info := &demo.Info{HomeserverURL: sim.URL(), ServerName: cfg.ServerName(), Bot: cfg.UserID, Prefix: cfg.NamespacePrefix}
	for _, u := range []struct {
		lp string
		to *demo.User
	}{{ownerLocalpart, &info.Owner}, {visitorLocalpart, &info.Visitor}} {
		pw := u.lp + "-password"
		id, tok, err := sim.RegisterUser(u.lp, pw)
		if err != nil {
			return nil, fmt.Errorf("simulator: register %s: %w", u.lp, err)
		}
		*u.to = demo.User{UserID: id, Password: pw, AccessToken: tok}
	}
	if err := demo.WriteInfo(dir, info); err != nil {
		return nil, err
	}
	return info, nil
}

// forgetStale reconciles the registry with a fresh simulator. The
// simulator keeps nothing across restarts, while NATS does: sites of the
// previous run would still be listed, and their names refused, although
// their rooms are gone. A registry rebuild with prune is exactly the
// operator's remedy for a registry that disagrees with the homeserver, so
// the dev runner runs it; the bot's per-user bookkeeping about those sites
// is dropped with them.
func forgetStale(ctx context.Context, cfg *config.Config, log *slog.Logger) ([]string, error) {
	rt, err := service.Start(ctx, "cactus-dev", cfg, log)
	if err != nil {
		return nil, err
	}
	defer rt.Close()
	reg, err := registry.Open(ctx, rt.JS)
	if err != nil {
		return nil, err
	}
	res, err := rebuild.Run(ctx, cfg, reg, true, log)
	if err != nil {
		return nil, fmt.Errorf("reconcile the registry with the fresh simulator: %w", err)
	}
	if len(res.Pruned) > 0 {
		kv, err := rt.JS.KeyValue(ctx, bus.BucketLimit)
		if err != nil {
			return nil, err
		}
		if err := purgeAll(ctx, kv); err != nil {
			return nil, fmt.Errorf("reset the bot's bookkeeping: %w", err)
		}
	}
	return res.Pruned, nil
}

func purgeAll(ctx context.Context, kv jetstream.KeyValue) error {
	lister, err := kv.ListKeys(ctx)
	if err != nil {
		return err
	}
	defer func() { _ = lister.Stop() }()
	for k := range lister.Keys() {
		if err := kv.Purge(ctx, k); err != nil {
			return err
		}
	}
	return nil
}

// runServices starts the three services, waits for them to be ready,
// prints the banner, and waits for ctx's end or a service's failure.
func runServices(ctx context.Context, o Options, cfg *config.Config, info Info) error {
	runs := [3]func(context.Context, *config.Config) error{gateway.Run, provisioner.Run, botworker.Run}
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type result struct {
		name string
		err  error
	}
	done := make(chan result, len(runs))
	var wg sync.WaitGroup
	for i, fn := range runs {
		c := *cfg
		c.AdminAddr = o.AdminAddrs[i]
		name := serviceNames[i]
		if info.NATSPasswords != nil {
			c.NATSUser, c.NATSPassword = name, config.Secret(info.NATSPasswords[bus.Identity(name)])
			c.NATSTopology = "check"
		}
		wg.Go(func() {
			err := fn(sctx, &c)
			if err == nil && sctx.Err() == nil {
				err = errors.New("stopped on its own")
			}
			done <- result{name, err}
		})
	}
	// A service that fails stops the others: the system is all or nothing.
	var first error
	var once sync.Once
	fail := func(r result) {
		once.Do(func() { first = fmt.Errorf("%s: %w", r.name, r.err) })
		cancel()
	}
	collected := make(chan struct{})
	go func() {
		defer close(collected)
		for range runs {
			if r := <-done; r.err != nil {
				fail(r)
			}
		}
	}()

	readyErr := make(chan error, 1)
	go func() { readyErr <- waitReady(sctx, info.Admin, o.ReadyTimeout) }()
	select {
	case err := <-readyErr:
		if err != nil {
			if sctx.Err() == nil {
				o.Log.Error("services not ready", "err", err)
				fail(result{"startup", err})
			}
		} else {
			banner(o.Out, cfg, info)
			if o.Ready != nil {
				o.Ready(info)
			}
		}
	case <-collected:
	}
	<-sctx.Done()
	wg.Wait()
	<-collected
	if first != nil && ctx.Err() == nil {
		return first
	}
	if first != nil {
		o.Log.Warn("service error during shutdown", "err", first)
	}
	return nil
}

// waitReady polls every admin /readyz until all answer 200. Readiness is
// only visible over HTTP, so polling is the signal.
func waitReady(ctx context.Context, admin map[string]string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	hc := &http.Client{Timeout: 2 * time.Second}
	pending := map[string]string{}
	for k, v := range admin {
		pending[k] = v
	}
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		for name, base := range pending {
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/readyz", nil)
			resp, err := hc.Do(req)
			if err != nil {
				continue
			}
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				delete(pending, name)
			}
		}
		if len(pending) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			names := make([]string, 0, len(pending))
			for n := range pending {
				names = append(names, n)
			}
			return fmt.Errorf("not ready after %s: %s", timeout, strings.Join(names, ", "))
		case <-t.C:
		}
	}
}
