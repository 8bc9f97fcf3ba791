package e2e

import (
	"fmt"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/cactus-comments/appservice/pkg/hssim"
	"github.com/cactus-comments/appservice/pkg/mxid"
	"github.com/cactus-comments/appservice/services/provisioner/provisioner"
)

// BenchmarkAliasQuery measures an alias query as the homeserver makes it:
// HTTP to the gateway, NATS request to a provisioner, createRoom on the
// simulator, the registry write, and back. The createRoom call's own
// duration, as the provisioner's client saw it in the same query, is
// reported beside it; the difference is what the service adds.
//
//	go test -run '^$' -bench BenchmarkAliasQuery -benchtime 2000x ./e2e/
func BenchmarkAliasQuery(b *testing.B) {
	h := Start(b, Options{Provisioners: -1, Memory: os.Getenv("CACTUS_BENCH_MEMORY") != ""})
	var (
		mu      sync.Mutex
		creates []time.Duration
	)
	h.StartProvisioner(provisioner.Options{Observe: func(endpoint string, status int, d time.Duration) {
		if endpoint == "createRoom" && status == http.StatusOK {
			mu.Lock()
			creates = append(creates, d)
			mu.Unlock()
		}
	}})
	owner := h.User("owner")
	h.RegisterSite("bench", owner)
	client := &http.Client{}
	query := func(i int) time.Duration {
		alias := h.CommentAlias("bench", "s"+strconv.Itoa(i)).String()
		req, err := http.NewRequestWithContext(h.Ctx, http.MethodGet, h.GatewayURL+"/_matrix/app/v1/rooms/"+url.PathEscape(alias), nil)
		if err != nil {
			b.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer "+testHSToken)
		start := time.Now()
		resp, err := client.Do(req)
		d := time.Since(start)
		if err != nil {
			b.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			b.Fatalf("alias query %s: HTTP %d", alias, resp.StatusCode)
		}
		return d
	}
	for i := range 50 { // warm connections and the registry
		query(-1 - i)
	}
	mu.Lock()
	creates = creates[:0]
	mu.Unlock()

	totals := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := range b.N {
		totals = append(totals, query(i))
	}
	b.StopTimer()
	mu.Lock()
	defer mu.Unlock()
	if len(creates) != len(totals) {
		b.Fatalf("%d createRoom calls for %d queries", len(creates), len(totals))
	}
	over := make([]time.Duration, len(totals))
	for i := range totals {
		over[i] = totals[i] - creates[i]
	}
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	b.ReportMetric(ms(pct(totals, 50)), "query-p50-ms")
	b.ReportMetric(ms(pct(totals, 99)), "query-p99-ms")
	b.ReportMetric(ms(pct(creates, 50)), "createRoom-p50-ms")
	b.ReportMetric(ms(pct(creates, 99)), "createRoom-p99-ms")
	b.ReportMetric(ms(pct(over, 50)), "overhead-p50-ms")
	b.ReportMetric(ms(pct(over, 99)), "overhead-p99-ms")
}

// pct is the p-th percentile (nearest rank); it sorts a copy.
func pct(ds []time.Duration, p int) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	i := (len(s)*p + 99) / 100
	return s[max(i-1, 0)]
}

// BenchmarkFanOut measures a ban in the moderation room of a site with
// many comment rooms, with the simulator adding 2 ms to every ban, until
// the last room has it, with 1, 2 and 4 provisioner replicas (each its own
// NATS connection and job lanes, in this one process).
//
//	go test -run '^$' -bench BenchmarkFanOut -benchtime 1x -timeout 30m ./e2e/
//
// CACTUS_BENCH_ROOMS (default 10000) and CACTUS_BENCH_CONCURRENCY (job
// lanes per replica, default 16 as in production) change the set-up.
func BenchmarkFanOut(b *testing.B) {
	rooms := envInt(b, "CACTUS_BENCH_ROOMS", 10000)
	lanes := envInt(b, "CACTUS_BENCH_CONCURRENCY", 16)
	h := Start(b, Options{Provisioners: -1, Concurrency: lanes})
	owner := h.User("owner")
	site := h.RegisterSite("huge", owner)
	start := time.Now()
	bulkRooms(b, h, site, rooms)
	b.Logf("%d comment rooms created in %v", rooms, time.Since(start).Round(time.Millisecond))
	settleForBenchmark(b, h)
	mod := mxid.MustRoomID(site.ModerationRoom)

	seq := 0
	eachReplicaCount(b, h, func(b *testing.B) map[string]float64 {
		seq++
		target := h.User(fmt.Sprintf("spammer%d", seq))
		base := h.HS.Calls(hssim.EPBan)
		t0 := time.Now()
		if err := owner.Client.Ban(h.Ctx, mod, target.ID, "spam"); err != nil {
			b.Fatal(err)
		}
		// One ban per comment room after the owner's own.
		h.WaitSim(func() bool { return h.HS.Calls(hssim.EPBan) >= base+1+rooms }, 10*time.Minute, "the fan-out")
		elapsed := time.Since(t0)
		return map[string]float64{"s/fanout": elapsed.Seconds(), "rooms/s": float64(rooms) / elapsed.Seconds()}
	})
}

// settleForBenchmark lets a provisioner clear what the set-up left (the
// rooms' creation events reach the moderation consumer too), so every run
// starts from an idle system, and then makes every ban cost the homeserver
// 2 ms, as its own work would.
func settleForBenchmark(b *testing.B, h *Harness) {
	warm := h.StartProvisioner(provisioner.Options{})
	h.Quiesce(5 * time.Minute)
	if err := warm.Stop(); err != nil {
		b.Fatal(err)
	}
	h.HS.SetLatency(hssim.EPBan, 2*time.Millisecond)
}

// eachReplicaCount runs round as a sub-benchmark with 1, 2 and 4
// provisioner replicas, letting the system settle between rounds. The
// metrics a round returns are reported as medians over the rounds (the
// machine is shared: single rounds swing), and logged round by round.
func eachReplicaCount(b *testing.B, h *Harness, round func(b *testing.B) map[string]float64) {
	for _, replicas := range []int{1, 2, 4} {
		b.Run(fmt.Sprintf("replicas=%d", replicas), func(b *testing.B) {
			var reps []*Service
			for range replicas {
				reps = append(reps, h.StartProvisioner(provisioner.Options{}))
			}
			values := map[string][]float64{}
			b.ResetTimer()
			for i := range b.N {
				m := round(b)
				b.StopTimer()
				b.Logf("round %d: %v", i+1, m)
				for unit, v := range m {
					values[unit] = append(values[unit], v)
				}
				h.Quiesce(5 * time.Minute)
				b.StartTimer()
			}
			b.StopTimer()
			for unit, vs := range values {
				slices.Sort(vs)
				b.ReportMetric(vs[len(vs)/2], unit)
			}
			for _, r := range reps {
				if err := r.Stop(); err != nil {
					b.Error(err)
				}
			}
		})
	}
}

func envInt(b *testing.B, name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		b.Fatalf("%s=%q: want a positive integer", name, v)
	}
	return n
}
