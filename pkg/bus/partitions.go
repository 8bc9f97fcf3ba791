package bus

import (
	"fmt"
	"hash/fnv"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// The bot's events are split into partitions by room, by JetStream itself:
// the event stream's subject transform stores cactus.ev.bot.<room> as
// cactus.ev.bot.<p>.<room>, p being the server's hash of the room token
// modulo the partition count. Each partition has its own durable consumer,
// and pkg/partition lets one replica at a time consume each partition: a
// room's events are handled one after another however many replicas run,
// and rooms of other partitions never wait for them.

const (
	// GroupBot is the partitioned consumer group of the bot's events. Its
	// partition consumers are botworker-p00, botworker-p01, …
	GroupBot = "botworker"
	// DefaultBotPartitions is the number of partitions of the bot's events
	// unless the topology says otherwise. It caps the replicas that can
	// share the bot's work: more replicas idle as hot standbys.
	DefaultBotPartitions = 16
	// PartitionPriorityGroup is the one priority group of every partition
	// consumer. The replica that owns a partition pulls through it and is
	// pinned: JetStream delivers the partition to that client only.
	PartitionPriorityGroup = "owner"
	// BucketPartitions holds the members of every partitioned consumer
	// group and their claims on partitions. Every key expires LeaseTTL
	// after its last write, so a dead replica's records vanish by
	// themselves.
	BucketPartitions = "cactus_partitions"
	// PartitionGrace bounds how long a replica takes to stop consuming a
	// partition it no longer owns: running handlers finish within it, the
	// rest goes back to JetStream.
	PartitionGrace = 10 * time.Second
	// partitionMaxAckPending bounds what the owner of one partition holds.
	partitionMaxAckPending = 64
	// RetiredConsumerBot is the single durable consumer of the bot's
	// events that versions before the partitions declared. Nothing
	// consumes it any more; `cactusctl topology migrate` moves what waits
	// in it to the partitions and deletes it.
	RetiredConsumerBot = "botworker"
)

// PinnedTTL is how long a partition consumer keeps its owner pinned after
// the owner's last pull request. It is a little above AckWait so that a
// dead owner's messages are back for redelivery before its pin lapses.
func PinnedTTL(ackWait time.Duration) time.Duration { return ackWait + 5*time.Second }

// LeaseTTL is how long a member's records in BucketPartitions outlive its
// last heartbeat. It must cover AckWait and PartitionGrace with room for
// a few heartbeats: pkg/partition refuses to run with less.
func LeaseTTL(ackWait time.Duration) time.Duration {
	return ackWait + PartitionGrace + 10*time.Second
}

// PartitionGroup declares a partitioned consumer group: one durable
// consumer per partition of the events of one class, all pinning their
// client in the same priority group.
type PartitionGroup struct {
	// Name names the group in BucketPartitions and prefixes its consumers.
	Name          string
	Stream        string
	Class         Class
	Partitions    int
	Bucket        string
	PriorityGroup string
	// AckWait and PinnedTTL of every partition consumer (AckWait ≤
	// PinnedTTL), MaxAckPending of each.
	AckWait, PinnedTTL time.Duration
	MaxAckPending      int
	MaxDeliver         int
}

// BotGroup is the partitioned consumer group of the bot's events.
func (t Topology) BotGroup() PartitionGroup {
	n := t.BotPartitions
	if n <= 0 {
		n = DefaultBotPartitions
	}
	return PartitionGroup{
		Name: GroupBot, Stream: StreamEvents, Class: ClassBot, Partitions: n,
		Bucket: BucketPartitions, PriorityGroup: PartitionPriorityGroup,
		AckWait: AckWait, PinnedTTL: PinnedTTL(AckWait),
		MaxAckPending: partitionMaxAckPending,
		// As for every consumer: JetStream never gives up on a message by
		// itself; the worker decides, by time, and dead-letters.
		MaxDeliver: -1,
	}
}

// Consumer is the durable consumer of partition p.
func (g PartitionGroup) Consumer(p int) string { return fmt.Sprintf("%s-p%02d", g.Name, p) }

// Filter is the subject filter of partition p.
func (g PartitionGroup) Filter(p int) string {
	return "cactus.ev." + string(g.Class) + "." + strconv.Itoa(p) + ".>"
}

// SubjectTransform makes the event stream store each event of the group's
// class under its partition. A stream has one transform, so one class can
// be partitioned this way.
func (g PartitionGroup) SubjectTransform() *jetstream.SubjectTransformConfig {
	return &jetstream.SubjectTransformConfig{
		Source:      "cactus.ev." + string(g.Class) + ".*",
		Destination: fmt.Sprintf("cactus.ev.%s.{{partition(%d,1)}}.{{wildcard(1)}}", g.Class, g.Partitions),
	}
}

// ConsumerSpecs are the group's durable consumers, one per partition.
func (g PartitionGroup) ConsumerSpecs() []ConsumerSpec {
	specs := make([]ConsumerSpec, g.Partitions)
	for p := range specs {
		specs[p] = ConsumerSpec{Stream: g.Stream, Config: jetstream.ConsumerConfig{
			Durable:        g.Consumer(p),
			Description:    fmt.Sprintf("Partition %d of %d of %s", p, g.Partitions, g.Name),
			FilterSubject:  g.Filter(p),
			AckPolicy:      jetstream.AckExplicitPolicy,
			AckWait:        g.AckWait,
			MaxDeliver:     g.MaxDeliver,
			MaxAckPending:  g.MaxAckPending,
			DeliverPolicy:  jetstream.DeliverAllPolicy,
			PriorityPolicy: jetstream.PriorityPolicyPinned,
			PriorityGroups: []string{g.PriorityGroup},
			PinnedTTL:      g.PinnedTTL,
		}}
	}
	return specs
}

// PartitionOf is the partition JetStream stores the events of roomID in,
// among n: the FNV-1a hash of the room's subject token, as the server's
// partition() mapping computes it.
func PartitionOf(roomID string, n int) int {
	h := fnv.New32a()
	_, _ = h.Write([]byte(Token(roomID)))
	return int(h.Sum32() % uint32(n))
}

// StoredSubject is the subject the event stream keeps an event of class c
// in room roomID under: EventSubject, with the partition inserted for the
// partitioned class.
func (t Topology) StoredSubject(c Class, roomID string) string {
	g := t.BotGroup()
	if c != g.Class {
		return EventSubject(c, roomID)
	}
	return "cactus.ev." + string(c) + "." + strconv.Itoa(PartitionOf(roomID, g.Partitions)) + "." + Token(roomID)
}

// PartitionBucket is the bucket of group members and partition claims.
func (t Topology) PartitionBucket() jetstream.KeyValueConfig {
	lease := LeaseTTL(AckWait)
	return jetstream.KeyValueConfig{
		Bucket:      BucketPartitions,
		Description: "Members of partitioned consumer groups and their claims on partitions",
		History:     1,
		TTL:         lease,
		// Expiry leaves a marker, so that watchers see a member vanish.
		LimitMarkerTTL: lease,
		Storage:        t.storage(),
		Replicas:       t.replicas(),
	}
}
