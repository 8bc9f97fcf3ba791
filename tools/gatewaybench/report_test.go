package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cactus-comments/appservice/tools/gatewaybench/docsync"
)

// TestReadmeMatchesBenchmarks: the README's performance rows are the ones
// the last `make bench-report` wrote into docs/benchmarks.md.
func TestReadmeMatchesBenchmarks(t *testing.T) {
	read := func(rel string) string {
		b, err := os.ReadFile(filepath.Join("..", "..", rel))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	doc, err := docsync.Block(read(benchDoc), "summary")
	if err != nil {
		t.Fatal(err)
	}
	rm, err := docsync.Block(read(readme), "summary")
	if err != nil {
		t.Fatal(err)
	}
	if doc != rm {
		t.Errorf("README.md's performance rows differ from docs/benchmarks.md's; run make bench-report\nREADME:\n%s\ndocs:\n%s", rm, doc)
	}
	if strings.TrimSpace(doc) == "" {
		t.Error("no performance rows")
	}
}

func m(sc, design string, round int, events int, wall time.Duration, lat ...time.Duration) measurement {
	r := clientResult{WallNS: int64(wall), Events: events}
	for _, l := range lat {
		r.LatNS = append(r.LatNS, int64(l))
	}
	return measurement{Scenario: sc, Design: design, Round: round, Result: r,
		Use: map[string]procUse{"nats-server": {CPU: time.Duration(events) * 10 * time.Microsecond, RSS: 64 << 20}}}
}

func TestSummarizeRatiosPerRound(t *testing.T) {
	all := []measurement{
		// Round 1: a slow machine, both slow; round 2 fast.
		m("s", "async", 1, 1000, time.Second, time.Millisecond),
		m("s", "gateway", 1, 900, time.Second, 2*time.Millisecond),
		m("s", "async", 2, 4000, time.Second, time.Millisecond),
		m("s", "gateway", 2, 4400, time.Second, 3*time.Millisecond),
		m("s", "async", 3, 2000, time.Second, time.Millisecond),
		m("s", "gateway", 3, 2000, time.Second, 4*time.Millisecond),
	}
	sums := summarize(all)
	if len(sums) != 2 || sums[0].Design != "async" || sums[1].Design != "gateway" {
		t.Fatalf("summaries %+v", sums)
	}
	g := sums[1]
	// Per-round ratios 0.9, 1.1, 1.0: the median is 1.0 although the
	// medians of the throughputs alone would also give 2000/2000.
	want := []float64{0.9, 1.0, 1.1}
	for i, r := range g.Ratios {
		if d := r - want[i]; d > 1e-9 || d < -1e-9 {
			t.Fatalf("ratios %v, want %v", g.Ratios, want)
		}
	}
	if g.ratio() != 1.0 || g.EventsPerSec != 2000 || g.P50 != 3 {
		t.Errorf("ratio %v, events/s %v, p50 %v", g.ratio(), g.EventsPerSec, g.P50)
	}
	if g.CPUPerEvent["nats-server"] != 10 || g.RSS["nats-server"] != 64 {
		t.Errorf("cpu %v rss %v", g.CPUPerEvent, g.RSS)
	}
}

func TestPctAndMedian(t *testing.T) {
	if pct(nil, .5) != 0 || median(nil) != 0 {
		t.Error("empty input")
	}
	if got := pct([]int64{5, 1, 3, 2, 4}, .5); got != 3 {
		t.Errorf("p50 = %d", got)
	}
	if got := pct([]int64{5, 1, 3, 2, 4}, .99); got != 5 {
		t.Errorf("p99 = %d", got)
	}
	if got := median([]float64{4, 1, 3, 2}); got != 2.5 {
		t.Errorf("median = %v", got)
	}
	if got := thousands(1234567.4); got != "1,234,567" {
		t.Errorf("thousands = %q", got)
	}
}
