// Command gatewaybench measures the system as it runs in production: every
// piece in its own process. It builds nats-server (the version go.mod
// requires) and our service binaries, and runs:
//
//   - ingest: the gateway binary fed by a load generator process, against
//     publishers that store the same workload straight into JetStream from
//     a process of their own (the floor: one nats.go connection,
//     PublishMsgAsync with Nats-Msg-Id; and the alternative publish
//     designs of package publish). Rounds are interleaved, every
//     measurement gets a fresh nats-server, and the CPU and memory of
//     every process are read from /proc.
//   - alias: alias queries through the gateway and a provisioner, with the
//     homeserver simulator as the homeserver, and what they cost over
//     createRoom, against a floor in the same run: the same hops through
//     relays of this binary doing nothing, in rounds interleaved with them.
//   - dupwindow: nats-server's memory after millions of events for several
//     duplicate windows.
//
// With -write it regenerates the tables of docs/benchmarks.md and the
// README's performance rows (make bench-report).
//
// Usage:
//
//	go run ./tools/gatewaybench                  # ingest and alias, a few minutes
//	go run ./tools/gatewaybench -long -write     # longer runs, the duplicate window too
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"
)

type options struct {
	rounds   int
	replicas int
	only     []string // scenario names; empty: all
	profile  string   // directory for the alias run's CPU profiles
	// quietRooms: the simulator does not push the new rooms' events to the
	// gateway (alias), to show what ingesting them costs the queries.
	quietRooms bool
	long       bool
	designs    []string
	parts      []string
	write      bool
	root       string
}

func main() {
	child := flag.String("child", "", "internal: run as a client process (loadgen or publish), a profiled service (serve) or a relay of the alias floor (relay-gateway, relay-provisioner)")
	url := flag.String("url", "", "internal: gateway URL for -child loadgen, createRoom URL for -child relay-provisioner")
	listen := flag.String("listen", "", "internal: address -child relay-gateway listens on")
	bodyFile := flag.String("body", "", "internal: file holding the createRoom body -child relay-provisioner sends")
	natsURL := flag.String("nats", "", "internal: NATS URL for -child publish and the relays")
	design := flag.String("design", "", "internal: publish design for -child publish")
	specJSON := flag.String("spec", "", "internal: workload of a client process")
	serviceName := flag.String("service", "", "internal: service for -child serve (gateway or provisioner)")
	cpuProfile := flag.String("cpuprofile", "", "internal: CPU profile file for -child serve")
	rounds := flag.Int("rounds", 0, "rounds of every ingest scenario (default 3, 5 with -long)")
	long := flag.Bool("long", false, "longer runs, and the duplicate-window measurement (about an hour on a busy machine)")
	designs := flag.String("designs", "async,gateway,lean,atomic,fast,whole", "ingest designs, the floor (async) first")
	parts := flag.String("parts", "", "what to run: ingest, alias, dupwindow (default ingest,alias; with -long all)")
	replicas := flag.Int("replicas", 1, "ingest: nats-servers in the JetStream cluster and replicas of the streams (1 or 3)")
	only := flag.String("scenarios", "", "ingest scenarios to run (100x1, 100x4, 1x1, ban; default all)")
	profile := flag.String("profile", "", "write CPU profiles into this directory: alias runs profile the gateway, the provisioner and nats-server; ingest runs the gateway, one profile per scenario and round")
	quietRooms := flag.Bool("quiet-rooms", false, "alias: the homeserver does not push the new rooms' events to the gateway (shows what ingesting them costs the queries; not written to the docs)")
	write := flag.Bool("write", false, "write the results into docs/benchmarks.md and README.md")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if *child == "serve" {
		os.Exit(serveProfiled(*serviceName, *cpuProfile))
	}
	if relay := map[string]func() error{
		"relay-gateway":     func() error { return relayGateway(ctx, *listen, *natsURL) },
		"relay-provisioner": func() error { return relayProvisioner(ctx, *natsURL, *url, *bodyFile) },
	}[*child]; relay != nil {
		if err := relay(); err != nil {
			fail(err)
		}
		return
	}
	if *child != "" {
		var sp spec
		if err := json.Unmarshal([]byte(*specJSON), &sp); err != nil {
			fail(fmt.Errorf("bad -spec: %w", err))
		}
		var err error
		switch *child {
		case "loadgen":
			err = runClient(ctx, sp, loadClient(*url, hsToken))
		case "publish":
			err = runClient(ctx, sp, publisherClient(*natsURL, *design, botID))
		default:
			err = fmt.Errorf("unknown -child %q", *child)
		}
		if err != nil {
			fail(err)
		}
		return
	}
	o := options{quietRooms: *quietRooms, profile: *profile, rounds: *rounds, replicas: *replicas, only: split(*only), long: *long, designs: split(*designs), parts: split(*parts), write: *write}
	if o.rounds == 0 {
		o.rounds = 3
		if o.long {
			o.rounds = 5
		}
	}
	if len(o.parts) == 0 {
		o.parts = []string{"ingest", "alias"}
		if o.long {
			o.parts = append(o.parts, "dupwindow")
		}
	}
	if len(o.designs) == 0 || o.designs[0] != floorDesign {
		fail(fmt.Errorf("-designs must start with the floor, %q", floorDesign))
	}
	if err := Run(ctx, o); err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "gatewaybench:", err)
	os.Exit(1)
}

func split(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// results is everything one run measured.
type results struct {
	Started, Config string
	Ingest          []summary
	Alias           *aliasSummary
	DupWindow       []dupResult
}

// Run builds the binaries and runs the parts o asks for.
func Run(ctx context.Context, o options) error {
	b, err := build(ctx)
	if err != nil {
		return err
	}
	defer b.remove()
	res := results{
		Started: time.Now().UTC().Format("2006-01-02"),
		Config: fmt.Sprintf("%s, %s, GOMAXPROCS %d on %d cores, %s at the start",
			version(b.natsServer), runtime.Version(), runtime.GOMAXPROCS(0), runtime.NumCPU(), loadavg()),
	}
	fmt.Fprintln(os.Stderr, "gatewaybench:", res.Config)
	if slices.Contains(o.parts, "ingest") {
		ms, err := ingest(ctx, b, o)
		if err != nil {
			return err
		}
		res.Ingest = summarize(ms)
		fmt.Println(ingestTables(res.Ingest, scenarios(o.long)))
	}
	if slices.Contains(o.parts, "alias") {
		a, err := aliasBench(ctx, b, o)
		if err != nil {
			return err
		}
		res.Alias = a
		fmt.Println(a.table())
	}
	if slices.Contains(o.parts, "dupwindow") {
		d, err := dupWindow(ctx, b, o)
		if err != nil {
			return err
		}
		res.DupWindow = d
		fmt.Println(dupTable(d))
	}
	end := loadavg()
	fmt.Fprintf(os.Stderr, "gatewaybench: %s at the end\n", end)
	// Whatever else ran meanwhile shows in both.
	res.Config += ", " + end + " at the end"
	if o.write && o.quietRooms {
		return errors.New("-quiet-rooms measures an experiment; its results are not written to the docs")
	}
	if o.write {
		return writeDocs(res, o)
	}
	return nil
}

func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "load average unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "load average unknown"
	}
	return "load average " + strings.Join(f[:3], " ")
}
