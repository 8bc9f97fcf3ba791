package matrix

import (
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics counts homeserver calls by endpoint and status, and follows
// whether the homeserver answers at all. One per service registry; its
// Observe method is the Config.Observe hook of every client of the
// service.
type Metrics struct {
	requests    *prometheus.CounterVec
	duration    *prometheus.HistogramVec
	unreachable prometheus.Gauge

	mu         sync.Mutex
	downSince  time.Time // zero while the homeserver answers
	lastStatus int
	now        func() time.Time
}

// NewMetrics registers the homeserver call metrics in reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cactus_homeserver_requests_total",
			Help: "Homeserver client-server API calls by endpoint and HTTP status (0: no response).",
		}, []string{"endpoint", "status"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "cactus_homeserver_request_duration_seconds",
			Help:    "Latency of homeserver calls by endpoint, per attempt.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}, []string{"endpoint"}),
		unreachable: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "cactus_homeserver_unreachable",
			Help: "1 while the last homeserver call got no answer (connection refused, timeout, 502, 503, 504): work waits to be retried; 0 once it answers.",
		}),
		now: time.Now,
	}
	reg.MustRegister(m.requests, m.duration, m.unreachable)
	return m
}

// Observe records one attempt; it has the signature of Config.Observe.
func (m *Metrics) Observe(endpoint string, status int, d time.Duration) {
	m.requests.WithLabelValues(endpoint, strconv.Itoa(status)).Inc()
	m.duration.WithLabelValues(endpoint).Observe(d.Seconds())
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	if !noAnswer(status) {
		// An answer to a request sent before the homeserver stopped
		// answering (a slow one, observed late) says nothing about now.
		if !m.downSince.IsZero() && now.Add(-d).Before(m.downSince) {
			return
		}
		m.lastStatus = status
		m.downSince = time.Time{}
		m.unreachable.Set(0)
		return
	}
	m.lastStatus = status
	if m.downSince.IsZero() {
		m.downSince = now
	}
	m.unreachable.Set(1)
}

// noAnswer reports an attempt that says nothing about the request, only
// that the homeserver (or its proxy) did not handle it: no response at
// all, or a gateway error.
func noAnswer(status int) bool {
	switch status {
	case 0, http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return true
	}
	return false
}

// Unreachable reports whether the homeserver has not answered since the
// last call it did answer, since when, and the status of the last attempt
// (0: no response).
func (m *Metrics) Unreachable() (since time.Time, lastStatus int, down bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.downSince, m.lastStatus, !m.downSince.IsZero()
}
