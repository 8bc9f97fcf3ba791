package main

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/cactus-comments/appservice/cmd/internal/devrun"
	"github.com/cactus-comments/appservice/cmd/internal/envconf"
	"github.com/cactus-comments/appservice/pkg/bus"
	"github.com/cactus-comments/appservice/pkg/hssim"
	"github.com/cactus-comments/appservice/pkg/registry"
)

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// startDev runs the dev system (embedded NATS, simulator, gateway,
// provisioner, botworker) on free ports, its simulator making rooms of
// roomVersion ("": the default), and returns its info, its banner and the
// variables of its env file.
func startDev(t *testing.T, roomVersion string) (devrun.Info, string, map[string]string) {
	t.Helper()
	if testing.Short() {
		t.Skip("starts the whole system")
	}
	ctx, cancel := context.WithCancel(context.Background())
	out := &lockedBuffer{}
	ready := make(chan devrun.Info, 1)
	errc := make(chan error, 1)
	free := "127.0.0.1:0"
	go func() {
		errc <- devrun.Run(ctx, devrun.Options{
			DataDir: t.TempDir(), GatewayAddr: free, AdminAddrs: [3]string{free, free, free}, SimAddr: free, SimRoomVersion: roomVersion,
			Env: envconf.Map(map[string]string{"CACTUS_LOG_LEVEL": "error", "CACTUS_SHUTDOWN_TIMEOUT": "10s"}),
			Out: out, Ready: func(i devrun.Info) { ready <- i },
		})
	}()
	var info devrun.Info
	select {
	case info = <-ready:
	case err := <-errc:
		cancel()
		t.Fatalf("dev runner: %v", err)
	}
	t.Cleanup(func() {
		cancel()
		if err := <-errc; err != nil {
			t.Errorf("dev runner stop: %v", err)
		}
	})
	data, err := os.ReadFile(info.EnvPath)
	if err != nil {
		t.Fatal(err)
	}
	vars, err := envconf.ParseFile(data)
	if err != nil {
		t.Fatal(err)
	}
	return info, out.String(), vars
}

// printedCommands returns the cactusctl command lines of the banner,
// without the "go run ./cmd/cactusctl" prefix and trailing comments.
func printedCommands(t *testing.T, banner string) [][]string {
	t.Helper()
	var out [][]string
	for _, line := range strings.Split(banner, "\n") {
		rest, ok := strings.CutPrefix(strings.TrimSpace(line), "go run ./cmd/cactusctl ")
		if !ok {
			continue
		}
		if i := strings.Index(rest, " #"); i >= 0 {
			rest = rest[:i]
		}
		if strings.ContainsAny(rest, `'"\`) {
			t.Fatalf("printed command needs a shell to unquote, test cannot split it: %q", rest)
		}
		out = append(out, strings.Fields(rest))
	}
	return out
}

// TestDevBannerCommandsWorkAsPrinted runs every cactusctl command the dev
// runner prints, in order, and checks what they did: with the simulator's
// default room version and with 12 (CACTUS_DEV_ROOM_VERSION=12 make run).
func TestDevBannerCommandsWorkAsPrinted(t *testing.T) {
	for _, version := range []string{"", "12"} {
		t.Run("room version "+cmp.Or(version, "default"), func(t *testing.T) { bannerCommandsWork(t, version) })
	}
}

func bannerCommandsWork(t *testing.T, version string) {
	info, banner, _ := startDev(t, version)
	cmds := printedCommands(t, banner)
	if len(cmds) < 5 {
		t.Fatalf("expected the demo, sites and doctor commands, got %q in:\n%s", cmds, banner)
	}
	outs := map[string]string{}
	for _, args := range cmds {
		r := ctl(t, nil, args...)
		if r.code != exitOK {
			t.Fatalf("cactusctl %s: exit %d\n%s%s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
		}
		key := args[0]
		if args[0] == "demo" {
			key = args[3]
		}
		outs[key] = r.stdout
	}
	for key, want := range map[string]string{
		"register": "joined the moderation room #comments_myblog:localhost",
		"comment":  "joined #comments_myblog_hello:localhost",
		"ban":      "carried the ban to #comments_myblog_hello:localhost",
		"sites":    "myblog",
		"doctor":   "ok    ping",
	} {
		if !strings.Contains(outs[key], want) {
			t.Errorf("%s output lacks %q:\n%s", key, want, outs[key])
		}
	}
	if strings.Contains(outs["doctor"], "FAIL") {
		t.Errorf("doctor failed a check:\n%s", outs["doctor"])
	}
	room, ok := info.Simulator.ResolveAliasLocal("#comments_myblog_hello:localhost")
	if !ok || info.Simulator.Membership(room, info.Demo.Visitor.UserID) != "ban" {
		t.Fatal("the visitor is not banned in the comment room")
	}
}

// TestDoctorAndRebuildAgainstDev runs doctor's failure modes and a
// registry rebuild against a running system making version 12 rooms.
func TestDoctorAndRebuildAgainstDev(t *testing.T) {
	info, _, vars := startDev(t, "12")
	ctx := context.Background()
	// A site and a comment room, made through the real flow.
	for _, args := range [][]string{
		{"demo", "-data", info.DataDir, "register", "blog"},
		{"demo", "-data", info.DataDir, "comment", "blog", "post1", "hi"},
	} {
		if r := ctl(t, nil, args...); r.code != exitOK {
			t.Fatalf("%v: %d %s%s", args, r.code, r.stdout, r.stderr)
		}
	}

	with := func(k, v string) map[string]string {
		m := maps.Clone(vars)
		if v == "" {
			delete(m, k)
		} else {
			m[k] = v
		}
		return m
	}
	tests := []struct {
		name string
		vars map[string]string
		args []string
		code int
		want []string
	}{
		{"healthy", vars, nil, exitOK, []string{"ok    as_token", "ok    topology", "ok    lag botworker"}},
		{"registration file", vars, []string{"-registration", filepath.Join(info.DataDir, devrun.RegistrationFile)}, exitOK, []string{"ok    registration"}},
		{"wrong as_token", with("CACTUS_AS_TOKEN", strings.Repeat("0", 64)), nil, exitFailed, []string{"FAIL  as_token", "does not know CACTUS_AS_TOKEN", "ok    nats"}},
		{"wrong bot", with("CACTUS_USER_ID", "@other:localhost"), nil, exitFailed, []string{"FAIL  as_token", "not CACTUS_USER_ID"}},
		{"registration mismatch", with("CACTUS_HS_TOKEN", strings.Repeat("1", 64)), []string{"-registration", filepath.Join(info.DataDir, devrun.RegistrationFile)}, exitFailed, []string{"FAIL  registration", "hs_token differs"}},
		{"no ping id", with("CACTUS_APPSERVICE_ID", ""), nil, exitOK, []string{"skip  ping"}},
		{"unknown appservice", with("CACTUS_APPSERVICE_ID", "nope"), nil, exitFailed, []string{"FAIL  ping"}},
		{"homeserver down", with("CACTUS_HOMESERVER_URL", "http://127.0.0.1:1"), nil, exitFailed, []string{"FAIL  homeserver", "skip  as_token"}},
		{"nats down", with("CACTUS_NATS_URL", "nats://127.0.0.1:1"), []string{"-timeout", "500ms"}, exitFailed, []string{"FAIL  nats", "skip  topology"}},
		{"config invalid", with("CACTUS_USER_ID", "cactusbot"), nil, exitUsage, []string{"FAIL  config", "CACTUS_USER_ID", "ok    nats"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := ctl(t, tt.vars, append([]string{"doctor"}, tt.args...)...)
			if r.code != tt.code {
				t.Fatalf("exit %d, want %d:\n%s%s", r.code, tt.code, r.stdout, r.stderr)
			}
			for _, w := range tt.want {
				if !strings.Contains(r.stdout, w) {
					t.Fatalf("output lacks %q:\n%s", w, r.stdout)
				}
			}
			if strings.Contains(r.stdout+r.stderr, vars["CACTUS_AS_TOKEN"]) || strings.Contains(r.stdout+r.stderr, vars["CACTUS_HS_TOKEN"]) {
				t.Fatal("doctor printed a token")
			}
		})
	}

	nc, err := nats.Connect(info.NATSURL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}

	// Rebuild: wipe the registry, rebuild it from the simulator. The
	// system must be quiet first: a provisioner still handling an event of
	// the site would heal the wiped registry from the homeserver.
	settle(t, info.Simulator, js)
	reg, err := registry.Open(ctx, js)
	if err != nil {
		t.Fatal(err)
	}
	if err := reg.Wipe(ctx); err != nil {
		t.Fatal(err)
	}
	if r := ctl(t, vars, "sites", "list"); !strings.Contains(r.stdout, "no sites") {
		t.Fatalf("after wipe: %s", r.stdout)
	}
	r := ctl(t, vars, "registry", "rebuild")
	if r.code != exitOK || !strings.Contains(r.stdout, "sites written: 1 (blog)") || !strings.Contains(r.stdout, "comment rooms written: 1") {
		t.Fatalf("rebuild: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	r = ctl(t, vars, "sites", "list", "-json")
	var rows []struct {
		Name         string `json:"name"`
		Owner        string `json:"owner"`
		CommentRooms int    `json:"comment_rooms"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &rows); err != nil {
		t.Fatalf("%v: %s", err, r.stdout)
	}
	if len(rows) != 1 || rows[0].Name != "blog" || rows[0].Owner != info.Demo.Owner.UserID || rows[0].CommentRooms != 1 {
		t.Fatalf("rebuilt sites %+v", rows)
	}

	// A site only the registry knows is kept, or pruned with -prune.
	if err := reg.CreateSite(ctx, &registry.Site{Name: "ghost", Owner: "@x:localhost"}); err != nil {
		t.Fatal(err)
	}
	if r = ctl(t, vars, "registry", "rebuild"); r.code != exitOK || !strings.Contains(r.stdout, "kept sites not found on the homeserver: (ghost)") {
		t.Fatalf("rebuild without prune: %d %s%s", r.code, r.stdout, r.stderr)
	}
	if r = ctl(t, vars, "registry", "rebuild", "-prune"); r.code != exitOK || !strings.Contains(r.stdout, "pruned sites the homeserver no longer has: (ghost)") {
		t.Fatalf("rebuild -prune: %d %s%s", r.code, r.stdout, r.stderr)
	}
	if _, err := reg.Site(ctx, "ghost"); err == nil {
		t.Fatal("ghost survived -prune")
	}

	// A room that cannot be read: the rebuild says so, exits 1, and
	// -prune deletes nothing, since the unread room might be the site's.
	if err := reg.CreateSite(ctx, &registry.Site{Name: "ghost2", Owner: "@x:localhost"}); err != nil {
		t.Fatal(err)
	}
	info.Simulator.InjectFault(hssim.Fault{Endpoint: hssim.EPStateGet, Status: 403, ErrCode: "M_FORBIDDEN"})
	r = ctl(t, vars, "registry", "rebuild", "-prune")
	info.Simulator.ClearFaults()
	if r.code != exitFailed || !strings.Contains(r.stdout, "rooms that could not be read") || !strings.Contains(r.stdout, "nothing was pruned") {
		t.Fatalf("rebuild -prune with an unreadable room: %d %s%s", r.code, r.stdout, r.stderr)
	}
	if _, err := reg.Site(ctx, "ghost2"); err != nil {
		t.Fatalf("ghost2 pruned although a room was unreadable: %v", err)
	}
}

// settle waits until the simulator has pushed everything and every durable
// consumer has nothing pending or in flight, twice in a row (handling one
// message may make the homeserver push another). Consumer state is only
// visible by asking, so that part polls.
func settle(t *testing.T, sim *hssim.Server, js jetstream.JetStream) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	busy := func() bool {
		for _, cs := range (bus.Topology{}).Consumers() {
			cons, err := js.Consumer(ctx, cs.Stream, cs.Config.Durable)
			if err != nil {
				t.Fatal(err)
			}
			ci, err := cons.Info(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if ci.NumPending > 0 || ci.NumAckPending > 0 {
				return true
			}
		}
		return false
	}
	for quiet := 0; quiet < 2; {
		if err := sim.WaitIdle(ctx); err != nil {
			t.Fatal(err)
		}
		if busy() {
			quiet = 0
			select {
			case <-ctx.Done():
				t.Fatal("consumers did not settle")
			case <-time.After(20 * time.Millisecond):
			}
			continue
		}
		quiet++
	}
}
