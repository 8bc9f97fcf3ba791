package main

import (
	"fmt"
	"time"
)

// aliasSample is one alias query as the homeserver saw it.
type aliasSample struct {
	Start time.Time
	Total time.Duration
	// Create is the createRoom call inside it: when the homeserver's
	// handler started and when it had answered.
	Create [2]time.Time
}

// pathStats are one path's percentiles over its queries, in ms.
type pathStats struct {
	// Query: the whole alias query as the homeserver saw it; Create: the
	// createRoom call inside it, as the homeserver served it; Over: the
	// difference, query by query.
	QueryP50, QueryP99, CreateP50, CreateP99, OverP50, OverP99 float64
	// Before and After split the overhead: from the query's start to
	// createRoom's, and from createRoom's answer to the query's.
	BeforeP50, BeforeP99, AfterP50, AfterP99 float64
}

func overhead(q aliasSample) time.Duration { return q.Total - q.Create[1].Sub(q.Create[0]) }

func statsOf(qs []aliasSample) pathStats {
	var tot, cre, over, pre, post []int64
	for _, q := range qs {
		tot = append(tot, int64(q.Total))
		cre = append(cre, int64(q.Create[1].Sub(q.Create[0])))
		over = append(over, int64(overhead(q)))
		pre = append(pre, int64(q.Create[0].Sub(q.Start)))
		post = append(post, int64(q.Start.Add(q.Total).Sub(q.Create[1])))
	}
	p := func(v []int64, q float64) float64 { return ms(pct(v, q)) }
	return pathStats{
		QueryP50: p(tot, .5), QueryP99: p(tot, .99),
		CreateP50: p(cre, .5), CreateP99: p(cre, .99),
		OverP50: p(over, .5), OverP99: p(over, .99),
		BeforeP50: p(pre, .5), BeforeP99: p(pre, .99),
		AfterP50: p(post, .5), AfterP99: p(post, .99),
	}
}

// roundRatio is one round: the p50 overheads of its floor block and of
// the block through our services that followed it, in ms.
type roundRatio struct{ Floor, Ours float64 }

func (r roundRatio) ratio() float64 {
	if r.Floor <= 0 {
		return 0
	}
	return r.Ours / r.Floor
}

// roundRatios pairs the i-th floor block with the i-th block of ours.
func roundRatios(floor, ours [][]aliasSample) ([]roundRatio, error) {
	if len(floor) != len(ours) {
		return nil, fmt.Errorf("%d floor blocks for %d of ours", len(floor), len(ours))
	}
	out := make([]roundRatio, len(ours))
	for i := range ours {
		out[i] = roundRatio{Floor: statsOf(floor[i]).OverP50, Ours: statsOf(ours[i]).OverP50}
	}
	return out, nil
}

// medianRatio is the median of the rounds' ours/floor ratios.
func medianRatio(rs []roundRatio) float64 {
	var fs []float64
	for _, r := range rs {
		fs = append(fs, r.ratio())
	}
	return median(fs)
}
