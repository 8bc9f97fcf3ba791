package botworker

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/cactus-comments/appservice/services/botworker/command"
)

// metrics are the botworker's own series; the consumer loop adds
// cactus_worker_* (messages by outcome, handling time).
type metrics struct {
	commands     *prometheus.CounterVec
	replyLatency *prometheus.HistogramVec
	handleTime   *prometheus.HistogramVec
	invites      *prometheus.CounterVec
	ignored      *prometheus.CounterVec
}

// Command outcomes.
const (
	outcomeOK          = "ok"            // answered (help, sites, hint)
	outcomeCreated     = "created"       // site registered
	outcomeRedelivered = "redelivered"   // a repeat of a handled command: replies deduplicated
	outcomeUsage       = "usage"         // malformed command, usage sent
	outcomeInvalid     = "invalid_name"  // site name refused before any homeserver call
	outcomeTaken       = "taken"         // site name in use
	outcomeOwned       = "already_owned" // the sender registered it before
	outcomeLimit       = "limit"         // per-user limit reached
	outcomeHSError     = "homeserver_error"
	outcomeSilent      = "silent" // not a command, not in a direct chat
	outcomeError       = "error"  // failed for good (dead-lettered)
)

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		commands: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cactus_bot_commands_total",
			Help: "Commands from site owners by kind (help, register, sites, unknown) and outcome.",
		}, []string{"command", "outcome"}),
		replyLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "cactus_bot_reply_duration_seconds",
			Help:    "Time from a command's origin_server_ts to the bot's reply being accepted by the homeserver, by command.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 16),
		}, []string{"command"}),
		handleTime: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "cactus_bot_command_duration_seconds",
			Help:    "Time the botworker spent handling one command, by command.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}, []string{"command"}),
		invites: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cactus_bot_invites_total",
			Help: "Invites of the bot by outcome (joined, rejected, failed).",
		}, []string{"outcome"}),
		ignored: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cactus_bot_ignored_total",
			Help: "Messages the bot did not treat as commands, by reason.",
		}, []string{"reason"}),
	}
	reg.MustRegister(m.commands, m.replyLatency, m.handleTime, m.invites, m.ignored)
	// Every label value an alert or dashboard uses exists at 0 from the
	// start, so increase() sees the first event after a restart.
	for _, o := range []string{"joined", "rejected", "failed"} {
		m.invites.WithLabelValues(o)
	}
	for _, r := range ignoreReasons {
		m.ignored.WithLabelValues(r)
	}
	for _, k := range []command.Kind{command.Help, command.Register, command.Sites, command.Unknown} {
		m.replyLatency.WithLabelValues(k.String())
		m.handleTime.WithLabelValues(k.String())
		for _, o := range []string{outcomeOK, outcomeCreated, outcomeRedelivered, outcomeUsage, outcomeInvalid, outcomeTaken, outcomeOwned, outcomeLimit, outcomeHSError, outcomeSilent, outcomeError} {
			m.commands.WithLabelValues(k.String(), o)
		}
	}
	return m
}
