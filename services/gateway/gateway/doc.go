// Package gateway is the only HTTP surface the homeserver sees: it
// authenticates the homeserver, stores every event of a transaction in
// JetStream before acknowledging it, asks a provisioner over NATS whether a
// comment room alias exists, and answers user queries and pings itself.
// The gateway keeps no state of its own: run as many replicas as the load
// needs.
//
// # How a transaction travels
//
//  1. The handler (transactions.go) reads the body and decodes it in one
//     pass (decode.go). A complete body that is not JSON, or not an
//     object with an "events" array, is stored whole as one dead letter
//     and acknowledged: a 400 would have the homeserver resend it for
//     ever, delivering nothing behind it.
//  2. Events the decoder flags (malformed, or every event of an ambiguous
//     transaction with two "events" keys, or one and a case or folding
//     variant of it such as "EVENTS"), events too large for any
//     message, and an event id repeated with other content become dead
//     letters. The other events, bytes unchanged and in order, are cut
//     into transaction messages {"events":[...]} of at most one message
//     each (txnmsg.go): one for nearly every transaction.
//  3. The transaction messages go to the transaction stream (CACTUS_TXNS,
//     subject cactus.txn), with Nats-Msg-Id a hash of their bytes, and the
//     dead letters to the dead-letter stream, all in one batch (pkg/jspub).
//     Once JetStream has acknowledged every one, the handler answers 200;
//     if not within CACTUS_PUBLISH_TIMEOUT, or NATS is not connected, 503.
//  4. The splitter (split.go), running in every replica and active in one
//     at a time, reads the transaction messages in stream order, judges
//     each event as RouteEvent does, and publishes it to its event subject
//     in CACTUS_EVENTS with its event id in Cactus-Event-Id (or
//     dead-letters it). It acknowledges a transaction message, which
//     leaves the work queue, only once every event of it is stored. Its
//     consumer delivers headers only: the bytes of what this replica's
//     handler stored come from the handler's copy (handoff.go), with the
//     routes of their events, which the handler works out while JetStream
//     stores the message; the rest are read from the stream, decoded and
//     judged by the splitter itself, to the same routes.
//
// Workers read CACTUS_EVENTS as before; cactus_gateway_split_duration_seconds
// is what they wait beyond the homeserver's 200.
//
// # Why 200 means every event is stored
//
// A 200 is written only after JetStream acknowledged every transaction
// message and dead letter of the transaction (step 3): every event is then
// in a stored message, on disk (and on a majority of the servers in a
// cluster), in a stream that never ages a message out and refuses new ones
// when full rather than dropping old ones. A transaction message leaves
// the stream only when the splitter acknowledges it, after every one of
// its events is known to be stored in the event stream or the dead-letter
// stream: by its own PubAck, or, for the events a transaction's first and
// last enclose (sent without a reply, which halves what JetStream spends
// per event), by those two being exactly as many sequences apart as there
// are events between them; after a gap they are all sent again with acks
// (unconfirmedStored). So from the 200 on, each event is in the transaction stream, the
// event stream or the dead-letter stream, whatever fails:
//
//   - NATS unreachable or disconnected: 503 at once; nothing acknowledged.
//   - NATS slow or hung: no ack within the publish timeout, 503. A message
//     JetStream stored after all makes the retry a duplicate (same bytes,
//     same hash): acknowledged, stored once.
//   - The transaction stream full or missing: JetStream refuses, 503.
//   - A gateway killed while handling: it answered nothing; the homeserver
//     retries, on another replica.
//   - NATS stopped after the transaction message, before the split: the
//     message is on disk. The splitter fails to fetch or to publish, holds
//     what it has, and carries on when NATS is back; what it held and did
//     not acknowledge is delivered again.
//   - The active splitter killed mid-transaction: its unacknowledged
//     transaction messages are redelivered (bus.SplitterAckWait after its
//     last sign of life) to the next active replica, which takes over once
//     the dead one's lease expires (bus.LeaseTTL of it) and splits them
//     again: the events stored before the kill are stored a second time,
//     and the workers' done markers recognise them.
//   - The event stream refusing events (missing, full, NATS refusing): the
//     splitter holds the transaction, retries with backoff, and /readyz
//     says "splitter cannot store events"; transactions queue in their
//     stream meanwhile and the homeserver keeps getting 200. An event
//     JetStream refuses for good (larger than the stream takes) is
//     dead-lettered instead, as the handler would have done.
//
// # Duplicates and order
//
// An identical retry (Synapse resends the same body) within the
// transaction stream's duplicate window (bus.DuplicateWindow) is a
// duplicate transaction message: nothing is split twice. A retry with new
// events merged in (Dendrite) is a new message, and so is a retry after
// the window: it is split again and its events are stored again. The
// event stream keeps no window of event ids for most events: that would
// cost nats-server a map entry (about 350 B) and its upkeep for every
// event, to save what only failures and retries cause. Moderation events
// are the exception: few, and the moderation consumer, which handles a
// site's events concurrently and keeps the decision of the highest stream
// sequence, must not see a second copy of an old ban stored after the
// unban that followed it. They keep their event id as Nats-Msg-Id (and
// always ask for an ack), so JetStream drops such a copy within the
// window. The workers' effectively-once rules
// (done markers) apply to an event stored twice as to any redelivery. The
// transaction id is never the deduplication key: Dendrite reuses it with
// other events.
//
// One splitter at a time reads the transaction stream in order, and
// publishes on one connection, which JetStream stores in arrival order:
// events of a room are in the event stream in the order the homeserver
// sent them, however many transactions are in flight (splitWindow) and
// whichever replica splits. The one exception is a transient failure of
// an event while later transactions already in flight are stored: its
// retry is stored after them. The splitter stops publishing new
// transactions while the oldest one fails, so that is at most the
// transactions in flight at that moment, the same exposure the gateway
// had within one transaction when it published events itself.
package gateway
