package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"slices"
	"strconv"
	"time"

	"github.com/cactus-comments/appservice/pkg/bus"
	"github.com/cactus-comments/appservice/tools/gatewaybench/procstat"
	"github.com/cactus-comments/appservice/tools/gatewaybench/publish"
)

const (
	hsToken = "bench-hs-token-0123456789abcdef0123456789abcdef"
	asToken = "bench-as-token-0123456789abcdef0123456789abcdef"
	botID   = "@cactusbot:example.org"
)

// scenario is one workload of the ingest benchmark.
type scenario struct {
	Name string
	What string
	spec
}

func scenarios(long bool) []scenario {
	k := 1
	if long {
		k = 3
	}
	return []scenario{
		{"100x1", "100-event transactions, 1 in flight", spec{Senders: 1, Txns: 300 * k, Warmup: 30, Events: 100, Size: 1024}},
		{"100x4", "100-event transactions, 4 in flight", spec{Senders: 4, Txns: 100 * k, Warmup: 10, Events: 100, Size: 1024}},
		{"1x1", "1-event transactions, 1 in flight", spec{Senders: 1, Txns: 2000 * k, Warmup: 200, Events: 1, Size: 1024}},
		{"ban", "1-event ban transactions while another sender sends 100-event ones", spec{Senders: 2, Txns: 150 * k, Warmup: 20, Events: 100, Size: 1024, Ban: true}},
	}
}

// floorDesign is the publisher the gateway is compared with; gateway is
// the gateway binary with the load generator in front.
const (
	floorDesign   = "async"
	gatewayDesign = "gateway"
)

// measurement is one design on one scenario in one round.
type measurement struct {
	Scenario, Design string
	Round            int
	Result           clientResult
	// Use is each process's CPU during the measured phase and its
	// memory at its end: nats-server, gateway (gateway design only),
	// client (the load generator or the publisher).
	Use map[string]procUse
}

type procUse struct {
	CPU          time.Duration
	RSS, PeakRSS int64
}

func (m measurement) eventsPerSec() float64 {
	return float64(m.Result.Events) / time.Duration(m.Result.WallNS).Seconds()
}

// measure runs one design on one scenario with fresh processes: a new
// nats-server (so that every measurement starts from the same empty
// duplicate window), the gateway if measured, and the client.
func measure(ctx context.Context, b *binaries, sc scenario, design string, replicas, round, run int) (measurement, error) {
	m := measurement{Scenario: sc.Name, Design: design, Round: round, Use: map[string]procUse{}}
	ns, err := startCluster(b, replicas)
	if err != nil {
		return m, err
	}
	defer ns.stop()
	if err := ensureTopology(ctx, ns.url, replicas, design == "atomic" || design == "fast"); err != nil {
		return m, err
	}
	var procs []named
	procs = append(procs, named{"nats-server", ns})
	sp := sc.spec
	sp.Run = "r" + strconv.Itoa(run)
	spJSON, _ := json.Marshal(sp)
	var client *proc
	if design == gatewayDesign {
		gw, api, err := startGateway(ctx, b, ns.url, replicas)
		if err != nil {
			return m, err
		}
		defer gw.stop()
		procs = append(procs, named{gw.name, gw})
		client, err = start("client", b.self, []string{"-child", "loadgen", "-url", api, "-spec", string(spJSON)}, nil, true)
		if err != nil {
			return m, err
		}
	} else {
		client, err = start("client", b.self, []string{"-child", "publish", "-design", design, "-nats", ns.url, "-spec", string(spJSON)}, nil, true)
		if err != nil {
			return m, err
		}
	}
	defer client.stop()
	procs = append(procs, named{client.name, client})
	if _, err := client.readLine("READY"); err != nil {
		return m, err
	}
	before := map[string]procstat.Sample{}
	for _, p := range procs {
		before[p.name] = p.s.sample()
	}
	if _, err := fmt.Fprintln(client.in, "GO"); err != nil {
		return m, err
	}
	line, err := client.readLine("RESULT ")
	if err != nil {
		return m, err
	}
	for _, p := range procs {
		after := p.s.sample()
		m.Use[p.name] = procUse{CPU: after.CPU - before[p.name].CPU, RSS: after.RSS, PeakRSS: after.PeakRSS}
	}
	if err := json.Unmarshal([]byte(line), &m.Result); err != nil {
		return m, fmt.Errorf("client result %q: %w", line, err)
	}
	return m, nil
}

// ensureTopology creates the services' streams, consumers and buckets, as
// every service does at startup, and lets the events stream take batches
// for the batch designs.
func ensureTopology(ctx context.Context, url string, replicas int, batches bool) error {
	nc, js, err := connectJS(url, "gatewaybench-setup")
	if err != nil {
		return err
	}
	defer nc.Close()
	// A new cluster takes a moment to elect its meta leader.
	deadline := time.Now().Add(60 * time.Second)
	for {
		err = (bus.Topology{Replicas: replicas}).Ensure(ctx, js)
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err != nil {
		return err
	}
	if batches {
		return publish.AllowBatches(ctx, js, bus.StreamEvents)
	}
	return nil
}

// gatewayEnv is the gateway's configuration in the benchmark: defaults
// except what a benchmark must set.
func gatewayEnv(natsURL, homeserver string, replicas, api, admin int) []string {
	return []string{
		"CACTUS_NATS_REPLICAS=" + strconv.Itoa(replicas),
		"CACTUS_HS_TOKEN=" + hsToken,
		"CACTUS_AS_TOKEN=" + asToken,
		"CACTUS_HOMESERVER_URL=" + homeserver,
		"CACTUS_USER_ID=" + botID,
		"CACTUS_NATS_URL=" + natsURL,
		"CACTUS_LISTEN_ADDR=127.0.0.1:" + strconv.Itoa(api),
		"CACTUS_ADMIN_ADDR=127.0.0.1:" + strconv.Itoa(admin),
		"CACTUS_LOG_LEVEL=warn",
		"CACTUS_LOG_FORMAT=json",
	}
}

// startService starts one of our service binaries (or, with instead, the
// program and arguments it names) and waits until its /readyz says ready.
func startService(ctx context.Context, name, bin string, env []string, admin int, instead []string) (*proc, error) {
	var args []string
	if len(instead) > 0 {
		bin, args = instead[0], instead[1:]
	}
	p, err := start(name, bin, args, env, false)
	if err != nil {
		return nil, err
	}
	ready := fmt.Sprintf("http://127.0.0.1:%d/readyz", admin)
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(ready)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return p, nil
			}
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			p.stop()
			return nil, fmt.Errorf("%s not ready after 30 s", name)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func startGateway(ctx context.Context, b *binaries, natsURL string, replicas int) (*proc, string, error) {
	api, err := freePort()
	if err != nil {
		return nil, "", err
	}
	admin, err := freePort()
	if err != nil {
		return nil, "", err
	}
	// No homeserver: without CACTUS_APPSERVICE_ID the gateway does not
	// ping it, and transactions never call it.
	p, err := startService(ctx, "gateway", b.gateway, gatewayEnv(natsURL, "http://127.0.0.1:9", replicas, api, admin), admin, nil)
	if err != nil {
		return nil, "", err
	}
	return p, fmt.Sprintf("http://127.0.0.1:%d", api), nil
}

// ingest runs every scenario, rounds interleaved: in each round every
// design runs once, the floor first and the gateway right after it.
func ingest(ctx context.Context, b *binaries, o options) ([]measurement, error) {
	var all []measurement
	run := 0
	for _, sc := range scenarios(o.long) {
		if len(o.only) > 0 && !slices.Contains(o.only, sc.Name) {
			continue
		}
		for round := 1; round <= o.rounds; round++ {
			for _, design := range o.designs {
				run++
				m, err := measure(ctx, b, sc, design, o.replicas, round, run)
				if err != nil {
					return all, fmt.Errorf("%s, %s, round %d: %w", sc.Name, design, round, err)
				}
				fmt.Fprintf(os.Stderr, "  %-6s round %d %-8s %9.0f events/s  p50 %6.2f ms  p99 %6.2f ms\n",
					sc.Name, round, design, m.eventsPerSec(), ms(pct(m.Result.LatNS, .5)), ms(pct(m.Result.LatNS, .99)))
				all = append(all, m)
			}
		}
	}
	return all, nil
}

// sampler is anything whose CPU and memory can be read: a process, or a
// cluster of nats-servers added up.
type sampler interface{ sample() procstat.Sample }

type named struct {
	name string
	s    sampler
}
