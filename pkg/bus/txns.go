package bus

import (
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// The gateway acknowledges a homeserver transaction once its events are
// stored as transaction messages: the events array cut into chunks of at
// most one message each, {"events":[...]}, on SubjectTxns in StreamTxns,
// deduplicated by a hash of the chunk's bytes. One gateway replica at a
// time, the splitter, reads them in order and publishes every event to its
// event subject (EventSubject, one message per event) before
// acknowledging the transaction message, which the work queue then
// deletes. The splitter is a partitioned consumer group of one partition
// (pkg/partition): its replicas are hot standbys, and its lease lives in a
// bucket of its own, shorter than the workers', so that a dead splitter is
// replaced sooner.

const (
	// StreamTxns holds the transactions not split yet.
	StreamTxns = "CACTUS_TXNS"
	// SubjectTxns carries transaction messages.
	SubjectTxns = "cactus.txn"
	// GroupSplitter is the splitter's group: one partition, consumed by
	// gateway-splitter-p00.
	GroupSplitter = "gateway-splitter"
	// BucketSplitter holds the splitter group's members and claim.
	BucketSplitter = "cactus_splitter"
	// SplitterAckWait is how long the splitter may hold a transaction
	// message without signalling progress. It bounds, with the lease,
	// how long a dead splitter's transactions wait for the next one.
	SplitterAckWait = 10 * time.Second
	// MaxTxnsUnsplit bounds the transactions waiting for the splitter:
	// beyond it the gateway answers 503 and the homeserver keeps them.
	MaxTxnsUnsplit = 1_000_000
	// splitterMaxAckPending bounds the transaction messages the splitter
	// holds (its pipeline).
	splitterMaxAckPending = 256
)

// TxnStream is the stream of transaction messages: a work queue (a
// message leaves once split), never aged out (an unsplit transaction is
// an acknowledged one), and refusing new messages when full, so that the
// homeserver holds on to them.
func (t Topology) TxnStream() jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:        StreamTxns,
		Description: "Homeserver transactions stored and not yet split into the event stream",
		Subjects:    []string{SubjectTxns},
		Storage:     t.storage(),
		Replicas:    t.replicas(),
		Retention:   jetstream.WorkQueuePolicy,
		MaxMsgs:     MaxTxnsUnsplit,
		Discard:     jetstream.DiscardNew,
		// As long as the event stream's: a transaction retried after it
		// is split again, and its events, forgotten by the event stream
		// too, are stored again and recognised by their done markers.
		Duplicates: t.duplicates(),
		MaxMsgSize: 1 << 20,
	}
}

// SplitterGroup is the splitter's partitioned consumer group: one
// partition, so exactly one replica splits at a time and in stream order.
func (t Topology) SplitterGroup() PartitionGroup {
	return PartitionGroup{
		Name: GroupSplitter, Stream: StreamTxns, Partitions: 1,
		Bucket: BucketSplitter, PriorityGroup: PartitionPriorityGroup,
		AckWait: SplitterAckWait, PinnedTTL: PinnedTTL(SplitterAckWait),
		MaxAckPending: splitterMaxAckPending,
		// Never given up: a transaction message is events acknowledged to
		// the homeserver. The splitter dead-letters what it cannot route
		// and retries the rest in place.
		MaxDeliver: -1,
	}
}

// SplitterConsumer is the durable consumer of the splitter's partition.
func (t Topology) SplitterConsumer() ConsumerSpec {
	spec := t.SplitterGroup().ConsumerSpecs()[0]
	spec.Config.Description = "The splitter: transactions to the event stream, one gateway at a time"
	spec.Config.FilterSubject = SubjectTxns
	// The replica that stored a transaction message usually splits it
	// too, from its own copy: JetStream need not send the bytes back.
	spec.Config.HeadersOnly = true
	return spec
}

// SplitterBucket is the bucket of the splitter group's members and claim,
// with a lease that covers SplitterAckWait as pkg/partition requires.
func (t Topology) SplitterBucket() jetstream.KeyValueConfig {
	lease := LeaseTTL(SplitterAckWait)
	return jetstream.KeyValueConfig{
		Bucket:         BucketSplitter,
		Description:    "Members of the gateway's splitter group and its claim",
		History:        1,
		TTL:            lease,
		LimitMarkerTTL: lease,
		Storage:        t.storage(),
		Replicas:       t.replicas(),
	}
}
