// Package bus declares the NATS topology of the service in one place:
// subjects, streams, consumers and key-value buckets, and ensures it
// idempotently at every service's startup.
//
// Subjects:
//
//	cactus.txn                      homeserver transactions, not yet split into
//	                                events (stream TXNS, work queue; txns.go)
//	cactus.ev.<class>.<room>        events from the homeserver (stream EVENTS)
//	cactus.ev.bot.<p>.<room>        how EVENTS stores the bot's events: p is the
//	                                room's partition (partitions.go)
//	cactus.job.<kind>.<site>.<room> fan-out jobs (stream JOBS, work queue);
//	                                a resolve job names an alias instead
//	cactus.dlq.<source>             dead letters (stream DLQ)
//	cactus.rpc.alias                alias queries, request/reply to provisioners
//
// <room>, <alias> and <site> are Tokens: base64url encodings, because room
// ids and site names hold '.', '*', '>', ':' and '!'.
package bus

import (
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Stream, consumer, bucket and subject names.
const (
	StreamEvents = "CACTUS_EVENTS"
	StreamJobs   = "CACTUS_JOBS"
	StreamDLQ    = "CACTUS_DLQ"

	SubjectEventsAll = "cactus.ev.>"
	SubjectJobsAll   = "cactus.job.>"
	SubjectDLQAll    = "cactus.dlq.>"

	// SubjectAliasQuery carries alias queries from gateways to the
	// provisioner queue group.
	SubjectAliasQuery = "cactus.rpc.alias"
	// QueueProvisioners is the queue group provisioners answer alias
	// queries in, so each query is answered once.
	QueueProvisioners = "provisioners"

	// Durable consumers. Each service kind shares one, so replicas split
	// the work and KEDA can scale on its lag; the botworker's are the
	// partition consumers of its group (partitions.go).
	ConsumerModeration = "provisioner-moderation"
	ConsumerJobs       = "provisioner-jobs"

	BucketSites = "cactus_sites"
	BucketRooms = "cactus_rooms"
	BucketIndex = "cactus_room_index"
	BucketLimit = "cactus_bot_state"
	// BucketDone holds a marker per event the bot and moderation
	// consumers have finished (see DoneTTL).
	BucketDone = "cactus_done"
	// BucketStatus holds what each service replica last reported about
	// itself (homeserver reachability, messages waiting to retry), for
	// cactusctl doctor. Entries expire StatusTTL after their last report.
	BucketStatus = "cactus_status"

	// DuplicateWindow is how long the event and transaction streams
	// remember message ids: an event the homeserver sends again within it
	// (a retried transaction) is not stored twice. Synapse retries a failed
	// transaction after 2, 4, 8 ... 512 s and then every 512 s for ever, so
	// an outage can outlast any window; correctness does not depend on it.
	// Events stored again after it are recognised by their done markers
	// (DoneTTL); the window only saves that work. Two minutes covers the
	// quick retries of a brief hiccup, and bounds what nats-server keeps
	// for it (an entry per message stored in the window, a few hundred
	// bytes each) to two minutes of traffic.
	DuplicateWindow = 2 * time.Minute

	// DoneTTL is how long a done marker is kept: far longer than any
	// homeserver outage an operator would sit through (Synapse keeps
	// retrying every 512 s for ever), so an event stored again after the
	// duplicate window still has no second effect. Dead letters are kept
	// as long, so a replay finds what it needs.
	DoneTTL = 30 * 24 * time.Hour

	// StatusTTL is how long a replica's status report outlives the
	// replica; replicas report every StatusEvery.
	StatusTTL   = 2 * time.Minute
	StatusEvery = 15 * time.Second
)

// Class routes an event to the workers that care about it.
type Class string

const (
	// ClassBot: invites to the bot and room messages (botworker).
	ClassBot Class = "bot"
	// ClassModeration: bans, unbans, kicks, power levels, canonical
	// aliases, tombstones (provisioner).
	ClassModeration Class = "mod"
	// ClassOther: everything else; kept for audit and future consumers.
	ClassOther Class = "other"
)

// Headers set on messages.
const (
	HeaderMsgID = "Nats-Msg-Id"
	// HeaderEventID is an event message's event id. It is not its
	// Nats-Msg-Id: the event stream keeps no duplicate window of event
	// ids (see txns.go).
	HeaderEventID   = "Cactus-Event-Id"
	HeaderTxnID     = "Cactus-Txn-Id"
	HeaderEventType = "Cactus-Event-Type"
	HeaderReason    = "Cactus-Dlq-Reason"
	HeaderSource    = "Cactus-Dlq-Subject"
	HeaderStream    = "Cactus-Dlq-Stream"
	HeaderConsumer  = "Cactus-Dlq-Consumer"
	HeaderDelivered = "Cactus-Dlq-Deliveries"
	HeaderFailedAt  = "Cactus-Dlq-Time"
	HeaderTruncated = "Cactus-Dlq-Truncated"
	// HeaderSequence is the failed message's sequence in HeaderStream.
	HeaderSequence = "Cactus-Dlq-Sequence"

	// A replayed dead letter carries where the original came from, so the
	// handler knows it is a replay (a forced full re-run, past any done
	// marker) and can order it by the original's place in the stream.
	HeaderReplayStream   = "Cactus-Replay-Stream"
	HeaderReplaySequence = "Cactus-Replay-Sequence"
	HeaderReplayConsumer = "Cactus-Replay-Consumer"
)

// emptyToken stands for the empty string: base64url never yields "=", so it
// cannot collide with a real encoding.
const emptyToken = "="

// Token encodes s for use as one subject token or key-value key part.
func Token(s string) string {
	if s == "" {
		return emptyToken
	}
	return base64.RawURLEncoding.EncodeToString([]byte(s))
}

// ParseToken reverses Token. It accepts only what Token produces: the
// decoder alone would also take non-canonical trailing bits and ignore line
// breaks, so that two keys could name the same string.
func ParseToken(t string) (string, error) {
	if t == emptyToken {
		return "", nil
	}
	if t == "" {
		return "", errors.New("bus: empty token")
	}
	for i := 0; i < len(t); i++ {
		c := t[i]
		if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return "", fmt.Errorf("bus: bad token %q: byte %#x is not base64url", t, c)
		}
	}
	b, err := base64.RawURLEncoding.Strict().DecodeString(t)
	if err != nil {
		return "", fmt.Errorf("bus: bad token %q: %w", t, err)
	}
	return string(b), nil
}

// EventSubject is where an event of class c in room roomID is published.
// One subject per room keeps per-room order visible to consumers.
func EventSubject(c Class, roomID string) string {
	return "cactus.ev." + string(c) + "." + Token(roomID)
}

// EventFilter is the subject filter for one class.
func EventFilter(c Class) string { return "cactus.ev." + string(c) + ".>" }

// RoomFromEventSubject extracts the room id from an event subject, as
// published (cactus.ev.<class>.<room>) or as stored with its partition
// (cactus.ev.<class>.<p>.<room>).
func RoomFromEventSubject(subject string) (string, error) {
	parts := strings.Split(subject, ".")
	if len(parts) < 4 || len(parts) > 5 || parts[0] != "cactus" || parts[1] != "ev" || parts[2] == "" {
		return "", fmt.Errorf("bus: not an event subject: %q", subject)
	}
	if len(parts) == 5 && !isPartition(parts[3]) {
		return "", fmt.Errorf("bus: bad partition %q in event subject %q", parts[3], subject)
	}
	return ParseToken(parts[len(parts)-1])
}

// isPartition accepts what the server's partition() mapping writes: a
// decimal number without sign or leading zero.
func isPartition(s string) bool {
	if s == "" || len(s) > 9 || (s[0] == '0' && len(s) > 1) {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// JobSubject is where a fan-out job of kind for one room of a site goes.
func JobSubject(kind, site, roomID string) string {
	return "cactus.job." + kind + "." + Token(site) + "." + Token(roomID)
}

// DLQSubject is where dead letters from source (a consumer or "gateway")
// go.
func DLQSubject(source string) string { return "cactus.dlq." + Token(source) }
