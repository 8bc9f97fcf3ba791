package partition

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the partition metrics of a service, by group.
type Metrics struct {
	owned   *prometheus.GaugeVec
	members *prometheus.GaugeVec
	events  *prometheus.CounterVec
	release *prometheus.HistogramVec
}

// Events counted in cactus_partition_events_total.
var events = []string{
	"acquired",          // this member claimed a partition and started consuming it
	"released",          // it stopped consuming one and handed it over
	"lost",              // its claim was gone: another member owns the partition
	"fenced",            // it could not refresh its claim in time and stopped
	"overrun",           // a consumer took longer than the grace period to stop
	"consume_restarted", // a consumer failed and was started again
}

// NewMetrics registers the partition metrics in reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := newMetrics()
	reg.MustRegister(m.owned, m.members, m.events, m.release)
	return m
}

// Init makes a group's series exist, at 0, before its member first runs:
// an alert on too few owned partitions sees the replica from its first
// scrape.
func (m *Metrics) Init(group string) { m.group(group) }

func newMetrics() *Metrics {
	return &Metrics{
		owned: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "cactus_partition_owned",
			Help: "Partitions this replica consumes, by group.",
		}, []string{"group"}),
		members: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "cactus_partition_members",
			Help: "Live members this replica sees in its group, itself included.",
		}, []string{"group"}),
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cactus_partition_events_total",
			Help: "Partition handovers and incidents, by group and event (acquired, released, lost, fenced, overrun, consume_restarted).",
		}, []string{"group", "event"}),
		release: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "cactus_partition_release_duration_seconds",
			Help:    "Time from asking a partition's consumer to stop to the partition being handed over.",
			Buckets: prometheus.ExponentialBuckets(0.01, 2, 14),
		}, []string{"group"}),
	}
}

// groupMetrics are the metrics of one group; a Member without Metrics
// counts into unregistered ones.
type groupMetrics struct {
	owned, members prometheus.Gauge
	events         map[string]prometheus.Counter
	release        prometheus.Observer
}

func (m *Metrics) group(name string) *groupMetrics {
	if m == nil {
		m = newMetrics()
	}
	g := &groupMetrics{
		owned:   m.owned.WithLabelValues(name),
		members: m.members.WithLabelValues(name),
		events:  map[string]prometheus.Counter{},
		release: m.release.WithLabelValues(name),
	}
	// Every series exists from the start, at 0, for alerts on increase.
	for _, e := range events {
		g.events[e] = m.events.WithLabelValues(name, e)
	}
	return g
}

func (g *groupMetrics) event(e string) { g.events[e].Inc() }
