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
	refused        *prometheus.CounterVec
	upgrades       *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		aliasQueries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cactus_provisioner_alias_queries_total",
			Help: "Alias queries answered, by outcome (created, exists, unknown_site, not_comment_room, error).",
		}, []string{"outcome"}),
		aliasLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "cactus_provisioner_alias_query_duration_seconds",
			Help: "Time to answer one alias query, homeserver calls included.",
			// Up to 33 s: past the gateway's default 20 s wait.
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 17),
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
			Help: "Moderation events by what was done (ban, unban, power_levels, upgrade, alias, echo, ignored; deferred: an attempt at power levels set in a moderation room the bot cannot read yet, retried until it can while the last snapshot stays in force; duplicate: handled before, found by its done marker).",
		}, []string{"action"}),
		registryMisses: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cactus_provisioner_registry_fallbacks_total",
			Help: "Registry misses resolved from the homeserver, by result (imported, absent).",
		}, []string{"result"}),
	}
	m.refused = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "cactus_provisioner_moderation_refused_total",
		Help: "Bans and unbans not applied in a room because its rules forbid them to anyone (reason creator: a creator of a room of version 12 or later), by action.",
	}, []string{"action", "reason"})
	m.upgrades = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "cactus_provisioner_room_upgrades_total",
		Help: "Upgraded rooms of sites followed, by kind (moderation, comment) and outcome (joined: the bot is in the replacement; not_joined: it could not join, the site's owner was told; refused: the tombstone named a room that is no upgrade of the room, not followed).",
	}, []string{"kind", "outcome"})
	for _, a := range []string{"ban", "unban"} {
		m.refused.WithLabelValues(a, "creator")
	}
	for _, k := range []string{"moderation", "comment"} {
		for _, o := range []string{"joined", "not_joined", "refused"} {
			m.upgrades.WithLabelValues(k, o)
		}
	}
	m.moderation.WithLabelValues("deferred")
	reg.MustRegister(m.aliasQueries, m.aliasLatency, m.roomsCreated,
		m.jobsPublished, m.jobs, m.plSkipped, m.moderation, m.registryMisses, m.refused, m.upgrades)
	// Every label value an alert or dashboard uses exists at 0 from the
	// start, so increase() sees the first event after a restart.
	for _, o := range []string{"created", "exists", "unknown_site", "not_comment_room", "error", "bad_request"} {
		m.aliasQueries.WithLabelValues(o)
	}
	for _, k := range []string{KindMember, KindPower, KindSync, KindResolve} {
		m.jobsPublished.WithLabelValues(k)
		for _, o := range []string{"done", "noop", "retried", "failed"} {
			m.jobs.WithLabelValues(k, o)
		}
	}
	for _, a := range []string{"ban", "unban", "power_levels", "upgrade", "alias", "echo", "ignored", "deferred", "duplicate"} {
		m.moderation.WithLabelValues(a)
	}
	for _, r := range []string{"imported", "absent"} {
		m.registryMisses.WithLabelValues(r)
	}
	return m
}

// registerPending exports the jobs still to do as a gauge read at scrape
// time: the progress of every fan-out in flight, whichever replica runs it.
// When NATS cannot say, the sample is left out of the scrape rather than
// given a made-up value: a query then sees no data, not a number.
func (m *metrics) registerPending(reg prometheus.Registerer, pending func(context.Context) (uint64, error)) {
	reg.MustRegister(&pendingCollector{
		desc: prometheus.NewDesc("cactus_provisioner_jobs_pending",
			"Fan-out jobs waiting or running, all replicas together; absent from a scrape when NATS could not tell.", nil, nil),
		pending: pending,
	})
}

type pendingCollector struct {
	desc    *prometheus.Desc
	pending func(context.Context) (uint64, error)
}

func (c *pendingCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *pendingCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if n, err := c.pending(ctx); err == nil {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(n))
	}
}
