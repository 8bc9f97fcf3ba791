// Package partition runs a partitioned consumer group on NATS JetStream.
// A stream's messages are split into partitions by key (bus.PartitionGroup:
// the stream's subject transform puts every message of a key in the same
// partition, one durable consumer per partition, all pinning their client
// in one priority group). The replicas that are alive share the
// partitions, each partition consumed by one replica at a time: messages
// of one key are handled one at a time and in stream order however many
// replicas run, and keys of other partitions never wait for them.
//
// # How
//
// Every replica runs a Member with a unique instance name, in one bucket
// (bus.BucketPartitions) whose TTL, the lease, removes what a dead replica
// stops refreshing:
//
//   - Membership: <group>.members.<instance>, written every heartbeat. The
//     bucket's expiry leaves a marker, so every member's watch on
//     <group>.> sees a dead member go, as it sees joins and clean leaves
//     at once.
//   - Assignment: Assign, a pure function of the live members, tells each
//     member which partitions it should own.
//   - Claims: a member consumes partition p only while it holds the claim
//     <group>.claims.<p>: created with compare-and-set (so one member
//     holds it), refreshed every heartbeat with compare-and-set on its
//     revision, deleted when the member hands the partition over, and
//     expiring with the lease if the member dies. The assignment says who
//     should own a partition; the claim says who does.
//   - Handover: the old owner cancels consume's context, waits for consume
//     to return, unpins the partition's priority group
//     (Stream.UnpinConsumer), then deletes its claim. The new owner sees
//     the claim go, creates its own, unpins (a pin left by a dead owner),
//     and calls consume, whose first pull gets it pinned at once rather
//     than after PinnedTTL.
//
// # Why order holds
//
//  1. Claims are exclusive: a member starts consuming p only after its
//     compare-and-set created p's claim, and the claim is deleted only
//     after consume returned.
//  2. A consume that returns holds nothing of p: it handled or Naked, in
//     stream-sequence order, every message it had received (see below).
//     Naked messages are the first the server redelivers, in the order
//     they were Naked, and before any newer message: the next owner
//     receives them first.
//  3. A dead owner's claim expires one lease after its last refresh; its
//     unacknowledged messages come back one AckWait after its last
//     delivery or progress signal, which were before its death. The
//     lease is at least AckWait + Grace plus two heartbeats (Run refuses
//     less), so every such message is back in the redelivery queue, and
//     redelivered first in stream order, before anyone can claim p.
//  4. An owner cut off from the bucket but alive (not dead to JetStream)
//     fences itself: when its claim has not been refreshed for lease −
//     AckWait − Grace, it cancels consume, which stops within Grace, and
//     what it could not Nak returns within AckWait: all before the claim
//     can expire.
//  5. The pin is a second fence at the server: JetStream delivers p only
//     to the pinned client. A new owner unpins when it takes p, so a
//     former owner that was paused past its lease and wakes up gets no
//     new message, sees its claim lost at its next heartbeat, and stops.
//     PinnedTTL is a little above AckWait.
//  6. Within a member, consume handles a key's messages one at a time in
//     the order received.
//
// So two messages of one key are never handled at once nor out of order,
// except when a handler overruns: a handler that ignores its
// cancellation past Grace keeps its consume from returning, and the
// member keeps the claim and waits (logged, counted as an "overrun"
// event): the partition's handover is late but order holds. If consume
// returned anyway while a handler still ran, the next owner could handle
// later messages of that key, or that message again, while it runs: for
// at most the rest of that handler's run. A zombie as in 5 may likewise
// finish the one message it was handling. Handlers must be idempotent in
// any case: a message whose owner died before acknowledging it is handled
// again by the next owner.
//
// # What consume must do
//
// consume(ctx, consumer) pulls from the durable consumer named consumer
// through the priority group (jetstream.PullPriorityGroup or
// jetstream.FetchPriorityGroup with bus.PartitionGroup.PriorityGroup),
// until ctx is cancelled, and:
//
//   - handles one message of a key at a time, in the order received;
//   - retries a failing message in place, holding it, rather than with
//     NakWithDelay: a delayed Nak lets the key's later messages overtake
//     it (a plain Nak is redelivered before them);
//   - signals progress (InProgress) for every message it holds, running
//     or waiting behind its key, well within AckWait;
//   - keeps pull requests short (an expiry of a few seconds): the server
//     may answer a request after its client died, until it expires, and
//     the lease's margin over AckWait + Grace covers only that long;
//
// and when ctx is cancelled:
//
//   - stops pulling without abandoning a pull request the server may still
//     answer (drain the Messages iterator, or let a Fetch end): what the
//     server sent to an abandoned request would come back only after
//     AckWait, after the next owner handled later messages;
//   - lets running handlers finish within Grace, then cancels the ones
//     still running and waits for them;
//   - Naks every message it holds and did not finish, in stream-sequence
//     order;
//   - returns nil, holding nothing.
//
// # Timing
//
// With lease L (the bucket's TTL, bus.LeaseTTL), the partition consumers'
// AckWait and Grace: heartbeats every (L − AckWait − Grace)/4 by default;
// a member fences a partition after L − AckWait − Grace without a
// successful refresh; a dead member's partitions are taken over about L
// after its last heartbeat; a handover on a join or a clean leave takes
// as long as consume takes to stop.
package partition
