package bus

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Topology carries the few settings of the topology that differ between a
// laptop and a cluster. Everything else is fixed here.
type Topology struct {
	// Replicas of every stream and bucket: 1 for an embedded server, 3 for
	// a JetStream cluster.
	Replicas int
	// Memory puts streams in memory (benchmarks of the pure code path);
	// production and dev use file storage.
	Memory bool
	// BotPartitions splits the bot's events by room (0: the default, 16);
	// see partitions.go.
	BotPartitions int
	// Duplicates overrides DuplicateWindow (tests of what happens after
	// it).
	Duplicates time.Duration
}

// AckWait is how long a worker may hold a message without signalling
// progress before JetStream redelivers it. Workers signal progress for
// every message they hold (running, queued behind its key, or waiting to
// be retried) every third of it, so it only decides how soon the messages
// of a replica that died come back: within seconds.
const AckWait = 15 * time.Second

func (t Topology) storage() jetstream.StorageType {
	if t.Memory {
		return jetstream.MemoryStorage
	}
	return jetstream.FileStorage
}

func (t Topology) replicas() int { return max(t.Replicas, 1) }

func (t Topology) duplicates() time.Duration {
	if t.Duplicates > 0 {
		return t.Duplicates
	}
	return DuplicateWindow
}

// Streams returns the stream configurations.
func (t Topology) Streams() []jetstream.StreamConfig {
	return []jetstream.StreamConfig{
		{
			Name:        StreamEvents,
			Description: "Events pushed by the homeserver, one message per event, on a subject per room",
			Subjects:    []string{SubjectEventsAll},
			Storage:     t.storage(),
			Replicas:    t.replicas(),
			Retention:   jetstream.LimitsPolicy,
			MaxAge:      7 * 24 * time.Hour,
			Duplicates:  t.duplicates(),
			MaxMsgSize:  1 << 20,
			Discard:     jetstream.DiscardOld,

			// Stores each bot event under its partition.
			SubjectTransform: t.BotGroup().SubjectTransform(),
		},
		{
			Name:        StreamJobs,
			Description: "Fan-out jobs: one room of one site each",
			Subjects:    []string{SubjectJobsAll},
			Storage:     t.storage(),
			Replicas:    t.replicas(),
			Retention:   jetstream.WorkQueuePolicy,
			MaxAge:      7 * 24 * time.Hour,
			Duplicates:  t.duplicates(),
			MaxMsgSize:  1 << 20,
		},
		{
			Name:        StreamDLQ,
			Description: "Messages that could not be processed, with the reason",
			Subjects:    []string{SubjectDLQAll},
			Storage:     t.storage(),
			Replicas:    t.replicas(),
			Retention:   jetstream.LimitsPolicy,
			MaxAge:      DoneTTL,
			Duplicates:  t.duplicates(),
			MaxMsgSize:  1 << 20,
		},
		t.TxnStream(),
	}
}

// ConsumerSpec is a durable consumer and the stream it reads.
type ConsumerSpec struct {
	Stream string
	Config jetstream.ConsumerConfig
}

// Consumers returns the durable consumers every worker kind shares.
func (t Topology) Consumers() []ConsumerSpec {
	c := func(stream, name, desc, filter string, maxAckPending int) ConsumerSpec {
		return ConsumerSpec{Stream: stream, Config: jetstream.ConsumerConfig{
			Durable:       name,
			Description:   desc,
			FilterSubject: filter,
			AckPolicy:     jetstream.AckExplicitPolicy,
			AckWait:       AckWait,
			// JetStream never gives up on a message by itself: it would
			// stop redelivering without a dead letter. Workers decide,
			// by time (CACTUS_RETRY_HORIZON), and dead-letter.
			MaxDeliver:    -1,
			MaxAckPending: maxAckPending,
			DeliverPolicy: jetstream.DeliverAllPolicy,
		}}
	}
	return append([]ConsumerSpec{
		// Many at a time: a site's decisions are ordered by the data (each
		// carries the stream sequence of the event that made it, and an
		// older one never overwrites a newer one), not by serialising
		// every site behind one message. Their work fans out as jobs.
		c(StreamEvents, ConsumerModeration, "Bans, unbans and power levels", EventFilter(ClassModeration), 1024),
		// Messages waiting for a delayed redelivery (a rate-limited or
		// unreachable site) count as pending: the bound must leave room
		// for a whole site's fan-out waiting while other sites' jobs run.
		c(StreamJobs, ConsumerJobs, "Per-room fan-out jobs", SubjectJobsAll, 100_000),
		t.SplitterConsumer(),
	}, t.BotGroup().ConsumerSpecs()...)
}

// Buckets returns the key-value buckets of the registry.
func (t Topology) Buckets() []jetstream.KeyValueConfig {
	b := func(name, desc string) jetstream.KeyValueConfig {
		return jetstream.KeyValueConfig{Bucket: name, Description: desc, History: 1, Storage: t.storage(), Replicas: t.replicas()}
	}
	ttl := func(c jetstream.KeyValueConfig, d time.Duration) jetstream.KeyValueConfig {
		c.TTL = d
		return c
	}
	return append([]jetstream.KeyValueConfig{
		b(BucketSites, "Sites: owner, moderation room, power levels and bans"),
		b(BucketRooms, "Comment rooms by site and section"),
		b(BucketIndex, "Room id to site, for every room we manage"),
		b(BucketLimit, "Bot bookkeeping: registrations per user"),
		ttl(b(BucketDone, "Events the bot and moderation consumers finished, by consumer and event id"), DoneTTL),
		ttl(b(BucketStatus, "Each service replica's last report: homeserver reachability, messages waiting to retry"), StatusTTL),
	}, t.PartitionBucket(), t.SplitterBucket())
}

// Ensure creates or updates every stream, consumer and bucket that is
// missing or differs from the declaration (see ensure.go). It is safe to
// run from every replica at once.
func (t Topology) Ensure(ctx context.Context, js jetstream.JetStream) error {
	for _, sc := range t.Streams() {
		if err := ensureStream(ctx, js, sc); err != nil {
			return err
		}
	}
	for _, cs := range t.Consumers() {
		if err := ensureConsumer(ctx, js, cs); err != nil {
			return err
		}
	}
	for _, kc := range t.Buckets() {
		if err := ensureBucket(ctx, js, kc); err != nil {
			return err
		}
	}
	return nil
}

// Check reports what is missing from the topology without changing it.
func (t Topology) Check(ctx context.Context, js jetstream.JetStream) error {
	var errs []error
	for _, sc := range t.Streams() {
		if _, err := js.Stream(ctx, sc.Name); err != nil {
			errs = append(errs, fmt.Errorf("stream %s: %w", sc.Name, err))
		}
	}
	for _, cs := range t.Consumers() {
		if _, err := js.Consumer(ctx, cs.Stream, cs.Config.Durable); err != nil {
			errs = append(errs, fmt.Errorf("consumer %s: %w", cs.Config.Durable, err))
		}
	}
	for _, kc := range t.Buckets() {
		if _, err := js.KeyValue(ctx, kc.Bucket); err != nil {
			errs = append(errs, fmt.Errorf("bucket %s: %w", kc.Bucket, err))
		}
	}
	return errors.Join(errs...)
}
