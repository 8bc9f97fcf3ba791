package main

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

func ms(ns int64) float64 { return float64(ns) / float64(time.Millisecond) }

// pct is the p-quantile of ns (nearest rank), 0 for none.
func pct(ns []int64, p float64) int64 {
	if len(ns) == 0 {
		return 0
	}
	s := slices.Clone(ns)
	slices.Sort(s)
	return s[min(len(s)-1, int(p*float64(len(s))))]
}

func median(fs []float64) float64 {
	if len(fs) == 0 {
		return 0
	}
	s := slices.Clone(fs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// summary is one design on one scenario over every round.
type summary struct {
	Scenario, Design string
	Rounds           int
	EventsPerSec     float64 // median of rounds
	P50, P99         float64 // ms, medians of rounds
	// StreamEventsPerSec, ToStreamP50 and ToStreamP99: the same as the
	// event stream sees it (events stored, or for the gateway split,
	// from push to the transaction's last event stored); 0 for a design
	// that stores no events. ToStream is false when no measured
	// transaction held an event a worker reads (the gateway stores only
	// those).
	StreamEventsPerSec, ToStreamP50, ToStreamP99 float64
	ToStream                                     bool
	// Ratios are events/s against the floor of the same round, sorted.
	Ratios []float64
	// CPUPerEvent and RSS by process (nats-server, gateway, client):
	// medians of rounds, µs and MiB.
	CPUPerEvent, RSS map[string]float64
	Duplicates       int
	Fallbacks        int
}

// summarize groups measurements by scenario and design, in the order they
// were first measured.
func summarize(all []measurement) []summary {
	type key struct{ sc, d string }
	var order []key
	groups := map[key][]measurement{}
	floor := map[string]map[int]float64{} // scenario → round → events/s
	for _, m := range all {
		k := key{m.Scenario, m.Design}
		if _, ok := groups[k]; !ok {
			order = append(order, k)
		}
		groups[k] = append(groups[k], m)
		if m.Design == floorDesign {
			if floor[m.Scenario] == nil {
				floor[m.Scenario] = map[int]float64{}
			}
			floor[m.Scenario][m.Round] = m.eventsPerSec()
		}
	}
	var out []summary
	for _, k := range order {
		g := groups[k]
		s := summary{Scenario: k.sc, Design: k.d, Rounds: len(g), CPUPerEvent: map[string]float64{}, RSS: map[string]float64{}}
		var eps, p50, p99, seps, sp50, sp99 []float64
		cpu, rss := map[string][]float64{}, map[string][]float64{}
		for _, m := range g {
			eps = append(eps, m.eventsPerSec())
			p50 = append(p50, ms(pct(m.Result.LatNS, .5)))
			p99 = append(p99, ms(pct(m.Result.LatNS, .99)))
			if r := m.streamEventsPerSec(); r > 0 {
				seps = append(seps, r)
			}
			if len(m.ToStreamNS) > 0 {
				sp50 = append(sp50, ms(pct(m.ToStreamNS, .5)))
				sp99 = append(sp99, ms(pct(m.ToStreamNS, .99)))
			}
			if f, ok := floor[k.sc][m.Round]; ok && f > 0 {
				s.Ratios = append(s.Ratios, m.eventsPerSec()/f)
			}
			for name, u := range m.Use {
				cpu[name] = append(cpu[name], float64(u.CPU.Microseconds())/float64(m.Result.Events))
				rss[name] = append(rss[name], float64(u.RSS)/(1<<20))
			}
			s.Duplicates += m.Result.Duplicates
			s.Fallbacks += m.Result.Fallbacks
		}
		slices.Sort(s.Ratios)
		s.EventsPerSec, s.P50, s.P99 = median(eps), median(p50), median(p99)
		s.StreamEventsPerSec, s.ToStreamP50, s.ToStreamP99 = median(seps), median(sp50), median(sp99)
		s.ToStream = len(sp50) > 0
		for name := range cpu {
			s.CPUPerEvent[name], s.RSS[name] = median(cpu[name]), median(rss[name])
		}
		out = append(out, s)
	}
	return out
}

func (s summary) ratio() float64 { return median(s.Ratios) }

func percents(fs []float64) string {
	var parts []string
	for _, f := range fs {
		parts = append(parts, fmt.Sprintf("%.0f%%", 100*f))
	}
	return strings.Join(parts, " ")
}

// designNames are how the tables name the designs.
var designNames = map[string]string{
	"async":   "floor: nats.go async publish",
	"gateway": "**gateway**",
	"lean":    "lean publisher",
	"atomic":  "atomic batch",
	"fast":    "fast batch",
	"whole":   "one message per transaction",
}

// ingestTables renders one table per scenario.
func ingestTables(sums []summary, scs []scenario) string {
	var b strings.Builder
	for _, sc := range scs {
		var rows []summary
		for _, s := range sums {
			if s.Scenario == sc.Name {
				rows = append(rows, s)
			}
		}
		if len(rows) == 0 {
			continue
		}
		lat := "txn"
		if sc.Ban {
			lat = "ban txn"
		}
		fmt.Fprintf(&b, "\n**%s** (`%s`, %d measured transactions per sender, %d rounds):\n\n", sc.What, sc.Name, sc.Txns, rows[0].Rounds)
		fmt.Fprintf(&b, "| design | events/s | %s p50 | %s p99 | of floor, median | of floor, rounds | in the event stream: events/s · p50 · p99 | CPU µs/event: nats-server · service · load gen | RSS MiB: nats-server · service · load gen |\n", lat, lat)
		b.WriteString("|---|---|---|---|---|---|---|---|---|\n")
		for _, s := range rows {
			service := "client"
			loadgen := ""
			if s.Design == gatewayDesign {
				service, loadgen = "gateway", "client"
			}
			cpu := fmt.Sprintf("%.1f · %.1f", s.CPUPerEvent["nats-server"], s.CPUPerEvent[service])
			rss := fmt.Sprintf("%.0f · %.0f", s.RSS["nats-server"], s.RSS[service])
			if loadgen != "" {
				cpu += fmt.Sprintf(" · %.1f", s.CPUPerEvent[loadgen])
				rss += fmt.Sprintf(" · %.0f", s.RSS[loadgen])
			}
			med, rounds := fmt.Sprintf("%.0f%%", 100*s.ratio()), percents(s.Ratios)
			if sc.Ban {
				// Throughput is not what this scenario compares.
				med, rounds = "", ""
			}
			inStream := "not per event"
			switch {
			case s.StreamEventsPerSec > 0 && s.ToStream:
				inStream = fmt.Sprintf("%.0f · %.2f ms · %.2f ms", s.StreamEventsPerSec, s.ToStreamP50, s.ToStreamP99)
			case s.StreamEventsPerSec > 0:
				inStream = fmt.Sprintf("%.0f split · none a worker reads", s.StreamEventsPerSec)
			}
			fmt.Fprintf(&b, "| %s | %.0f | %.2f ms | %.2f ms | %s | %s | %s | %s | %s |\n",
				designNames[s.Design], s.EventsPerSec, s.P50, s.P99, med, rounds, inStream, cpu, rss)
		}
	}
	return strings.TrimLeft(b.String(), "\n")
}

func find(sums []summary, sc, design string) (summary, bool) {
	for _, s := range sums {
		if s.Scenario == sc && s.Design == design {
			return s, true
		}
	}
	return summary{}, false
}

// readmeRows are the README's performance rows that come from this run.
func readmeRows(sums []summary, alias *aliasSummary) string {
	var b strings.Builder
	b.WriteString("| what | result |\n|---|---|\n")
	if g, ok := find(sums, "100x1", gatewayDesign); ok {
		// Rates and latencies are medians over the rounds, each on its
		// own, so their quotient is not the ratio: say so.
		floor := ""
		if f, ok := find(sums, "100x1", floorDesign); ok {
			floor = "; the floor " + thousands(f.EventsPerSec) + " events/s; each a median over rounds"
		}
		fmt.Fprintf(&b, "| gateway, 100-event transactions, 1 in flight | %s events/s (p50 %.2f ms%s), %.0f%% of the JetStream async-publish floor (median of per-round ratios); CPU per event: gateway %.1f µs, nats-server %.1f µs |\n",
			thousands(g.EventsPerSec), g.P50, floor, 100*g.ratio(), g.CPUPerEvent["gateway"], g.CPUPerEvent["nats-server"])
	}
	if g, ok := find(sums, "100x4", gatewayDesign); ok {
		fmt.Fprintf(&b, "| gateway, 4 in flight | %s events/s, %.0f%% of the floor; RSS: gateway %.0f MiB, nats-server %.0f MiB |\n",
			thousands(g.EventsPerSec), 100*g.ratio(), g.RSS["gateway"], g.RSS["nats-server"])
	}
	if g, ok := find(sums, "1x1", gatewayDesign); ok {
		fmt.Fprintf(&b, "| gateway, 1-event transaction | p50 %.2f ms, p99 %.2f ms |\n", g.P50, g.P99)
	}
	if g, ok := find(sums, "ban", gatewayDesign); ok {
		fmt.Fprintf(&b, "| gateway, ban transaction acknowledged while 100-event transactions stream in | p50 %.2f ms, p99 %.2f ms |\n", g.P50, g.P99)
	}
	if alias != nil {
		fmt.Fprintf(&b, "| alias query overhead over createRoom (gateway, provisioner, nats-server in separate processes) | p50 %.2f ms, p99 %.2f ms; the same hops doing nothing, same run: p50 %.2f ms (ours over it, median of rounds: %.2f×) |\n",
			alias.OverP50, alias.OverP99, alias.Floor.OverP50, medianRatio(alias.Ratios))
	}
	return strings.TrimRight(b.String(), "\n")
}

func thousands(f float64) string {
	s := fmt.Sprintf("%.0f", f)
	var out []byte
	for i := range len(s) {
		if i > 0 && (len(s)-i)%3 == 0 {
			out = append(out, ',')
		}
		out = append(out, s[i])
	}
	return string(out)
}
