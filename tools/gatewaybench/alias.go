package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
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
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/cactus-comments/appservice/pkg/bus"
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
	// Queries through each path, in Rounds rounds of Block queries each.
	Queries, Rounds, Block int
	pathStats              // through our services
	// Floor: through the relays (aliasrelay.go), the same hops doing
	// nothing; Ratios: every round's p50 overheads, in round order.
	Floor  pathStats
	Ratios []roundRatio
	// CPU per query by process (µs) and RSS at the end (MiB): our services
	// and the relays, and nats-server's during our blocks ("nats-server")
	// and the floor's ("nats-server floor").
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

// createTimer serves the simulator (or the floor's endpoint) and records
// when each createRoom started and ended inside it: the homeserver's share
// of an alias query.
type createTimer struct {
	h     http.Handler
	mu    sync.Mutex
	marks [][2]time.Time
	// capture: keep the next createRoom's body (read before its clock
	// starts), for the floor to send one of the same size.
	capture atomic.Bool
	body    []byte
}

func (c *createTimer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !strings.HasSuffix(r.URL.Path, "/createRoom") {
		c.h.ServeHTTP(w, r)
		return
	}
	if c.capture.CompareAndSwap(true, false) {
		b, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(b))
		c.mu.Lock()
		c.body = b
		c.mu.Unlock()
	}
	t0 := time.Now()
	c.h.ServeHTTP(w, r)
	t1 := time.Now()
	c.mu.Lock()
	c.marks = append(c.marks, [2]time.Time{t0, t1})
	c.mu.Unlock()
}

func (c *createTimer) take() [][2]time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	m := c.marks
	c.marks = nil
	return m
}

// serveTimed serves h on a local port with its createRoom calls timed.
func serveTimed(h http.Handler) (timer *createTimer, base string, stop func(), err error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, "", nil, err
	}
	timer = &createTimer{h: h}
	srv := &http.Server{Handler: timer}
	go func() { _ = srv.Serve(ln) }()
	return timer, "http://" + ln.Addr().String(), func() { _ = srv.Close() }, nil
}

// instantCreateRoom is the floor's homeserver: a room id at once.
func instantCreateRoom(w http.ResponseWriter, r *http.Request) {
	_, _ = io.Copy(io.Discard, r.Body)
	w.Header().Set("Content-Type", "application/json")
	_, _ = io.WriteString(w, `{"room_id":"!floor:example.org"}`)
}

// aliasBench measures first-visit alias queries: the homeserver (the
// simulator, in this process) asks the gateway, which asks a provisioner
// over NATS, which creates the room on the simulator and records it.
// nats-server, the gateway and the provisioner run as separate processes.
// In rounds, a block of queries through the floor's relays comes before
// each block through our services, on the same nats-server.
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
	timer, hsURL, stopHS, err := serveTimed(hs)
	if err != nil {
		return nil, err
	}
	defer stopHS()

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
	if err := registerSite(ctx, hs, hsURL, ns.url, benchSite); err != nil {
		return nil, err
	}

	// The floor: its homeserver endpoint here, its relays in processes of
	// their own.
	floorTimer, floorHS, stopFloorHS, err := serveTimed(http.HandlerFunc(instantCreateRoom))
	if err != nil {
		return nil, err
	}
	defer stopFloorHS()

	nsp := namespace.Namespace{Prefix: "comments_", Server: serverName}
	client := &http.Client{}
	ask := func(base, section string) (time.Time, time.Duration, error) {
		alias, err := nsp.CommentsAlias(benchSite, section)
		if err != nil {
			return time.Time{}, 0, err
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/_matrix/app/v1/rooms/"+url.PathEscape(alias.String()), nil)
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
			return t0, d, fmt.Errorf("alias query %s to %s: HTTP %d", alias, base, resp.StatusCode)
		}
		return t0, d, nil
	}
	query := func(i int) (time.Time, time.Duration, error) { return ask(gwURL, sectionOf(i)) }
	timer.capture.Store(true)
	for i := range 50 {
		if _, _, err := query(-1 - i); err != nil {
			return nil, fmt.Errorf("warm-up: %w", err)
		}
	}
	timer.mu.Lock()
	body := timer.body
	timer.mu.Unlock()
	if len(body) == 0 {
		return nil, errors.New("no createRoom body seen in the warm-up")
	}
	floorURL, rg, rp, err := startRelays(b, ns.url, floorHS+"/_matrix/client/v3/createRoom", body)
	defer rg.stop()
	defer rp.stop()
	if err != nil {
		return nil, err
	}
	for i := range 50 {
		if _, _, err := ask(floorURL, "f"+strconv.Itoa(-1-i)); err != nil {
			return nil, fmt.Errorf("floor warm-up: %w", err)
		}
	}
	timer.take()
	floorTimer.take()
	procs := []*proc{gw, pr, rg, rp}
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
	// Rounds of a floor block then a block of ours: whatever else the
	// machine does meanwhile weighs on both alike.
	const block = 50
	rounds := max(1, n/block)
	paths := [2]struct {
		name, url, section string
		timer              *createTimer
	}{{"floor", floorURL, "f", floorTimer}, {"ours", gwURL, "s", timer}}
	var (
		blocks  [2][][]aliasSample
		natsCPU [2]time.Duration // nats-server's during each path's blocks
	)
	for r := range rounds {
		for k, pth := range paths {
			cpu0 := ns.sample().CPU
			qs := make([]aliasSample, 0, block)
			for j := range block {
				t0, d, err := ask(pth.url, pth.section+strconv.Itoa(r*block+j))
				if err != nil {
					return nil, err
				}
				qs = append(qs, aliasSample{Start: t0, Total: d})
			}
			marks := pth.timer.take()
			if len(marks) != block {
				return nil, fmt.Errorf("%s: %d createRoom calls for %d queries", pth.name, len(marks), block)
			}
			// Queries run one after another, so the i-th createRoom is the
			// i-th query's.
			for j := range qs {
				qs[j].Create = marks[j]
			}
			natsCPU[k] += ns.sample().CPU - cpu0
			blocks[k] = append(blocks[k], qs)
		}
		fmt.Fprintf(os.Stderr, "  alias round %2d  overhead p50: floor %5.2f ms  ours %5.2f ms\n",
			r+1, statsOf(blocks[0][r]).OverP50, statsOf(blocks[1][r]).OverP50)
	}
	total := rounds * block
	s := &aliasSummary{Queries: total, Rounds: rounds, Block: block, CPU: map[string]float64{}, RSS: map[string]float64{},
		pathStats: statsOf(slices.Concat(blocks[1]...)), Floor: statsOf(slices.Concat(blocks[0]...))}
	if s.Ratios, err = roundRatios(blocks[0], blocks[1]); err != nil {
		return nil, err
	}
	for _, p := range procs {
		smp := p.sample()
		s.CPU[p.name] = (float64(smp.CPU.Microseconds()) - before[p.name]) / float64(total)
		s.RSS[p.name] = float64(smp.RSS) / (1 << 20)
	}
	s.CPU["nats-server"] = float64(natsCPU[1].Microseconds()) / float64(total)
	s.CPU["nats-server floor"] = float64(natsCPU[0].Microseconds()) / float64(total)
	s.RSS["nats-server"] = float64(ns.sample().RSS) / (1 << 20)
	s.Timeline, err = timeline(ctx, ns.url, timer, query, total)
	if err != nil {
		return nil, err
	}
	kv, err := kvPaths(ctx, ns.url, total)
	if err != nil {
		return nil, fmt.Errorf("registry paths: %w", err)
	}
	s.KV = map[string][2]float64{}
	for name, lat := range kv {
		s.KV[name] = [2]float64{ms(pct(lat, .5)), ms(pct(lat, .99))}
	}
	return s, nil
}

// benchSite is the site every query is for.
const benchSite = "bench"

// sectionOf names the comment section of the i-th query.
func sectionOf(i int) string { return "s" + strconv.Itoa(i) }

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
		i     int // the query's index among the 21
		start time.Time
		total time.Duration
		over  time.Duration
	}
	var qs []q
	for i := range 21 {
		t0, d, err := query(from + 1000 + i)
		if err != nil {
			return nil, err
		}
		marks := timer.take()
		if len(marks) != 1 {
			return nil, fmt.Errorf("%d createRoom calls in one query", len(marks))
		}
		qs = append(qs, q{i: i, start: t0, total: d, over: overhead(aliasSample{Start: t0, Total: d, Create: marks[0]})})
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
	// The homeserver's own moments (createRoom, the answer) are not listed:
	// they are stamped in this process as they happen, the wiretap's
	// messages when they reach it, later; mixed, they would read out of
	// order. The table of percentiles splits the overhead at createRoom.
	mine := "." + bus.Token(benchSite) + "." + bus.Token(sectionOf(from+1000+med.i))
	for i, s := range out {
		if strings.HasPrefix(s.Subject, "$KV."+bus.BucketRooms+".") {
			if strings.HasSuffix(s.Subject, mine) {
				out[i].What += " (this query's room)"
			} else {
				out[i].What += " (an earlier query's room)"
			}
		}
	}
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
	fmt.Fprintf(&b, "%d sequential first-visit queries through our services and %d through the floor (the same hops doing nothing), after 50 warm-up ones each, in %d rounds of %d floor queries then %d of ours; the simulator in Synapse mode is the homeserver, the floor's endpoint answers createRoom at once.\n\n",
		a.Queries, a.Queries, a.Rounds, a.Block, a.Block)
	b.WriteString("| | ours p50 | ours p99 | floor p50 | floor p99 |\n|---|---|---|---|---|\n")
	for _, row := range []struct {
		what     string
		ours, fl [2]float64
	}{
		{"alias query, as the homeserver sees it", [2]float64{a.QueryP50, a.QueryP99}, [2]float64{a.Floor.QueryP50, a.Floor.QueryP99}},
		{"createRoom inside it (the homeserver's work)", [2]float64{a.CreateP50, a.CreateP99}, [2]float64{a.Floor.CreateP50, a.Floor.CreateP99}},
		{"**overhead** (query minus createRoom, query by query)", [2]float64{a.OverP50, a.OverP99}, [2]float64{a.Floor.OverP50, a.Floor.OverP99}},
		{"of which before createRoom (homeserver → gateway → NATS → provisioner)", [2]float64{a.BeforeP50, a.BeforeP99}, [2]float64{a.Floor.BeforeP50, a.Floor.BeforeP99}},
		{"of which after createRoom (provisioner → NATS → gateway → homeserver)", [2]float64{a.AfterP50, a.AfterP99}, [2]float64{a.Floor.AfterP50, a.Floor.AfterP99}},
	} {
		p50 := "%.2f ms"
		if strings.HasPrefix(row.what, "**") {
			p50 = "**%.2f ms**"
		}
		fmt.Fprintf(&b, "| %s | "+p50+" | %.2f ms | "+p50+" | %.2f ms |\n", row.what, row.ours[0], row.ours[1], row.fl[0], row.fl[1])
	}
	fmt.Fprintf(&b, "\nOverhead p50 of ours over the floor's, round by round: median **%.2f×**; in round order:", medianRatio(a.Ratios))
	for _, r := range a.Ratios {
		fmt.Fprintf(&b, " %.2f×", r.ratio())
	}
	b.WriteString(".\n\n")
	fmt.Fprintf(&b, "CPU per query, ours: nats-server %.0f µs, gateway %.0f µs, provisioner %.0f µs; the floor: nats-server %.0f µs, relay gateway %.0f µs, relay provisioner %.0f µs. RSS at the end: nats-server %.0f MiB, gateway %.0f MiB, provisioner %.0f MiB, relays %.0f and %.0f MiB.\n\n",
		a.CPU["nats-server"], a.CPU["gateway"], a.CPU["provisioner"], a.CPU["nats-server floor"], a.CPU["relay-gateway"], a.CPU["relay-provisioner"],
		a.RSS["nats-server"], a.RSS["gateway"], a.RSS["provisioner"], a.RSS["relay-gateway"], a.RSS["relay-provisioner"])
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
	b.WriteString("The NATS messages during one query of median overhead, as a wiretap on the server (subscribed to `>`) received them: each offset is when the wiretap got the message, counted from the query's start, so the offsets lag the server and bunch up; the follow-up work of the query before shows up too.\n\n")
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
