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
	// MaxDeliver bounds deliveries of one message before workers dead-letter
	// it. JetStream stops redelivering after one more, as a backstop.
	MaxDeliver int
	// Memory puts streams in memory (benchmarks of the pure code path);
	// production and dev use file storage.
	Memory bool
	// BotPartitions splits the bot's events by room (0: the default, 16);
	// see partitions.go.
	BotPartitions int
}

// AckWait is how long a worker may hold a message without signalling
// progress before JetStream redelivers it. Long jobs call InProgress.
const AckWait = 60 * time.Second

func (t Topology) storage() jetstream.StorageType {
	if t.Memory {
		return jetstream.MemoryStorage
	}
	return jetstream.FileStorage
}

func (t Topology) replicas() int { return max(t.Replicas, 1) }

func (t Topology) maxDeliver() int { return max(t.MaxDeliver, 1) }

// Streams returns the stream configurations.
func (t Topology) Streams() []jetstream.StreamConfig {
	return []jetstream.StreamConfig{
		{
			Name:        StreamEvents,
			Description: "Events pushed by the homeserver, deduplicated by event id",
			Subjects:    []string{SubjectEventsAll},
			Storage:     t.storage(),
			Replicas:    t.replicas(),
			Retention:   jetstream.LimitsPolicy,
			MaxAge:      7 * 24 * time.Hour,
			Duplicates:  DuplicateWindow,
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
			Duplicates:  DuplicateWindow,
			MaxMsgSize:  1 << 20,
		},
		{
			Name:        StreamDLQ,
			Description: "Messages that could not be processed, with the reason",
			Subjects:    []string{SubjectDLQAll},
			Storage:     t.storage(),
			Replicas:    t.replicas(),
			Retention:   jetstream.LimitsPolicy,
			MaxAge:      30 * 24 * time.Hour,
			Duplicates:  DuplicateWindow,
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
			// One more than the workers' own bound: workers dead-letter at
			// MaxDeliver; JetStream's limit only catches a worker that died
			// on the last delivery.
			MaxDeliver:    t.maxDeliver() + 1,
			MaxAckPending: maxAckPending,
			DeliverPolicy: jetstream.DeliverAllPolicy,
		}}
	}
	return append([]ConsumerSpec{
		c(StreamEvents, ConsumerBot, "Bot invites and commands", EventFilter(ClassBot), 512),
		// One at a time: moderation events are applied in the order the
		// homeserver sent them (invariant 5). Their work fans out as jobs.
		c(StreamEvents, ConsumerModeration, "Bans, unbans and power levels", EventFilter(ClassModeration), 1),
		c(StreamJobs, ConsumerJobs, "Per-room fan-out jobs", SubjectJobsAll, 1024),
		t.SplitterConsumer(),
	}, t.BotGroup().ConsumerSpecs()...)
}

// Buckets returns the key-value buckets of the registry.
func (t Topology) Buckets() []jetstream.KeyValueConfig {
	b := func(name, desc string) jetstream.KeyValueConfig {
		return jetstream.KeyValueConfig{Bucket: name, Description: desc, History: 1, Storage: t.storage(), Replicas: t.replicas()}
	}
	return append([]jetstream.KeyValueConfig{
		b(BucketSites, "Sites: owner, moderation room, power levels and bans"),
		b(BucketRooms, "Comment rooms by site and section"),
		b(BucketIndex, "Room id to site, for every room we manage"),
		b(BucketLimit, "Bot bookkeeping: registrations per user"),
	}, t.PartitionBucket(), t.SplitterBucket())
}

// Ensure creates or updates every stream, consumer and bucket. It is safe to
// run from every replica at once.
func (t Topology) Ensure(ctx context.Context, js jetstream.JetStream) error {
	for _, sc := range t.Streams() {
		if _, err := js.CreateOrUpdateStream(ctx, sc); err != nil {
			return fmt.Errorf("ensure stream %s: %w", sc.Name, err)
		}
	}
	for _, cs := range t.Consumers() {
		if _, err := js.CreateOrUpdateConsumer(ctx, cs.Stream, cs.Config); err != nil {
			return fmt.Errorf("ensure consumer %s: %w", cs.Config.Durable, err)
		}
	}
	for _, kc := range t.Buckets() {
		if _, err := js.CreateOrUpdateKeyValue(ctx, kc); err != nil {
			return fmt.Errorf("ensure bucket %s: %w", kc.Bucket, err)
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
