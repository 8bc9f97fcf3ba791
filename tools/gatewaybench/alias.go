package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/cactus-comments/appservice/pkg/hssim"
	"github.com/cactus-comments/appservice/pkg/matrix"
	"github.com/cactus-comments/appservice/pkg/mxid"
	"github.com/cactus-comments/appservice/pkg/namespace"
	"github.com/cactus-comments/appservice/pkg/registration"
	"github.com/cactus-comments/appservice/pkg/registry"
)

const serverName = "example.org"

// aliasSummary is the alias benchmark's result.
type aliasSummary struct {
	Queries int
	// Query: the whole alias query as the homeserver saw it; Create: the
	// createRoom call inside it, as the homeserver served it; Over: the
	// difference, query by query. Milliseconds.
	QueryP50, QueryP99, CreateP50, CreateP99, OverP50, OverP99 float64
	// Before and After split the overhead: from the query's start to
	// createRoom's, and from createRoom's answer to the query's. ms.
	BeforeP50, BeforeP99, AfterP50, AfterP99 float64
	// CPU per query by process (µs) and RSS at the end (MiB).
	CPU, RSS map[string]float64
	// Timeline is one query of median overhead as seen on the NATS server:
	// each message with its offset from the query's start.
	Timeline []step
	// KV is the registry part alone, four sequential round trips against the
	// provisioner's two, and a bare request (kvPaths): p50 and p99 in ms.
	KV map[string][2]float64
}

type step struct {
	At      time.Duration
	Subject string
	What    string
}

// createTimer serves the simulator and records how long each createRoom
// took inside it, which is the homeserver's share of an alias query.
type createTimer struct {
	h     http.Handler
	mu    sync.Mutex
	times []time.Duration
	marks []time.Time // when each createRoom started and ended
}

func (c *createTimer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !strings.HasSuffix(r.URL.Path, "/createRoom") {
		c.h.ServeHTTP(w, r)
		return
	}
	t0 := time.Now()
	c.h.ServeHTTP(w, r)
	t1 := time.Now()
	c.mu.Lock()
	c.times = append(c.times, t1.Sub(t0))
	c.marks = append(c.marks, t0, t1)
	c.mu.Unlock()
}

func (c *createTimer) take() ([]time.Duration, []time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	t, m := c.times, c.marks
	c.times, c.marks = nil, nil
	return t, m
}

// aliasBench measures first-visit alias queries: the homeserver (the
// simulator, in this process) asks the gateway, which asks a provisioner
// over NATS, which creates the room on the simulator and records it.
// nats-server, the gateway and the provisioner run as separate processes.
func aliasBench(ctx context.Context, b *binaries, o options) (*aliasSummary, error) {
	var err error
	n := 500
	if o.long {
		n = 2000
	}
	var natsArgs []string
	natsProf := 0
	if o.profile != "" {
		if natsProf, err = freePort(); err != nil {
			return nil, err
		}
		natsArgs = []string{"--profile", strconv.Itoa(natsProf)}
	}
	ns, err := startNATS(b, natsArgs...)
	if err != nil {
		return nil, err
	}
	defer ns.stop()
	if err := ensureTopology(ctx, ns.url, 1, false); err != nil {
		return nil, err
	}
	apiPort, err := freePort()
	if err != nil {
		return nil, err
	}
	gwAdmin, err := freePort()
	if err != nil {
		return nil, err
	}
	prAdmin, err := freePort()
	if err != nil {
		return nil, err
	}
	gwURL := "http://127.0.0.1:" + strconv.Itoa(apiPort)
	rateLimited := false
	pushTo := gwURL
	if o.quietRooms {
		// A port nothing listens on: the simulator's transactions fail and
		// it retries them with backoff, as a homeserver does.
		if pushTo, err = closedURL(); err != nil {
			return nil, err
		}
	}
	reg := &registration.Registration{
		ID: "cactus", URL: &pushTo, ASToken: asToken, HSToken: hsToken,
		SenderLocalpart: "cactusbot", RateLimited: &rateLimited,
		Namespaces: registration.Namespaces{
			Users:   []registration.Namespace{{Exclusive: true, Regex: `@cactusbot:example\.org`}},
			Aliases: []registration.Namespace{{Exclusive: true, Regex: "#comments_.*"}},
		},
	}
	hs, err := hssim.Start(ctx, hssim.Options{
		ServerName: serverName, Mode: hssim.Synapse, Registrations: []*registration.Registration{reg},
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError})),
	})
	if err != nil {
		return nil, err
	}
	defer hs.Close()
	timer := &createTimer{h: hs}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	srv := &http.Server{Handler: timer}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()
	hsURL := "http://" + ln.Addr().String()

	env := gatewayEnv(ns.url, hsURL, 1, apiPort, gwAdmin)
	gw, err := startService(ctx, "gateway", b.gateway, env, gwAdmin, serviceArgs(b, o, "gateway"))
	if err != nil {
		return nil, err
	}
	defer gw.stop()
	penv := gatewayEnv(ns.url, hsURL, 1, 0, prAdmin)
	pr, err := startService(ctx, "provisioner", b.provisioner, penv, prAdmin, serviceArgs(b, o, "provisioner"))
	if err != nil {
		return nil, err
	}
	defer pr.stop()
	if err := registerSite(ctx, hs, hsURL, ns.url, "bench"); err != nil {
		return nil, err
	}

	nsp := namespace.Namespace{Prefix: "comments_", Server: serverName}
	client := &http.Client{}
	query := func(i int) (time.Time, time.Duration, error) {
		alias, err := nsp.CommentsAlias("bench", "s"+strconv.Itoa(i))
		if err != nil {
			return time.Time{}, 0, err
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, gwURL+"/_matrix/app/v1/rooms/"+url.PathEscape(alias.String()), nil)
		if err != nil {
			return time.Time{}, 0, err
		}
		req.Header.Set("Authorization", "Bearer "+hsToken)
		t0 := time.Now()
		resp, err := client.Do(req)
		d := time.Since(t0)
		if err != nil {
			return t0, d, err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return t0, d, fmt.Errorf("alias query %s: HTTP %d", alias, resp.StatusCode)
		}
		return t0, d, nil
	}
	for i := range 50 {
		if _, _, err := query(-1 - i); err != nil {
			return nil, fmt.Errorf("warm-up: %w", err)
		}
	}
	timer.take()
	procs := []*proc{ns.proc, gw, pr}
	before := map[string]float64{}
	for _, p := range procs {
		before[p.name] = float64(p.sample().CPU.Microseconds())
	}
	if natsProf > 0 {
		// Profile nats-server over the first 3 s of the timed queries.
		go func() {
			_ = saveProfile(fmt.Sprintf("http://127.0.0.1:%d/debug/pprof/profile?seconds=3", natsProf), o.profile+"/nats-server.prof")
		}()
	}
	totals := make([]time.Duration, 0, n)
	starts := make([]time.Time, 0, n)
	for i := range n {
		t0, d, err := query(i)
		if err != nil {
			return nil, err
		}
		totals = append(totals, d)
		starts = append(starts, t0)
	}
	creates, marks := timer.take()
	if len(creates) != n {
		return nil, fmt.Errorf("%d createRoom calls for %d queries", len(creates), n)
	}
	s := &aliasSummary{Queries: n, CPU: map[string]float64{}, RSS: map[string]float64{}}
	for _, p := range procs {
		smp := p.sample()
		s.CPU[p.name] = (float64(smp.CPU.Microseconds()) - before[p.name]) / float64(n)
		s.RSS[p.name] = float64(smp.RSS) / (1 << 20)
	}
	var tot, cre, over, pre, post []int64
	for i := range totals {
		tot = append(tot, int64(totals[i]))
		cre = append(cre, int64(creates[i]))
		over = append(over, int64(totals[i]-creates[i]))
		// Queries run one after another, so the i-th createRoom is the
		// i-th query's.
		pre = append(pre, int64(marks[2*i].Sub(starts[i])))
		post = append(post, int64(starts[i].Add(totals[i]).Sub(marks[2*i+1])))
	}
	s.BeforeP50, s.BeforeP99 = ms(pct(pre, .5)), ms(pct(pre, .99))
	s.AfterP50, s.AfterP99 = ms(pct(post, .5)), ms(pct(post, .99))
	s.QueryP50, s.QueryP99 = ms(pct(tot, .5)), ms(pct(tot, .99))
	s.CreateP50, s.CreateP99 = ms(pct(cre, .5)), ms(pct(cre, .99))
	s.OverP50, s.OverP99 = ms(pct(over, .5)), ms(pct(over, .99))
	s.Timeline, err = timeline(ctx, ns.url, timer, query, n)
	if err != nil {
		return nil, err
	}
	kv, err := kvPaths(ctx, ns.url, n)
	if err != nil {
		return nil, fmt.Errorf("registry paths: %w", err)
	}
	s.KV = map[string][2]float64{}
	for name, lat := range kv {
		s.KV[name] = [2]float64{ms(pct(lat, .5)), ms(pct(lat, .99))}
	}
	return s, nil
}

// timeline runs 21 more queries with a wiretap on the NATS server and
// returns the messages of the one with the median overhead, stamped from
// the query's start, with the createRoom call among them.
func timeline(ctx context.Context, natsURL string, timer *createTimer, query func(int) (time.Time, time.Duration, error), from int) ([]step, error) {
	nc, err := nats.Connect(natsURL, nats.Name("gatewaybench-wiretap"))
	if err != nil {
		return nil, err
	}
	defer nc.Close()
	var (
		mu   sync.Mutex
		seen []step // At holds the absolute time in ns
	)
	sub, err := nc.Subscribe(">", func(m *nats.Msg) {
		now := time.Now()
		mu.Lock()
		seen = append(seen, step{At: time.Duration(now.UnixNano()), Subject: m.Subject, What: describe(m)})
		mu.Unlock()
	})
	if err != nil {
		return nil, err
	}
	defer sub.Unsubscribe()
	if err := nc.Flush(); err != nil {
		return nil, err
	}
	type q struct {
		start time.Time
		total time.Duration
		over  time.Duration
		cs    [2]time.Time
	}
	var qs []q
	for i := range 21 {
		t0, d, err := query(from + 1000 + i)
		if err != nil {
			return nil, err
		}
		ct, marks := timer.take()
		if len(ct) != 1 {
			return nil, fmt.Errorf("%d createRoom calls in one query", len(ct))
		}
		qs = append(qs, q{start: t0, total: d, over: d - ct[0], cs: [2]time.Time{marks[0], marks[1]}})
	}
	_ = nc.Flush()
	slices.SortFunc(qs, func(a, b q) int { return int(a.over - b.over) })
	med := qs[len(qs)/2]
	mu.Lock()
	defer mu.Unlock()
	var out []step
	start, end := med.start.UnixNano(), med.start.Add(med.total).UnixNano()
	for _, s := range seen {
		if int64(s.At) >= start && int64(s.At) <= end {
			out = append(out, step{At: time.Duration(int64(s.At) - start), Subject: s.Subject, What: s.What})
		}
	}
	out = append(out,
		step{At: med.cs[0].Sub(med.start), What: "homeserver: createRoom starts"},
		step{At: med.cs[1].Sub(med.start), What: "homeserver: createRoom answered"},
		step{At: med.total, What: "homeserver: alias query answered"})
	slices.SortStableFunc(out, func(a, b step) int { return int(a.At - b.At) })
	return out, nil
}

// describe names what a message on the wire is for.
func describe(m *nats.Msg) string {
	s := m.Subject
	switch {
	case s == "cactus.rpc.alias":
		return "gateway → provisioner: alias query"
	case strings.HasPrefix(s, "$JS.API.DIRECT.GET."):
		return "provisioner → KV: read " + strings.TrimPrefix(s, "$JS.API.DIRECT.GET.")
	case strings.HasPrefix(s, "$KV."):
		return "provisioner → KV: write " + strings.SplitN(strings.TrimPrefix(s, "$KV."), ".", 2)[0]
	case strings.HasPrefix(s, "cactus.ev."):
		return "gateway → stream: event pushed by the homeserver"
	case strings.HasPrefix(s, "$JS.ACK."):
		return "consumer ack"
	case strings.HasPrefix(s, "$JS.API."):
		return "JetStream API " + strings.TrimPrefix(s, "$JS.API.")
	case strings.HasPrefix(s, "_INBOX"): // _INBOX. or a service's own _INBOX_<user>. prefix
		if len(m.Data) < 200 {
			return "reply " + string(m.Data)
		}
		return "reply (" + strconv.Itoa(len(m.Data)) + " bytes)"
	}
	return ""
}

// registerSite does what the bot does for `register <site>`: a moderation
// room on the homeserver and the site in the registry.
func registerSite(ctx context.Context, hs *hssim.Server, hsURL, natsURL, name string) error {
	ownerID, _, err := hs.RegisterUser("owner", "owner-password")
	if err != nil {
		return err
	}
	bot, err := matrix.NewClient(matrix.Config{HomeserverURL: hsURL, Token: asToken})
	if err != nil {
		return err
	}
	if _, err := mxid.ParseUserID(botID); err != nil {
		return err
	}
	nsp := namespace.Namespace{Prefix: "comments_", Server: serverName}
	pl := &matrix.PowerLevels{Users: map[string]int{ownerID: 100, botID: 100}}
	room, err := bot.CreateRoom(ctx, &matrix.CreateRoomRequest{
		Visibility: matrix.VisibilityPrivate, RoomAliasName: nsp.ModerationLocalpart(name),
		Name: name + " moderation room", CreationContent: map[string]any{"m.federate": true},
		PowerLevelContentOverride: pl,
	})
	if err != nil {
		return fmt.Errorf("moderation room: %w", err)
	}
	cur, err := bot.GetPowerLevels(ctx, room)
	if err != nil {
		return err
	}
	raw, _ := json.Marshal(cur)
	nc, js, err := connectJS(natsURL, "gatewaybench-setup")
	if err != nil {
		return err
	}
	defer nc.Close()
	r, err := registry.Open(ctx, js)
	if err != nil {
		return err
	}
	return r.CreateSite(ctx, &registry.Site{Name: name, Owner: ownerID, ModerationRoom: room.String(), PowerLevels: raw})
}

// table renders the alias results.
func (a *aliasSummary) table() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d sequential first-visit queries after 50 warm-up ones; the simulator in Synapse mode is the homeserver.\n\n", a.Queries)
	b.WriteString("| | p50 | p99 |\n|---|---|---|\n")
	fmt.Fprintf(&b, "| alias query, as the homeserver sees it | %.2f ms | %.2f ms |\n", a.QueryP50, a.QueryP99)
	fmt.Fprintf(&b, "| createRoom inside it (the homeserver's work) | %.2f ms | %.2f ms |\n", a.CreateP50, a.CreateP99)
	fmt.Fprintf(&b, "| **overhead** (query minus createRoom, query by query) | **%.2f ms** | %.2f ms |\n", a.OverP50, a.OverP99)
	fmt.Fprintf(&b, "| of which before createRoom (homeserver → gateway → NATS → provisioner) | %.2f ms | %.2f ms |\n", a.BeforeP50, a.BeforeP99)
	fmt.Fprintf(&b, "| of which after createRoom (provisioner → NATS → gateway → homeserver) | %.2f ms | %.2f ms |\n\n", a.AfterP50, a.AfterP99)
	fmt.Fprintf(&b, "CPU per query: nats-server %.0f µs, gateway %.0f µs, provisioner %.0f µs. RSS at the end: nats-server %.0f MiB, gateway %.0f MiB, provisioner %.0f MiB.\n\n",
		a.CPU["nats-server"], a.CPU["gateway"], a.CPU["provisioner"], a.RSS["nats-server"], a.RSS["gateway"], a.RSS["provisioner"])
	fmt.Fprintf(&b, "The registry's part, measured alone against the same nats-server (%d times each, interleaved):\n\n", a.Queries)
	b.WriteString("| path | p50 | p99 |\n|---|---|---|\n")
	for _, row := range []struct{ key, what string }{
		{"sequential", "sequential: read and decode the site, write the room, write the index, re-read and decode the site (4 round trips)"},
		{"provisioner", "the provisioner's: site from its watched snapshot, room and index written together, a revision check of the site (2 round trips, both after the answer)"},
		{"request", "a bare NATS request/reply (the gateway-to-provisioner hop)"},
	} {
		v := a.KV[row.key]
		fmt.Fprintf(&b, "| %s | %.2f ms | %.2f ms |\n", row.what, v[0], v[1])
	}
	b.WriteString("\n")
	b.WriteString("One query of median overhead, as seen by a wiretap on the NATS server (subscribed to `>`, so the times include its own delivery):\n\n")
	b.WriteString("| at | message | what |\n|---|---|---|\n")
	for _, s := range a.Timeline {
		subj := s.Subject
		if len(subj) > 60 {
			subj = subj[:60] + "…"
		}
		if subj != "" {
			subj = "`" + subj + "`"
		}
		fmt.Fprintf(&b, "| %.2f ms | %s | %s |\n", float64(s.At)/float64(time.Millisecond), subj, strings.ReplaceAll(s.What, "|", "\\|"))
	}
	return strings.TrimRight(b.String(), "\n")
}

// serviceArgs are the binary and arguments that run a service: its own
// binary, or this one with a CPU profile when profiling.
func serviceArgs(b *binaries, o options, name string) []string {
	if o.profile == "" {
		return nil
	}
	return []string{b.self, "-child", "serve", "-service", name, "-cpuprofile", o.profile + "/" + name + ".prof"}
}

// closedURL is an http URL on a local port nothing listens on.
func closedURL() (string, error) {
	port, err := freePort()
	if err != nil {
		return "", err
	}
	return "http://127.0.0.1:" + strconv.Itoa(port), nil
}
