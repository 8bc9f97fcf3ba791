package gateway

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/cactus-comments/appservice/pkg/bus"
	"github.com/cactus-comments/appservice/pkg/partition"
)

// Transaction outcomes, the label values of transactions_total.
const (
	outcomeOK          = "ok"
	outcomeNotJSON     = "not_json"
	outcomeBadJSON     = "bad_json"
	outcomeTooLarge    = "too_large"
	outcomeUnavailable = "unavailable"
	outcomeBadRequest  = "bad_request"
	outcomeBusy        = "busy"
)

// Query outcomes, the label values of alias_queries_total and
// user_queries_total.
const (
	queryExists      = "exists"
	queryNotFound    = "not_found"
	queryNotOurs     = "not_ours"
	queryInvalid     = "invalid"
	queryUnavailable = "unavailable"
)

type metrics struct {
	transactions     *prometheus.CounterVec
	txnOK            prometheus.Counter
	txnInFlight      prometheus.Gauge
	txnDuration      prometheus.Histogram
	txnEvents        prometheus.Histogram
	eventsPublished  map[bus.Class]prometheus.Counter
	eventsIgnored    [len(ignoredKinds)]prometheus.Counter
	splitUnconfirmed prometheus.Counter
	eventsRepeated   prometheus.Counter
	deadLettered     prometheus.Counter
	publishFailures  *prometheus.CounterVec
	aliasQueries     *prometheus.CounterVec
	aliasDuration    *prometheus.HistogramVec
	userQueries      *prometheus.CounterVec
	userDuration     prometheus.Histogram
	authFailures     *prometheus.CounterVec
	pings            prometheus.Counter
	homeserverPinged *prometheus.GaugeVec

	txnMessagesStored, txnMessagesDuplicate prometheus.Counter

	// The splitter's.
	splitState    *prometheus.GaugeVec
	splitBacklog  prometheus.Gauge
	splitDelay    prometheus.Histogram
	txnsSplit     prometheus.Counter
	splitFailures prometheus.Counter
	splitReads    *prometheus.CounterVec
	partitions    *partition.Metrics
}

func newMetrics(reg prometheus.Registerer, bodies *bodyBudget) (*metrics, error) {
	const ns, sub = "cactus", "gateway"
	m := &metrics{
		transactions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "transactions_total",
			Help: "Transactions from the homeserver by outcome (ok: every event stored in a transaction message or dead-lettered; not_json, bad_json: the body is no transaction and was stored whole as one dead letter, acknowledged; busy: refused, too many bodies in flight).",
		}, []string{"outcome"}),
		txnDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: ns, Subsystem: sub, Name: "transaction_duration_seconds",
			Help:    "Time from request to answer of a transaction, whatever the outcome.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}),
		txnInFlight: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: ns, Subsystem: sub, Name: "transactions_in_flight",
			Help: "Transactions being received or stored right now.",
		}),
		txnEvents: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: ns, Subsystem: sub, Name: "transaction_events",
			Help:    "Events per transaction.",
			Buckets: []float64{0, 1, 2, 5, 10, 25, 50, 100, 250, 1000},
		}),
		splitUnconfirmed: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "split_unconfirmed_total",
			Help: "Events the splitter sent without an ack and could not confirm as stored (JetStream refused one of a transaction's, or NATS failed mid-transaction); sent again with acks, so some may be stored twice.",
		}),
		splitState: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: ns, Subsystem: sub, Name: "splitter_state",
			Help: "1 for this replica's splitter state: standby (another replica splits), active (this one splits), failing (this one splits and events cannot be stored; retrying).",
		}, []string{"state"}),
		splitBacklog: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: ns, Subsystem: sub, Name: "split_backlog_transactions",
			Help: "Transactions stored and not yet split into the event stream, as the active splitter last saw them (0 on standby replicas).",
		}),
		splitDelay: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: ns, Subsystem: sub, Name: "split_duration_seconds",
			Help:    "Time from a transaction stored to its last event stored in the event stream: what workers wait beyond the homeserver's 200.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300},
		}),
		txnsSplit: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "transactions_split_total",
			Help: "Transaction messages whose every event is stored in the event stream (or dead-lettered).",
		}),
		splitReads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "split_reads_total",
			Help: "Transaction messages the splitter took the bytes of: from this replica's own copy (handoff) or, stored by another replica, from the stream (one NATS round trip each).",
		}, []string{"from"}),
		splitFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "split_failures_total",
			Help: "Attempts of the splitter that left events unstored (NATS down or slow, the event stream refusing); the transaction is held and retried.",
		}),
		eventsRepeated: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "events_repeated_in_transaction_total",
			Help: "Events whose id appeared earlier in the same transaction: stored once if identical, dead-lettered if not.",
		}),
		deadLettered: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "events_dead_lettered_total",
			Help: "Events stored in the dead-letter stream instead of the event stream: malformed, ambiguous, or refused for good by JetStream.",
		}),
		publishFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "publish_failures_total",
			Help: "Transactions not stored (answered 503): NATS disconnected, an ack timed out, or JetStream refused a transaction message or dead letter.",
		}, []string{"reason"}),
		aliasQueries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "alias_queries_total",
			Help: "Alias queries by outcome (not_ours and invalid are answered without NATS).",
		}, []string{"outcome"}),
		aliasDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: ns, Subsystem: sub, Name: "alias_query_duration_seconds",
			Help:    "Time to answer an alias query, by outcome.",
			Buckets: []float64{.0001, .001, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, []string{"outcome"}),
		userQueries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "user_queries_total",
			Help: "User queries by outcome.",
		}, []string{"outcome"}),
		userDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: ns, Subsystem: sub, Name: "user_query_duration_seconds",
			Help:    "Time to answer a user query.",
			Buckets: []float64{.00001, .0001, .001, .01, .1},
		}),
		authFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "auth_failures_total",
			Help: "Requests refused for a missing or wrong homeserver token.",
		}, []string{"reason"}),
		pings: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "pings_total",
			Help: "Pings received from the homeserver.",
		}),
		homeserverPinged: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: ns, Subsystem: sub, Name: "startup_ping",
			Help: "State of the startup ping through the homeserver: 1 for the current result (pending, ok, unsupported, unreachable, homeserver_down, failed, skipped), 0 for the others.",
		}, []string{"result"}),
	}
	published := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: ns, Subsystem: sub, Name: "events_published_total",
		Help: "Events the splitter stored in the event stream (duplicates included), by class.",
	}, []string{"class"})
	txnMessages := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: ns, Subsystem: sub, Name: "transaction_messages_total",
		Help: "Transaction messages acknowledged by JetStream, by outcome (stored, duplicate: an identical retry).",
	}, []string{"outcome"})
	m.txnMessagesStored, m.txnMessagesDuplicate = txnMessages.WithLabelValues("stored"), txnMessages.WithLabelValues("duplicate")
	for _, st := range splitStates {
		m.splitState.WithLabelValues(st)
	}
	m.eventsPublished = map[bus.Class]prometheus.Counter{}
	for _, c := range []bus.Class{bus.ClassBot, bus.ClassModeration} {
		m.eventsPublished[c] = published.WithLabelValues(string(c))
	}
	ignored := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: ns, Subsystem: sub, Name: "events_ignored_total",
		Help: "Events no worker reads, acknowledged to the homeserver, which keeps them, and not stored in the event stream, by kind: comment (a message in a comment or moderation room), bot (the bot's own replies, bans and power levels), membership (visitors joining and leaving), other.",
	}, []string{"kind"})
	for i, k := range ignoredKinds {
		m.eventsIgnored[i] = ignored.WithLabelValues(k)
	}
	for _, o := range []string{outcomeOK, outcomeNotJSON, outcomeBadJSON, outcomeTooLarge, outcomeUnavailable, outcomeBadRequest, outcomeBusy} {
		m.transactions.WithLabelValues(o)
	}
	m.txnOK = m.transactions.WithLabelValues(outcomeOK)
	inFlight := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: ns, Subsystem: sub, Name: "body_bytes_in_flight",
		Help: "Request body bytes the gateway holds right now, at most CACTUS_BODY_BYTES_IN_FLIGHT (beyond it transactions get 503, outcome busy).",
	}, func() float64 { return float64(bodies.held.Load()) })
	for _, r := range pingResults {
		m.homeserverPinged.WithLabelValues(r)
	}
	// Every label value an alert or dashboard uses exists at 0 from the
	// start, so increase() sees the first failure after a restart.
	for _, r := range []string{"disconnected", "publish", "dead_letter", "refused", "timeout"} {
		m.publishFailures.WithLabelValues(r)
	}
	for _, r := range []string{"missing", "wrong"} {
		m.authFailures.WithLabelValues(r)
	}
	m.splitReads.WithLabelValues("handoff")
	m.splitReads.WithLabelValues("stream")
	for _, o := range []string{queryExists, queryNotFound, queryNotOurs, queryInvalid, queryUnavailable} {
		m.aliasQueries.WithLabelValues(o)
		m.aliasDuration.WithLabelValues(o)
		m.userQueries.WithLabelValues(o)
	}
	for _, c := range []prometheus.Collector{
		inFlight, m.transactions, m.txnInFlight, m.txnDuration, m.txnEvents, published, ignored, m.splitUnconfirmed, m.eventsRepeated, m.deadLettered,
		m.publishFailures, m.aliasQueries, m.aliasDuration, m.userQueries, m.userDuration,
		m.authFailures, m.pings, m.homeserverPinged, txnMessages,
		m.splitState, m.splitBacklog, m.splitDelay, m.txnsSplit, m.splitFailures, m.splitReads,
	} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("gateway metrics: %w", err)
		}
	}
	m.partitions = partition.NewMetrics(reg)
	m.partitions.Init(bus.GroupSplitter)
	return m, nil
}
