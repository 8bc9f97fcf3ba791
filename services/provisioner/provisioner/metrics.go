package provisioner

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the provisioner's own counters; consumer-level outcomes come
// from worker.Metrics.
type metrics struct {
	aliasQueries   *prometheus.CounterVec
	aliasLatency   prometheus.Histogram
	roomsCreated   prometheus.Counter
	jobsPublished  *prometheus.CounterVec
	jobs           *prometheus.CounterVec
	plSkipped      prometheus.Counter
	moderation     *prometheus.CounterVec
	registryMisses *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		aliasQueries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cactus_provisioner_alias_queries_total",
			Help: "Alias queries answered, by outcome (created, exists, unknown_site, not_comment_room, error).",
		}, []string{"outcome"}),
		aliasLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "cactus_provisioner_alias_query_seconds",
			Help:    "Time to answer one alias query, homeserver calls included.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}),
		roomsCreated: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "cactus_provisioner_rooms_created_total",
			Help: "Comment rooms created by this replica.",
		}),
		jobsPublished: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cactus_provisioner_fanout_jobs_published_total",
			Help: "Fan-out jobs published (one per room), by kind.",
		}, []string{"kind"}),
		jobs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cactus_provisioner_fanout_jobs_total",
			Help: "Fan-out jobs handled by kind and outcome (done, noop, retried, failed).",
		}, []string{"kind", "outcome"}),
		plSkipped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "cactus_provisioner_power_level_changes_skipped_total",
			Help: "Power level changes the bot was not allowed to make in a comment room.",
		}),
		moderation: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cactus_provisioner_moderation_events_total",
			Help: "Moderation events by what was done (ban, unban, power_levels, echo, ignored; duplicate: handled before, found by its done marker).",
		}, []string{"action"}),
		registryMisses: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cactus_provisioner_registry_fallbacks_total",
			Help: "Registry misses resolved from the homeserver, by result (imported, absent).",
		}, []string{"result"}),
	}
	reg.MustRegister(m.aliasQueries, m.aliasLatency, m.roomsCreated,
		m.jobsPublished, m.jobs, m.plSkipped, m.moderation, m.registryMisses)
	for _, a := range []string{"ban", "unban", "power_levels", "echo", "ignored", "duplicate"} {
		m.moderation.WithLabelValues(a)
	}
	for _, k := range []string{KindMember, KindPower, KindSync, KindResolve} {
		m.jobsPublished.WithLabelValues(k)
		for _, o := range []string{"done", "noop", "retried", "failed"} {
			m.jobs.WithLabelValues(k, o)
		}
	}
	return m
}

// registerPending exports the jobs still to do as a gauge read at scrape
// time: the progress of every fan-out in flight, whichever replica runs it.
func (m *metrics) registerPending(reg prometheus.Registerer, pending func(context.Context) (uint64, error)) {
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "cactus_provisioner_jobs_pending",
		Help: "Fan-out jobs waiting or running, all replicas together (-1: unknown).",
	}, func() float64 {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		n, err := pending(ctx)
		if err != nil {
			return -1
		}
		return float64(n)
	}))
}
