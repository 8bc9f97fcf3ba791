// Command gatewaybench measures the gateway's transaction throughput
// against two floors measured in the same run:
//
//   - jetstream: the same events published straight to JetStream from one
//     process (async, awaiting every ack per transaction), the most the
//     gateway could do;
//   - http-null: an HTTP handler that only reads the body and answers {},
//     the cost of HTTP alone.
//
// NATS runs embedded in this process with file storage. The gateway and the
// null handler run in child processes (this binary with -serve) so that
// their memory can be measured. Senders are HTTP clients, one connection
// each, with one transaction in flight each, as a homeserver sends.
//
// Usage:
//
//	go run ./tools/gatewaybench -senders 1,4 -rounds 3
package main

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/cactus-comments/appservice/pkg/bus"
	"github.com/cactus-comments/appservice/pkg/config"
	"github.com/cactus-comments/appservice/pkg/embednats"
	"github.com/cactus-comments/appservice/pkg/event"
	"github.com/cactus-comments/appservice/pkg/logging"
	"github.com/cactus-comments/appservice/services/gateway/gateway"
	"github.com/cactus-comments/appservice/services/gateway/loadgen"
)

const (
	hsToken = "bench-hs-token-0123456789abcdef0123456789abcdef"
	asToken = "bench-as-token-0123456789abcdef0123456789abcdef"
	botID   = "@cactusbot:example.org"
)

func main() {
	serve := flag.String("serve", "", "child mode: serve `kind` (gateway or null) and print its address")
	natsURL := flag.String("nats", "", "child mode: NATS URL for the gateway")
	txns := flag.Int("txns", 1000, "measured transactions per scenario (split among the senders)")
	warmup := flag.Int("warmup", 50, "unmeasured transactions per sender before each scenario")
	events := flag.Int("events", 100, "events per transaction")
	size := flag.Int("size", 1024, "approximate bytes per event")
	sendersList := flag.String("senders", "1,4", "comma-separated numbers of concurrent senders")
	rounds := flag.Int("rounds", 3, "rounds of every scenario; the median round is reported")
	memory := flag.Bool("memory", false, "JetStream memory storage instead of file storage")
	publishTimeout := flag.Duration("publish-timeout", 10*time.Second, "gateway: CACTUS_PUBLISH_TIMEOUT")
	runID := flag.String("run", "", "child mode (jetstream-proc): event id prefix")
	flag.Parse()

	if *serve == "jetstream-proc" {
		if err := childFloor(*natsURL, *runID, *senders1(sendersList), *txns, *warmup, *events, *size); err != nil {
			fmt.Fprintln(os.Stderr, "gatewaybench child:", err)
			os.Exit(1)
		}
		return
	}
	if *serve != "" {
		if err := child(*serve, *natsURL, *publishTimeout); err != nil {
			fmt.Fprintln(os.Stderr, "gatewaybench child:", err)
			os.Exit(1)
		}
		return
	}
	var senders []int
	for _, s := range strings.Split(*sendersList, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 {
			fmt.Fprintf(os.Stderr, "gatewaybench: bad -senders %q\n", *sendersList)
			os.Exit(2)
		}
		senders = append(senders, n)
	}
	p := params{txns: *txns, warmup: *warmup, events: *events, size: *size, rounds: *rounds, memory: *memory, publishTimeout: *publishTimeout}
	if err := bench(p, senders); err != nil {
		fmt.Fprintln(os.Stderr, "gatewaybench:", err)
		os.Exit(1)
	}
}

// senders1 reads a -senders flag holding one number (child mode).
func senders1(list *string) *int {
	n, err := strconv.Atoi(*list)
	if err != nil {
		n = 1
	}
	return &n
}

// childFloor is the JetStream floor in a process of its own, like the
// gateway: it builds the workload, publishes it and prints the timings.
func childFloor(natsURL, runID string, senders, txns, warmup, events, size int) error {
	nc, err := nats.Connect(natsURL, nats.Name("gatewaybench-floor-proc"))
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(8192))
	if err != nil {
		return err
	}
	w := newWorkload(runID, senders, txns, events, size)
	runtime.GC()
	var cpuStart time.Duration
	r, err := floorJetStreamWith(context.Background(), js, w, warmup, func() { cpuStart = selfCPU() })
	if err != nil {
		return err
	}
	out := childResult{WallNS: int64(r.wall), CPUNS: int64(selfCPU() - cpuStart), Events: r.events}
	for _, l := range r.lat {
		out.LatNS = append(out.LatNS, int64(l))
	}
	b, err := json.Marshal(out)
	if err != nil {
		return err
	}
	fmt.Printf("RESULT %s\n", b)
	return nil
}

type childResult struct {
	WallNS, CPUNS int64
	Events        int
	LatNS         []int64
}

func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// floorInChild runs childFloor and reads its result.
func floorInChild(natsURL, runID string, senders, perSender int, p params) (result, error) {
	cmd := exec.Command(os.Args[0], "-serve", "jetstream-proc", "-nats", natsURL, "-run", runID,
		"-senders", strconv.Itoa(senders), "-txns", strconv.Itoa(p.warmup+perSender), "-warmup", strconv.Itoa(p.warmup),
		"-events", strconv.Itoa(p.events), "-size", strconv.Itoa(p.size))
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		return result{}, fmt.Errorf("floor child: %w", err)
	}
	line, ok := strings.CutPrefix(strings.TrimSpace(string(out)), "RESULT ")
	if !ok {
		return result{}, fmt.Errorf("floor child said %q", out)
	}
	var cr childResult
	if err := json.Unmarshal([]byte(line), &cr); err != nil {
		return result{}, err
	}
	r := result{wall: time.Duration(cr.WallNS), events: cr.Events, cpu: time.Duration(cr.CPUNS)}
	for _, l := range cr.LatNS {
		r.lat = append(r.lat, time.Duration(l))
	}
	return r, nil
}

type params struct {
	txns, warmup, events, size, rounds int
	memory                             bool
	publishTimeout                     time.Duration
}

// result is one scenario's measurement.
type result struct {
	scenario string
	senders  int
	events   int
	wall     time.Duration
	lat      []time.Duration // per transaction
	rssPeak  int64           // bytes, child processes only
	rssEnd   int64
	cpu      time.Duration // child CPU time during the measured phase
	// handlerMean is the gateway's own mean time per transaction (warmup
	// included), from its metrics.
	handlerMean time.Duration
}

func (r result) eventsPerSec() float64 { return float64(r.events) / r.wall.Seconds() }

func (r result) mean() time.Duration {
	var sum time.Duration
	for _, l := range r.lat {
		sum += l
	}
	return sum / time.Duration(len(r.lat))
}

func (r result) pct(p float64) time.Duration {
	s := slices.Clone(r.lat)
	slices.Sort(s)
	return s[min(len(s)-1, int(p*float64(len(s))))]
}

func bench(p params, sendersList []int) error {
	ns, err := embednats.Start(embednats.Options{})
	if err != nil {
		return err
	}
	defer ns.Shutdown()
	nc, err := nats.Connect(ns.ClientURL(), nats.Name("gatewaybench-floor"))
	if err != nil {
		return err
	}
	defer nc.Close()
	ctx := context.Background()
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(8192))
	if err != nil {
		return err
	}
	topo := bus.Topology{Replicas: 1, Memory: p.memory}
	if err := topo.Ensure(ctx, js); err != nil {
		return err
	}
	stream, err := js.Stream(ctx, bus.StreamEvents)
	if err != nil {
		return err
	}
	storage := "file"
	if p.memory {
		storage = "memory"
	}
	fmt.Printf("gatewaybench: %d events of ~%d bytes per transaction, %d measured transactions per scenario, %d rounds, %s storage\n",
		p.events, p.size, p.txns, p.rounds, storage)
	fmt.Printf("go %s, GOMAXPROCS %d, %s\n\n", runtime.Version(), runtime.GOMAXPROCS(0), loadavg())

	var all []result
	var ratioSummary []string
	run := 0
	for _, senders := range sendersList {
		perSender := max(1, p.txns/senders)
		byScenario := map[string][]result{}
		for round := range p.rounds {
			for _, scenario := range scenarios {
				run++
				runID := fmt.Sprintf("r%d", run)
				var w *workload
				if scenario != "jetstream-proc" {
					w = newWorkload(runID, senders, p.warmup+perSender, p.events, p.size)
				}
				if err := stream.Purge(ctx); err != nil {
					return fmt.Errorf("purge: %w", err)
				}
				runtime.GC()
				var r result
				var err error
				switch scenario {
				case "jetstream":
					r, err = floorJetStream(ctx, js, w, p.warmup)
				case "jetstream-proc":
					r, err = floorInChild(ns.ClientURL(), runID, senders, perSender, p)
				default:
					r, err = overHTTP(scenario, ns.ClientURL(), w, p)
				}
				if err != nil {
					return fmt.Errorf("%s, %d senders, round %d: %w", scenario, senders, round+1, err)
				}
				r.scenario, r.senders = scenario, senders
				fmt.Printf("  round %d %-14s senders=%d: %9.0f events/s  p50 %7.2fms  p99 %7.2fms  mean %7.2fms",
					round+1, scenario, senders, r.eventsPerSec(), ms(r.pct(.5)), ms(r.pct(.99)), ms(r.mean()))
				if r.handlerMean > 0 {
					fmt.Printf("  (inside the gateway: mean %.2fms)", ms(r.handlerMean))
				}
				fmt.Println()
				byScenario[scenario] = append(byScenario[scenario], r)
			}
		}
		// The machine may be shared: compare the gateway with the floor
		// measured right before it, round by round.
		for _, floor := range []string{"jetstream", "jetstream-proc"} {
			var ratios []float64
			for i, g := range byScenario["gateway"] {
				ratios = append(ratios, g.eventsPerSec()/byScenario[floor][i].eventsPerSec())
			}
			slices.Sort(ratios)
			ratioSummary = append(ratioSummary, fmt.Sprintf("gateway / %s floor, %d sender(s): median %.0f%% (rounds: %s)",
				floor, senders, 100*ratios[len(ratios)/2], percents(ratios)))
		}
		for _, s := range scenarios {
			rs := byScenario[s]
			slices.SortFunc(rs, func(a, b result) int { return cmp.Compare(a.eventsPerSec(), b.eventsPerSec()) })
			all = append(all, rs[len(rs)/2])
		}
	}
	fmt.Printf("\n%s after the run\n\n", loadavg())
	report(all)
	fmt.Println()
	for _, line := range ratioSummary {
		fmt.Println(line)
	}
	return nil
}

func percents(fs []float64) string {
	var parts []string
	for _, f := range fs {
		parts = append(parts, fmt.Sprintf("%.0f%%", 100*f))
	}
	return strings.Join(parts, " ")
}

// scenarios of every round, floors first, each measured right before the
// gateway: jetstream publishes from this process (which also runs the NATS
// server), jetstream-proc from a child process like the gateway's.
var scenarios = []string{"jetstream", "jetstream-proc", "http-null", "gateway"}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func report(rs []result) {
	fmt.Println("Median round of each scenario:")
	fmt.Println()
	fmt.Println("| senders | scenario | events/s | txn p50 | txn p99 | vs JetStream floor | peak RSS | CPU per event |")
	fmt.Println("|---|---|---|---|---|---|---|---|")
	floor := map[int]float64{}
	for _, r := range rs {
		if r.scenario == "jetstream" {
			floor[r.senders] = r.eventsPerSec()
		}
	}
	for _, r := range rs {
		rss, cpu := "", ""
		if r.rssPeak > 0 {
			rss = fmt.Sprintf("%.0f MiB", float64(r.rssPeak)/(1<<20))
		}
		if r.cpu > 0 {
			cpu = fmt.Sprintf("%.1f µs", float64(r.cpu.Microseconds())/float64(r.events))
		}
		fmt.Printf("| %d | %s | %.0f | %.2f ms | %.2f ms | %.0f%% | %s | %s |\n",
			r.senders, r.scenario, r.eventsPerSec(), ms(r.pct(.5)), ms(r.pct(.99)),
			100*r.eventsPerSec()/floor[r.senders], rss, cpu)
	}
}

// workload is every sender's transactions, built before the clock starts.
type workload struct {
	bodies [][][]byte      // [sender][txn] body
	msgs   [][][]*nats.Msg // [sender][txn] the same events as JetStream messages
	events int
}

func newWorkload(runID string, senders, txns, events, size int) *workload {
	w := &workload{bodies: make([][][]byte, senders), msgs: make([][][]*nats.Msg, senders), events: events}
	for s := range senders {
		for n := range txns {
			seq := s*txns + n
			body := loadgen.Transaction(runID, seq, events, size)
			w.bodies[s] = append(w.bodies[s], body)
			var txn struct{ Events []json.RawMessage }
			if err := json.Unmarshal(body, &txn); err != nil {
				panic(err)
			}
			msgs := make([]*nats.Msg, 0, len(txn.Events))
			for _, raw := range txn.Events {
				var e event.Event
				if err := json.Unmarshal(raw, &e); err != nil {
					panic(err)
				}
				m := nats.NewMsg(bus.EventSubject(bus.Classify(&e, botID), e.RoomID))
				m.Header.Set(bus.HeaderMsgID, e.EventID)
				m.Header.Set(bus.HeaderTxnID, strconv.Itoa(seq))
				m.Header.Set(bus.HeaderEventType, e.Type)
				m.Data = raw
				msgs = append(msgs, m)
			}
			w.msgs[s] = append(w.msgs[s], msgs)
		}
	}
	return w
}

// floorJetStream publishes each transaction's events asynchronously and
// waits for every ack before the next transaction, per sender.
func floorJetStream(ctx context.Context, js jetstream.JetStream, w *workload, warmup int) (result, error) {
	return floorJetStreamWith(ctx, js, w, warmup, nil)
}

func floorJetStreamWith(ctx context.Context, js jetstream.JetStream, w *workload, warmup int, started func()) (result, error) {
	return measure(len(w.msgs), warmup, len(w.msgs[0]), w.events, func(s, n int) error {
		msgs := w.msgs[s][n]
		futs := make([]jetstream.PubAckFuture, 0, len(msgs))
		for _, m := range msgs {
			f, err := js.PublishMsgAsync(m)
			if err != nil {
				return err
			}
			futs = append(futs, f)
		}
		for _, f := range futs {
			select {
			case <-f.Ok():
			case err := <-f.Err():
				return err
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		return nil
	}, started)
}

// overHTTP sends the transactions to a child process serving kind.
func overHTTP(kind, natsURL string, w *workload, p params) (result, error) {
	c, err := startChild(kind, natsURL, p.publishTimeout)
	if err != nil {
		return result{}, err
	}
	defer c.stop()
	clients := make([]*http.Client, len(w.bodies))
	for i := range clients {
		clients[i] = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1, DisableCompression: true}}
	}
	var cpuStart time.Duration
	r, err := measure(len(w.bodies), p.warmup, len(w.bodies[0]), w.events, func(s, n int) error {
		req, err := http.NewRequest(http.MethodPut, fmt.Sprintf("%s/_matrix/app/v1/transactions/%d", c.url, n), bytes.NewReader(w.bodies[s][n]))
		if err != nil {
			return err
		}
		req.Header.Set("Authorization", "Bearer "+hsToken)
		req.Header.Set("Content-Type", "application/json")
		resp, err := clients[s].Do(req)
		if err != nil {
			return err
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || string(body) != "{}" {
			return fmt.Errorf("status %d: %s", resp.StatusCode, body)
		}
		return nil
	}, func() { cpuStart = c.cpu() })
	if err != nil {
		return r, err
	}
	r.cpu = c.cpu() - cpuStart
	r.rssPeak, r.rssEnd = c.rss()
	if kind == "gateway" {
		r.handlerMean = c.handlerMean()
	}
	return r, nil
}

// measure runs send for every sender's transactions: warmup unmeasured
// ones, a barrier, then the measured ones. started runs at the barrier.
func measure(senders, warmup, txns, events int, send func(s, n int) error, started func()) (result, error) {
	var wg sync.WaitGroup
	errs := make(chan error, senders)
	ready := make(chan struct{})
	var warm sync.WaitGroup
	warm.Add(senders)
	lat := make([][]time.Duration, senders)
	for s := range senders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := range warmup {
				if err := send(s, n); err != nil {
					errs <- fmt.Errorf("warmup: %w", err)
					warm.Done()
					return
				}
			}
			warm.Done()
			<-ready
			for n := warmup; n < txns; n++ {
				t0 := time.Now()
				if err := send(s, n); err != nil {
					errs <- err
					return
				}
				lat[s] = append(lat[s], time.Since(t0))
			}
		}()
	}
	warm.Wait()
	if started != nil {
		started()
	}
	start := time.Now()
	close(ready)
	wg.Wait()
	wall := time.Since(start)
	close(errs)
	if err := <-errs; err != nil {
		return result{}, err
	}
	r := result{wall: wall}
	for _, l := range lat {
		r.lat = append(r.lat, l...)
	}
	r.events = len(r.lat) * events
	return r, nil
}

// childProc is a gateway or null server in a child process.
type childProc struct {
	cmd   *exec.Cmd
	url   string
	admin string // "http://-" for the null handler
}

// handlerMean reads the gateway's own mean transaction time from its
// metrics: the part of the latency spent inside the gateway.
func (c *childProc) handlerMean() time.Duration {
	resp, err := http.Get(c.admin + "/metrics")
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var sum, count float64
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "cactus_gateway_transaction_duration_seconds_sum "); ok {
			sum, _ = strconv.ParseFloat(strings.TrimSpace(v), 64)
		}
		if v, ok := strings.CutPrefix(line, "cactus_gateway_transaction_duration_seconds_count "); ok {
			count, _ = strconv.ParseFloat(strings.TrimSpace(v), 64)
		}
	}
	if count == 0 {
		return 0
	}
	return time.Duration(sum / count * float64(time.Second))
}

func startChild(kind, natsURL string, publishTimeout time.Duration) (*childProc, error) {
	cmd := exec.Command(os.Args[0], "-serve", kind, "-nats", natsURL, "-publish-timeout", publishTimeout.String())
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	addrs, ok := strings.CutPrefix(strings.TrimSpace(line), "LISTEN ")
	addr, admin, _ := strings.Cut(addrs, " ")
	if err != nil || !ok {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return nil, fmt.Errorf("child %s did not say where it listens: %q %v", kind, line, err)
	}
	return &childProc{cmd: cmd, url: "http://" + addr, admin: "http://" + admin}, nil
}

func (c *childProc) stop() {
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = c.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		_ = c.cmd.Process.Kill()
		<-done
	}
}

// rss reads the child's peak and current resident set size.
func (c *childProc) rss() (peak, now int64) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", c.cmd.Process.Pid))
	if err != nil {
		return 0, 0
	}
	for line := range strings.Lines(string(b)) {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		kb, _ := strconv.ParseInt(f[1], 10, 64)
		switch f[0] {
		case "VmHWM:":
			peak = kb << 10
		case "VmRSS:":
			now = kb << 10
		}
	}
	return peak, now
}

// cpu reads the child's user+system CPU time.
func (c *childProc) cpu() time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", c.cmd.Process.Pid))
	if err != nil {
		return 0
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(utime+stime) * time.Second / 100 // USER_HZ
}

func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "load average unknown"
	}
	f := strings.Fields(string(b))
	return "load average " + strings.Join(f[:3], " ")
}

// child serves kind until SIGTERM, printing "LISTEN <addr>" once bound.
func child(kind, natsURL string, publishTimeout time.Duration) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	switch kind {
	case "http-null":
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		fmt.Printf("LISTEN %s -\n", ln.Addr())
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.Copy(io.Discard, r.Body)
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write([]byte("{}"))
		})}
		go func() { <-ctx.Done(); _ = srv.Shutdown(context.Background()) }()
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	case "gateway":
		gateway.TuneGC() // as services/gateway/main.go does
		if path := os.Getenv("GATEWAYBENCH_CPUPROFILE"); path != "" {
			f, err := os.Create(path)
			if err != nil {
				return err
			}
			if err := pprof.StartCPUProfile(f); err != nil {
				return err
			}
			defer func() { pprof.StopCPUProfile(); _ = f.Close() }()
		}
		cfg := &config.Config{
			HSToken: hsToken, ASToken: asToken, HomeserverURL: "http://127.0.0.1:9", UserID: botID,
			NamespaceRegex: "#comments_.*", NamespacePrefix: "comments_", RegistrationRegex: "@.*:.*",
			NATSURL: natsURL, NATSReplicas: 1, ListenAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0",
			LogFormat: "json", LogLevel: "warn", PublishTimeout: publishTimeout, AliasQueryTimeout: 20 * time.Second,
			MaxBodyBytes: 32 << 20, ShutdownTimeout: 25 * time.Second, RegistrationLimit: 10,
			HomeserverTimeout: 20 * time.Second, Concurrency: 16, RetryHorizon: 24 * time.Hour, RetryMaxBackoff: 5 * time.Minute,
		}
		if err := cfg.Validate(); err != nil {
			return err
		}
		log := logging.New(os.Stderr, logging.Options{Format: "json", Level: "warn", Secrets: cfg.Secrets(), Service: "gateway"})
		return gateway.RunWith(ctx, cfg, gateway.RunOptions{
			Logger:   log,
			OnListen: func(api, admin net.Addr) { fmt.Printf("LISTEN %s %s\n", api, admin) },
		})
	}
	return fmt.Errorf("unknown -serve %q", kind)
}
