package devrun

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/cactus-comments/appservice/cmd/internal/appreg"
	"github.com/cactus-comments/appservice/cmd/internal/demo"
	"github.com/cactus-comments/appservice/cmd/internal/envconf"
	"github.com/cactus-comments/appservice/pkg/bus"
	"github.com/cactus-comments/appservice/pkg/embednats"
	"github.com/cactus-comments/appservice/pkg/hssim"
	"github.com/cactus-comments/appservice/pkg/registration"
	"github.com/cactus-comments/appservice/pkg/registry"
)

// syncBuffer is a bytes.Buffer safe for the runner and the test at once.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type running struct {
	info Info
	out  *syncBuffer
	stop func() error
}

// start runs the dev system on free ports with its data in dir.
func start(t *testing.T, dir string, mutate ...func(*Options)) *running {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	out := &syncBuffer{}
	ready := make(chan Info, 1)
	errc := make(chan error, 1)
	free := "127.0.0.1:0"
	o := Options{
		DataDir: dir, GatewayAddr: free, AdminAddrs: [3]string{free, free, free}, SimAddr: free,
		Env: envconf.Map(map[string]string{"CACTUS_LOG_LEVEL": "warn", "CACTUS_SHUTDOWN_TIMEOUT": "10s"}),
		Out: out, Ready: func(i Info) { ready <- i }, ReadyTimeout: time.Minute,
	}
	for _, m := range mutate {
		m(&o)
	}
	go func() { errc <- Run(ctx, o) }()
	var once sync.Once
	var stopErr error
	r := &running{out: out, stop: func() error {
		once.Do(func() { cancel(); stopErr = <-errc })
		return stopErr
	}}
	select {
	case r.info = <-ready:
	case err := <-errc:
		cancel()
		t.Fatalf("dev runner stopped before it was ready: %v", err)
	}
	t.Cleanup(func() { _ = r.stop() })
	return r
}

func natsJS(t *testing.T, url string) jetstream.JetStream {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

// TestDevFlow drives the printed try-it flow through the simulator: the
// owner registers a site with the bot, a visitor opens a comment section,
// the owner bans the visitor and the ban reaches the comment room. Then a
// clean stop, and a second start on the same data. With the simulator's
// default room version (10), and with 12 (CACTUS_DEV_ROOM_VERSION=12).
func TestDevFlow(t *testing.T) {
	if testing.Short() {
		t.Skip("starts the whole system")
	}
	for _, version := range []string{"", "12"} {
		t.Run("room version "+cmp.Or(version, "default"), func(t *testing.T) { devFlow(t, version) })
	}
}

func devFlow(t *testing.T, version string) {
	dir := t.TempDir()
	ctx := context.Background()
	withVersion := func(o *Options) { o.SimRoomVersion = version }
	r := start(t, dir, withVersion)
	if want := cmp.Or(version, "10"); r.info.Simulator.RoomVersion() != want {
		t.Fatalf("simulator makes version %s rooms, want %s", r.info.Simulator.RoomVersion(), want)
	}
	sim := r.info.Simulator
	if sim == nil || r.info.Demo == nil {
		t.Fatal("no simulator or demo users")
	}
	banner := r.out.String()
	for _, want := range []string{"demo --data " + dir + " register myblog", "comment myblog hello", "ban myblog @visitor:localhost", r.info.Admin["provisioner"], "doctor --env"} {
		if !strings.Contains(banner, want) {
			t.Fatalf("banner lacks %q:\n%s", want, banner)
		}
	}
	reg1, err := registration.Load(filepath.Join(dir, RegistrationFile))
	if err != nil {
		t.Fatal(err)
	}

	var said strings.Builder
	d, err := demo.New(dir, &said)
	if err != nil {
		t.Fatal(err)
	}
	res, err := d.Register(ctx, "myblog")
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Replies) == 0 || !strings.Contains(res.Replies[0], "myblog") {
		t.Fatalf("bot replies %q", res.Replies)
	}
	owner, visitor := r.info.Demo.Owner.UserID, r.info.Demo.Visitor.UserID
	if got := sim.Membership(res.ModerationRoom.String(), owner); got != "join" {
		t.Fatalf("owner membership in the moderation room: %q", got)
	}
	if got := sim.PowerLevel(res.ModerationRoom.String(), owner); got != 100 {
		t.Fatalf("owner power level %d", got)
	}
	if got, want := sim.RoomVersionOf(res.ModerationRoom.String()), cmp.Or(version, "10"); got != want {
		t.Fatalf("moderation room of version %s, want %s", got, want)
	}
	room, err := d.Comment(ctx, "myblog", "hello", "First!")
	if err != nil {
		t.Fatal(err)
	}
	if got := sim.Membership(room.String(), visitor); got != "join" {
		t.Fatalf("visitor membership in the comment room: %q", got)
	}
	if id, ok := sim.ResolveAliasLocal("#comments_myblog_hello:localhost"); !ok || id != room.String() {
		t.Fatalf("alias resolves to %q %v", id, ok)
	}
	// A second visit says the room was there already.
	said.Reset()
	if again, err := d.Comment(ctx, "myblog", "hello", ""); err != nil || again != room {
		t.Fatalf("second visit: %v, %v", again, err)
	}
	if out := said.String(); !strings.Contains(out, "opened before") || strings.Contains(out, "created the room") {
		t.Fatalf("second visit said %q", out)
	}
	banned, err := d.Ban(ctx, "myblog", visitor, "spam")
	if err != nil {
		t.Fatal(err)
	}
	if len(banned) != 1 || sim.Membership(room.String(), visitor) != "ban" || sim.Membership(res.ModerationRoom.String(), visitor) != "ban" {
		t.Fatalf("ban not carried: %v, comment room %q", banned, sim.Membership(room.String(), visitor))
	}
	rg, err := registry.Open(ctx, natsJS(t, r.info.NATSURL))
	if err != nil {
		t.Fatal(err)
	}
	site, err := rg.Site(ctx, "myblog")
	if err != nil {
		t.Fatal(err)
	}
	if site.Owner != owner || !site.Banned(visitor) {
		t.Fatalf("registry site %+v", site)
	}

	if err := r.stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}
	// Everything is down: the ports are free again.
	for _, a := range []string{strings.TrimPrefix(r.info.GatewayURL, "http://"), strings.TrimPrefix(r.info.HomeserverURL, "http://"), strings.TrimPrefix(r.info.NATSURL, "nats://")} {
		ln, err := net.Listen("tcp", a)
		if err != nil {
			t.Fatalf("%s still taken after stop: %v", a, err)
		}
		ln.Close()
	}

	// Second start on the same data: same tokens, the stale site is
	// dropped (the simulator forgot its rooms), and it can be registered
	// again.
	r2 := start(t, dir, withVersion)
	reg2, err := registration.Load(filepath.Join(dir, RegistrationFile))
	if err != nil {
		t.Fatal(err)
	}
	if reg2.ASToken != reg1.ASToken || reg2.HSToken != reg1.HSToken {
		t.Fatal("tokens changed across restarts")
	}
	if len(r2.info.StaleSites) != 1 || r2.info.StaleSites[0] != "myblog" || !strings.Contains(r2.out.String(), "dropped 1 site") {
		t.Fatalf("stale sites %v; banner:\n%s", r2.info.StaleSites, r2.out.String())
	}
	d2, err := demo.New(dir, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d2.Register(ctx, "myblog"); err != nil {
		t.Fatalf("register again after restart: %v", err)
	}
	if err := r2.stop(); err != nil {
		t.Fatalf("second stop: %v", err)
	}
}

// The simulator makes rooms of the version asked for, and the banner says
// which.
func TestSimRoomVersion(t *testing.T) {
	if testing.Short() {
		t.Skip("starts the whole system")
	}
	r := start(t, t.TempDir(), func(o *Options) { o.SimRoomVersion = "12" })
	if got := r.info.Simulator.RoomVersion(); got != "12" {
		t.Fatalf("simulator room version %q", got)
	}
	if !strings.Contains(r.out.String(), "simulator of synapse, room version 12") {
		t.Fatalf("banner:\n%s", r.out.String())
	}
	free := "127.0.0.1:0"
	err := Run(context.Background(), Options{DataDir: t.TempDir(), SimRoomVersion: "9", GatewayAddr: free, AdminAddrs: [3]string{free, free, free}, SimAddr: free})
	if err == nil || !strings.Contains(err.Error(), "want 10, 11 or 12") {
		t.Fatalf("err = %v", err)
	}
}

func TestPortTaken(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	free := "127.0.0.1:0"
	err = Run(context.Background(), Options{DataDir: t.TempDir(), NATSPort: port, GatewayAddr: free, AdminAddrs: [3]string{free, free, free}, SimAddr: free})
	// The remedy names what `make run` can take: an environment variable.
	if err == nil || !strings.Contains(err.Error(), "NATS port") || !strings.Contains(err.Error(), "CACTUS_DEV_NATS_PORT=") {
		t.Fatalf("err = %v", err)
	}
	err = Run(context.Background(), Options{DataDir: t.TempDir(), GatewayAddr: ln.Addr().String(), AdminAddrs: [3]string{free, free, free}, SimAddr: free})
	if err == nil || !strings.Contains(err.Error(), "gateway address") || !strings.Contains(err.Error(), "taken") || !strings.Contains(err.Error(), "CACTUS_DEV_LISTEN=") {
		t.Fatalf("err = %v", err)
	}
}

func TestRealHomeserverNeedsServerName(t *testing.T) {
	free := "127.0.0.1:0"
	err := Run(context.Background(), Options{DataDir: t.TempDir(), HomeserverURL: "http://127.0.0.1:1", GatewayAddr: free, AdminAddrs: [3]string{free, free, free}})
	if err == nil || !strings.Contains(err.Error(), "server name") {
		t.Fatalf("err = %v", err)
	}
}

func TestCorruptRegistrationIsReported(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, RegistrationFile), []byte("id: [\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	free := "127.0.0.1:0"
	err := Run(context.Background(), Options{DataDir: dir, GatewayAddr: free, AdminAddrs: [3]string{free, free, free}, SimAddr: free})
	if err == nil || !strings.Contains(err.Error(), "delete it") {
		t.Fatalf("err = %v", err)
	}
}

// TestRealHomeserver runs against a homeserver the runner did not start
// (a simulator standing in for Synapse, loaded with the registration built
// from the tokens in the environment) and prints that registration.
func TestRealHomeserver(t *testing.T) {
	if testing.Short() {
		t.Skip("starts the whole system")
	}
	free := "127.0.0.1:0"
	gw, err := resolvePort(free)
	if err != nil {
		t.Fatal(err)
	}
	as, _ := appreg.NewToken()
	hs, _ := appreg.NewToken()
	g, err := appreg.Generate(appreg.Params{ServerName: "example.test", GatewayURL: "http://" + gw, ASToken: as, HSToken: hs})
	if err != nil {
		t.Fatal(err)
	}
	sim, err := hssim.Start(context.Background(), hssim.Options{ServerName: "example.test", Registrations: []*registration.Registration{g.Registration}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sim.Close() })
	// The homeserver has not loaded the registration yet for the first
	// few questions: the runner waits instead of failing.
	sim.InjectFault(hssim.Fault{Endpoint: hssim.EPWhoami, Times: 3, Status: 401, ErrCode: "M_UNKNOWN_TOKEN"})

	ctx, cancel := context.WithCancel(context.Background())
	out := &syncBuffer{}
	ready := make(chan Info, 1)
	errc := make(chan error, 1)
	go func() {
		errc <- Run(ctx, Options{
			DataDir: t.TempDir(), HomeserverURL: sim.URL(), ServerName: "example.test", GatewayAddr: gw, AdminAddrs: [3]string{free, free, free},
			Env: envconf.Map(map[string]string{"CACTUS_AS_TOKEN": as, "CACTUS_HS_TOKEN": hs, "CACTUS_LOG_LEVEL": "error"}),
			Out: out, Ready: func(i Info) { ready <- i }, RegistrationPoll: 10 * time.Millisecond,
		})
	}()
	var info Info
	select {
	case info = <-ready:
	case err := <-errc:
		cancel()
		t.Fatal(err)
	}
	if info.Simulator != nil || info.Demo != nil {
		t.Fatal("started a simulator although a homeserver was given")
	}
	banner := out.String()
	last := -1
	for _, want := range []string{"Give the homeserver this registration", `| url: http://` + gw, "| as_token: " + as,
		"Waiting for " + sim.URL(), "accepted the registration", "Cactus Comments is running", "doctor --env"} {
		i := strings.Index(banner, want)
		if i < 0 || i < last {
			t.Fatalf("banner lacks %q or has it out of order:\n%s", want, banner)
		}
		last = i
	}
	if !sim.UserExists("@cactusbot:example.test") {
		t.Fatal("the botworker did not register the bot on the homeserver")
	}
	cancel()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

// TestStopWhileStarting: a Ctrl-C before the system is ready is a clean
// stop too.
func TestStopWhileStarting(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	free := "127.0.0.1:0"
	err := Run(ctx, Options{DataDir: t.TempDir(), GatewayAddr: free, AdminAddrs: [3]string{free, free, free}, SimAddr: free,
		Env: envconf.Map(map[string]string{"CACTUS_LOG_LEVEL": "error"})})
	if err != nil {
		t.Fatalf("Run with a cancelled context: %v", err)
	}
}

// TestLeastPrivilegeFlow runs the whole flow (a site registered through the
// bot, the first visit of a comment section, a ban propagated) with every
// service connected to NATS as its own user, with exactly the permissions
// `cactusctl nats-config` gives production, and shows that the gateway's
// identity can neither read events nor delete a stream.
func TestLeastPrivilegeFlow(t *testing.T) {
	if testing.Short() {
		t.Skip("starts the whole system")
	}
	dir := t.TempDir()
	ctx := context.Background()
	r := start(t, dir, func(o *Options) { o.NATSAuth = true })
	if _, err := nats.Connect(r.info.NATSURL); err == nil {
		t.Fatal("NATS accepts clients without credentials")
	}
	d, err := demo.New(dir, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	res, err := d.Register(ctx, "secure")
	if err != nil {
		t.Fatal(err)
	}
	room, err := d.Comment(ctx, "secure", "page", "hello")
	if err != nil {
		t.Fatal(err)
	}
	visitor := r.info.Demo.Visitor.UserID
	if _, err := d.Ban(ctx, "secure", visitor, "spam"); err != nil {
		t.Fatal(err)
	}
	sim := r.info.Simulator
	if sim.Membership(room.String(), visitor) != "ban" || sim.Membership(res.ModerationRoom.String(), visitor) != "ban" {
		t.Fatalf("ban not carried: comment room %q", sim.Membership(room.String(), visitor))
	}

	violations := make(chan error, 16)
	gw, err := nats.Connect(r.info.NATSURL, nats.UserInfo("gateway", r.info.NATSPasswords[bus.Gateway]),
		nats.CustomInboxPrefix(bus.Gateway.InboxPrefix()),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { violations <- err }))
	if err != nil {
		t.Fatal(err)
	}
	defer gw.Close()
	denied := func(subject string) {
		t.Helper()
		timeout := time.After(30 * time.Second)
		for {
			select {
			case err := <-violations:
				if errors.Is(err, nats.ErrPermissionViolation) && strings.Contains(err.Error(), subject) {
					return
				}
			case <-timeout:
				t.Fatalf("the gateway's identity was not refused %s", subject)
			}
		}
	}
	if _, err := gw.SubscribeSync(bus.SubjectEventsAll); err != nil {
		t.Fatal(err)
	}
	denied(bus.SubjectEventsAll)
	js, err := jetstream.New(gw)
	if err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if err := js.DeleteStream(short, bus.StreamEvents); err == nil {
		t.Fatal("the gateway's identity deleted the event stream")
	}
	denied("$JS.API.STREAM.DELETE." + bus.StreamEvents)
}

func TestResolvePortAvoidsEphemeralRange(t *testing.T) {
	if got, err := resolvePort("127.0.0.1:8080"); err != nil || got != "127.0.0.1:8080" {
		t.Fatalf("a port given stays: %q, %v", got, err)
	}
	for range 20 {
		got, err := resolvePort("127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		_, port, _ := net.SplitHostPort(got)
		n, _ := strconv.Atoi(port)
		if n < embednats.StablePortLow || n >= embednats.StablePortHigh {
			t.Fatalf("resolvePort gave %s, outside [%d, %d)", got, embednats.StablePortLow, embednats.StablePortHigh)
		}
		ln, err := net.Listen("tcp", got)
		if err != nil {
			t.Fatalf("the port it gave cannot be bound: %v", err)
		}
		ln.Close()
	}
}
