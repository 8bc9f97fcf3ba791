package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"slices"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/cactus-comments/appservice/pkg/bus"
	"github.com/cactus-comments/appservice/pkg/registry"
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
	// ToStreamNS is, per measured transaction (the latency senders')
	// holding an event a worker reads, the time from its push to its last
	// such event stored in the event stream; StreamEndNS when the last
	// measured event was stored, or for the gateway SplitNS, when every
	// transaction was split (Unix ns). Empty for the design that stores
	// no events.
	ToStreamNS  []int64
	StreamEndNS int64
	SplitNS     int64
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

// streamEventsPerSec is the rate at which the measured events reached the
// event stream: what workers see.
func (m measurement) streamEventsPerSec() float64 {
	end := max(m.StreamEndNS, m.SplitNS)
	if end == 0 {
		return 0
	}
	return float64(m.Result.Events) / time.Duration(end-m.Result.StartNS).Seconds()
}

// storesEvents: the design puts each event in the event stream (the
// whole-transaction prototype stores one message per transaction).
func storesEvents(design string) bool { return design != "whole" }

// measure runs one design on one scenario with fresh processes: a new
// nats-server (so that every measurement starts from the same empty
// duplicate window), the gateway if measured, and the client.
func measure(ctx context.Context, b *binaries, o options, sc scenario, design string, round, run int) (measurement, error) {
	replicas := o.replicas
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
		var instead []string
		if o.profile != "" {
			// -profile: the gateway runs with a CPU profile of its own per
			// measurement, gateway-<scenario>-r<round>.prof.
			instead = []string{b.self, "-child", "serve", "-service", "gateway",
				"-cpuprofile", fmt.Sprintf("%s/gateway-%s-r%d.prof", o.profile, sc.Name, round)}
		}
		gw, api, err := startGateway(ctx, b, ns.url, replicas, instead)
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
	if err := json.Unmarshal([]byte(line), &m.Result); err != nil {
		return m, fmt.Errorf("client result %q: %w", line, err)
	}
	// The gateway acknowledges before the events reach the event stream:
	// the measurement ends, and CPU is read, once every transaction is
	// split (every event a worker reads is there); for the floor, once
	// every event is there.
	switch {
	case design == gatewayDesign:
		if m.SplitNS, err = waitSplit(ctx, ns.url); err != nil {
			return m, err
		}
	case storesEvents(design):
		if err := waitStored(ctx, ns.url, uint64(m.Result.Sent)); err != nil {
			return m, err
		}
	}
	for _, p := range procs {
		after := p.s.sample()
		m.Use[p.name] = procUse{CPU: after.CPU - before[p.name].CPU, RSS: after.RSS, PeakRSS: after.PeakRSS}
	}
	if storesEvents(design) {
		if err := m.readStored(ctx, ns.url, sc); err != nil {
			return m, err
		}
	}
	return m, nil
}

// waitSplit waits until the transaction stream is empty: every
// transaction split, its events stored or ignored. It returns when it
// saw that (Unix ns; it asks every 5 ms).
func waitSplit(ctx context.Context, url string) (int64, error) {
	err := waitStream(ctx, url, bus.StreamTxns, func(msgs uint64) error {
		if msgs == 0 {
			return nil
		}
		return fmt.Errorf("%d transactions not split", msgs)
	})
	return time.Now().UnixNano(), err
}

// waitStored waits until the event stream holds n messages.
func waitStored(ctx context.Context, url string, n uint64) error {
	return waitStream(ctx, url, bus.StreamEvents, func(msgs uint64) error {
		if msgs >= n {
			return nil
		}
		return fmt.Errorf("the event stream holds %d events, want %d,", msgs, n)
	})
}

// waitStream asks every 5 ms how many messages stream holds until done
// says nil about it, for at most five minutes.
func waitStream(ctx context.Context, url, stream string, done func(msgs uint64) error) error {
	nc, js, err := connectJS(url, "gatewaybench-wait")
	if err != nil {
		return err
	}
	defer nc.Close()
	deadline := time.Now().Add(5 * time.Minute)
	for {
		s, err := js.Stream(ctx, stream)
		if err != nil {
			return err
		}
		info, err := s.Info(ctx)
		if err != nil {
			return err
		}
		err = done(info.State.Msgs)
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%w five minutes after the last acknowledgement", err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// readStored reads when each event was stored (the stream's own
// timestamps, headers only) and derives, per measured transaction of the
// latency senders, the time from push to its last event stored, and when
// the last measured event was stored.
func (m *measurement) readStored(ctx context.Context, url string, sc scenario) error {
	nc, js, err := connectJS(url, "gatewaybench-read")
	if err != nil {
		return err
	}
	defer nc.Close()
	s, err := js.Stream(ctx, bus.StreamEvents)
	if err != nil {
		return err
	}
	info, err := s.Info(ctx)
	if err != nil {
		return err
	}
	// What the gateway stores: the events a worker reads. The floor
	// stores every event.
	read := map[int]bool(nil)
	if m.Design == gatewayDesign {
		if read, err = sc.spec.read(botID); err != nil {
			return err
		}
	}
	c, err := js.OrderedConsumer(ctx, bus.StreamEvents, jetstream.OrderedConsumerConfig{HeadersOnly: true})
	if err != nil {
		return err
	}
	last := map[int]int64{} // transaction (sender*1e6 + number) → its last event stored
	for range info.State.Msgs {
		msg, err := c.Next(jetstream.FetchMaxWait(30 * time.Second))
		// In a cluster the consumer's leader may not listen yet right
		// after it was created: its pulls have no responders for a moment.
		for try := 0; errors.Is(err, nats.ErrNoResponders) && try < 100; try++ {
			time.Sleep(100 * time.Millisecond)
			msg, err = c.Next(jetstream.FetchMaxWait(30 * time.Second))
		}
		if err != nil {
			return fmt.Errorf("reading the event stream back: %w", err)
		}
		md, err := msg.Metadata()
		if err != nil {
			return err
		}
		id, err := strconv.Atoi(msg.Headers().Get(bus.HeaderTxnID))
		if err != nil {
			return fmt.Errorf("event without a transaction number: %w", err)
		}
		last[id] = max(last[id], md.Timestamp.UnixNano())
	}
	for s, pushes := range m.Result.PushNS {
		for i, push := range pushes {
			key := s*1_000_000 + sc.Warmup + i
			if read != nil && !read[key] {
				if _, ok := last[key]; ok {
					return fmt.Errorf("transaction %d of sender %d: an event no worker reads stored", sc.Warmup+i, s)
				}
				continue
			}
			stored, ok := last[key]
			if !ok {
				return fmt.Errorf("transaction %d of sender %d acknowledged, none of its events stored", sc.Warmup+i, s)
			}
			m.StreamEndNS = max(m.StreamEndNS, stored)
			if !sc.Ban || s == 0 {
				m.ToStreamNS = append(m.ToStreamNS, stored-push)
			}
		}
	}
	return nil
}

// ensureTopology creates the services' streams, consumers and buckets, as
// every service does at startup, registers the site whose rooms the
// events are posted in, and lets the events stream take batches for the
// batch designs.
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
	// The rooms the events are posted in are a site's comment rooms, as
	// the provisioner records them.
	reg, err := registry.Open(ctx, js)
	if err != nil {
		return err
	}
	for _, r := range siteRooms() {
		if err := reg.PutRoom(ctx, r); err != nil {
			return err
		}
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

// startGateway starts the gateway binary, or instead (a binary and its
// arguments) if given, and waits until it is ready.
func startGateway(ctx context.Context, b *binaries, natsURL string, replicas int, instead []string) (*proc, string, error) {
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
	p, err := startService(ctx, "gateway", b.gateway, gatewayEnv(natsURL, "http://127.0.0.1:9", replicas, api, admin), admin, instead)
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
				m, err := measure(ctx, b, o, sc, design, round, run)
				if err != nil {
					return all, fmt.Errorf("%s, %s, round %d: %w", sc.Name, design, round, err)
				}
				fmt.Fprintf(os.Stderr, "  %-6s round %d %-8s %9.0f events/s  p50 %6.2f ms  p99 %6.2f ms  to the event stream: %9.0f events/s  p50 %6.2f ms  p99 %6.2f ms\n",
					sc.Name, round, design, m.eventsPerSec(), ms(pct(m.Result.LatNS, .5)), ms(pct(m.Result.LatNS, .99)),
					m.streamEventsPerSec(), ms(pct(m.ToStreamNS, .5)), ms(pct(m.ToStreamNS, .99)))
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
