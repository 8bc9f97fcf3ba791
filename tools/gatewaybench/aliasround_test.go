package main

import (
	"strings"
	"testing"
	"time"
)

// q is a query that started at start ms, spent before ms until its
// createRoom, create ms in it and after ms after it.
func q(start, before, create, after float64) aliasSample {
	d := func(f float64) time.Duration { return time.Duration(f * float64(time.Millisecond)) }
	t0 := time.Unix(1_700_000_000, 0).Add(d(start))
	c0 := t0.Add(d(before))
	c1 := c0.Add(d(create))
	return aliasSample{Start: t0, Total: d(before + create + after), Create: [2]time.Time{c0, c1}}
}

func TestStatsOfSplitsOverheadAroundCreateRoom(t *testing.T) {
	st := statsOf([]aliasSample{q(0, 1, 5, 2), q(10, 2, 1, 1), q(20, 3, 9, 3)})
	// Overheads 3, 3, 6; the p50 is the middle one, not the query's time
	// minus the median createRoom (4 - 5 would be negative).
	for _, c := range []struct {
		name      string
		got, want float64
	}{
		{"query p50", st.QueryP50, 8}, {"query p99", st.QueryP99, 15},
		{"create p50", st.CreateP50, 5}, {"over p50", st.OverP50, 3}, {"over p99", st.OverP99, 6},
		{"before p50", st.BeforeP50, 2}, {"after p50", st.AfterP50, 2}, {"after p99", st.AfterP99, 3},
	} {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
}

func TestRoundRatiosPairBlocksOfTheSameRound(t *testing.T) {
	block := func(over ...float64) []aliasSample {
		var qs []aliasSample
		for i, o := range over {
			qs = append(qs, q(float64(10*i), o/2, 1, o/2))
		}
		return qs
	}
	// Round 2 ran on a busy machine: both paths slow, the ratio as in
	// round 1. Pooled p50s (floor 1, ours 2.5) would hide that.
	floor := [][]aliasSample{block(1, 1, 1), block(4, 4, 4), block(1, 1, 1)}
	ours := [][]aliasSample{block(2, 2, 2), block(8, 8, 9), block(3, 3, 3)}
	rs, err := roundRatios(floor, ours)
	if err != nil {
		t.Fatal(err)
	}
	want := []roundRatio{{1, 2}, {4, 8}, {1, 3}}
	for i := range want {
		if rs[i] != want[i] {
			t.Fatalf("rounds %v, want %v", rs, want)
		}
	}
	if got := medianRatio(rs); got != 2 {
		t.Errorf("median ratio %v, want 2", got)
	}
	if _, err := roundRatios(floor, ours[:2]); err == nil {
		t.Error("blocks that do not pair up were accepted")
	}
	if (roundRatio{Floor: 0, Ours: 1}).ratio() != 0 {
		t.Error("a floor of zero gave a ratio")
	}
}

func TestAliasTableShowsFloorAndRounds(t *testing.T) {
	a := &aliasSummary{Queries: 100, Rounds: 2, Block: 50,
		pathStats: pathStats{OverP50: 2.5}, Floor: pathStats{OverP50: 0.8},
		Ratios: []roundRatio{{1, 3}, {0.5, 1}},
		CPU:    map[string]float64{"relay-gateway": 123}, RSS: map[string]float64{}}
	out := a.table()
	for _, want := range []string{"| **overhead** (query minus createRoom, query by query) | **2.50 ms** |", "| **0.80 ms** |",
		"median **2.50×**; in round order: 3.00× 2.00×", "relay gateway 123 µs", "2 rounds of 50 floor queries then 50 of ours"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	if row := readmeRows(nil, a); !strings.Contains(row, "doing nothing, same run: p50 0.80 ms (ours over it, median of rounds: 2.50×)") {
		t.Errorf("README row: %s", row)
	}
}
