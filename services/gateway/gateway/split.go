package gateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/cactus-comments/appservice/pkg/bus"
	"github.com/cactus-comments/appservice/pkg/jspub"
	"github.com/cactus-comments/appservice/pkg/partition"
	"github.com/cactus-comments/appservice/pkg/registry"
	"github.com/cactus-comments/appservice/pkg/service"
)

// The splitter moves transactions from the transaction stream to the
// event stream. Every gateway replica runs one, as a member of a
// partitioned consumer group of one partition (bus.SplitterGroup): one
// replica splits at a time, the others stand by and take over when it
// leaves or dies.
//
// It reads transaction messages in stream order and, for each, judges
// every event as RouteEvent does (checkEvent: the consumers' validation
// and classification) and publishes it to its event subject, or
// dead-letters it. It does not wait for one
// transaction's acks before publishing the next: up to splitWindow
// transactions are in flight on one connection, and since one connection
// publishes in order and JetStream stores in arrival order, the event
// stream holds the events in the homeserver's order. A transaction
// message is acknowledged, and leaves the work queue, only once every one
// of its events is stored (or was already, or is dead-lettered); a
// failure holds it and retries its unstored events in place. What the
// splitter had not acknowledged when it died is redelivered to the next
// one, which stores them again (the workers' done markers recognise
// events stored twice).

const (
	// splitWindow bounds the transaction messages being split at once
	// (bus.SplitterGroup's MaxAckPending is above it).
	splitWindow = 64
	// splitFetchWait bounds one pull request: the package partition asks
	// for short ones, and a stopping splitter waits for the last to end.
	splitFetchWait  = 2 * time.Second
	splitMinBackoff = 100 * time.Millisecond
	splitMaxBackoff = 5 * time.Second
	// maxCachedRooms bounds the splitter's cache of room subjects.
	maxCachedRooms = 4096
	// A room found in the registry's index is asked about again after
	// oursFor (its site may be deleted), one not found after notOursFor
	// (it may be a comment room created a moment ago: until then its
	// comments go to the bot worker, which ignores them too).
	oursFor      = 10 * time.Minute
	notOursFor   = 10 * time.Second
	indexTimeout = 2 * time.Second
	// maxIndexBackoff bounds the wait after failed lookups.
	maxIndexBackoff = 5 * time.Minute
)

// Splitter states, the label values of cactus_gateway_splitter_state.
const (
	splitStandby = "standby"
	splitActive  = "active"
	splitFailing = "failing"
)

var splitStates = []string{splitStandby, splitActive, splitFailing}

// splitter is one replica's member of the splitter group.
type splitter struct {
	g     *Gateway
	group bus.PartitionGroup
	popts partition.Options
	// nc is the splitter's own connection: the handler's messages must
	// not queue behind its events, in the client nor in the server. js
	// and pub are on nc; Split sets them.
	nc  *nats.Conn
	js  jetstream.JetStream
	pub *jspub.Publisher
	// handoff holds what this replica's handler stored, while it splits.
	handoff *handoff

	mu sync.Mutex
	// state is one of splitStates; err why it fails.
	state string
	err   error

	// Only the reading goroutine of the running consume uses these.
	// index tells our comment and moderation rooms (nil: unknown, every
	// room's messages go to the bot worker); it is not asked before
	// indexBackUntil after it failed, indexBackoff later each time it
	// fails again (a NATS user that may not read it: a lookup waits
	// indexTimeout for nothing).
	index          roomIndex
	indexBackUntil time.Time
	indexBackoff   time.Duration
	rooms          map[string]*room
	events         []rawEvent
	routed         []route

	// blocks recycles the event messages of split transactions.
	blocks msgBlocks
}

// msgBlock is the event messages of one transaction message. Their header
// maps are reused: setHeaders overwrites every value.
type msgBlock struct{ msgs []nats.Msg }

// msgBlocks recycles msgBlocks between the splitter's reading goroutine,
// which fills them, and its completing one, which is done with them once
// their transaction is split (jspub keeps no message once sent).
type msgBlocks struct{ pool sync.Pool }

// get returns a block of n messages.
func (p *msgBlocks) get(n int) *msgBlock {
	b, _ := p.pool.Get().(*msgBlock)
	if b == nil {
		b = &msgBlock{}
	}
	if cap(b.msgs) < n {
		b.msgs = append(b.msgs[:cap(b.msgs)], make([]nats.Msg, n-cap(b.msgs))...)
	}
	b.msgs = b.msgs[:n]
	return b
}

// put recycles b (nil: nothing); nothing may use its messages any more.
func (p *msgBlocks) put(b *msgBlock) {
	if b == nil || cap(b.msgs) > maxRecycledBlock {
		return
	}
	for i := range b.msgs {
		b.msgs[i].Data, b.msgs[i].Reply = nil, "" // keep the header map
	}
	p.pool.Put(b)
}

// maxRecycledBlock bounds the blocks kept for reuse, in messages: the
// block of a huge transaction is not kept.
const maxRecycledBlock = 1024

// room is a validated room id and its event subjects.
type room struct {
	id       string
	subjects [3]string // by classIndex, filled on first use
	// ours says whether the registry's index has the room, as of
	// checked.
	ours    bool
	checked time.Time
}

// roomIndex is the registry's index of our rooms (registry.Index).
type roomIndex interface {
	Lookup(ctx context.Context, roomID string) (registry.Room, error)
}

// ours reports whether r is one of our comment or moderation rooms,
// asking the registry's index when the last answer is old. An index
// that cannot answer counts as no: the bot worker then sees the room's
// messages and ignores them, as it did before the gateway asked.
func (s *splitter) ours(ctx context.Context, r *room) bool {
	if s.index == nil {
		return false
	}
	now := time.Now()
	valid := notOursFor
	if r.ours {
		valid = oursFor
	}
	if !r.checked.IsZero() && now.Sub(r.checked) < valid {
		return r.ours
	}
	if now.Before(s.indexBackUntil) {
		// It just failed: every lookup would wait as long again.
		return false
	}
	lctx, cancel := context.WithTimeout(ctx, indexTimeout)
	_, err := s.index.Lookup(lctx, r.id)
	cancel()
	r.ours, r.checked = err == nil, now
	switch {
	case err == nil || errors.Is(err, registry.ErrNotFound):
		s.indexBackoff = 0
	case ctx.Err() == nil:
		s.indexBackoff = min(max(2*s.indexBackoff, notOursFor), maxIndexBackoff)
		s.indexBackUntil = time.Now().Add(s.indexBackoff)
		s.g.log.Warn("splitter: cannot look rooms up in the registry; their messages go to the bot worker for a while", "room_id", logID(r.id), "err", err, "for", s.indexBackoff)
	}
	return r.ours
}

func (r *room) subject(c bus.Class) string {
	i := classIndex(c)
	if r.subjects[i] == "" {
		r.subjects[i] = bus.EventSubject(c, r.id)
	}
	return r.subjects[i]
}

// room returns the cached room of id, or caches it. The id is not
// validated here: checkEvent does that, and the cache is bounded.
func (s *splitter) room(id []byte) *room {
	if r, ok := s.rooms[string(id)]; ok {
		return r
	}
	return s.cacheRoom(string(id))
}

// roomOf is room for an id held as a string.
func (s *splitter) roomOf(id string) *room {
	if r, ok := s.rooms[id]; ok {
		return r
	}
	return s.cacheRoom(id)
}

func (s *splitter) cacheRoom(id string) *room {
	if s.rooms == nil || len(s.rooms) >= maxCachedRooms {
		s.rooms = make(map[string]*room)
	}
	r := &room{id: id}
	s.rooms[r.id] = r
	return r
}

func (s *splitter) setState(state string, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.state == state && (err == nil) == (s.err == nil) {
		return
	}
	switch {
	case state == splitFailing && s.state != splitFailing:
		s.g.log.Warn("splitter: events cannot be stored; holding the transactions and retrying", "err", err)
	case s.state == splitFailing && state == splitActive:
		s.g.log.Info("splitter: events are stored again")
	}
	s.state, s.err = state, err
	for _, st := range splitStates {
		v := 0.0
		if st == state {
			v = 1
		}
		s.g.metrics.splitState.WithLabelValues(st).Set(v)
	}
}

// active reports whether this replica splits.
func (s *splitter) active() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.state != splitStandby
}

// ready is the splitter's part of readiness: a splitter that cannot store
// events says so. The transactions wait in their stream meanwhile.
func (s *splitter) ready() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.state == splitFailing {
		return fmt.Errorf("splitter cannot store events: %w", s.err)
	}
	return nil
}

// Split runs this replica's splitter until ctx ends, then hands the
// splitting over to another replica and returns nil. It splits on a NATS
// connection of its own (WithSplitterConn's, or one it opens and drains).
// While it cannot join the splitter group (NATS unreachable, the topology
// incomplete) it says so in readiness and tries again.
func (g *Gateway) Split(ctx context.Context) error {
	s := g.split
	if s.nc == nil {
		o := service.ConnOptions(g.cfg, Name)
		o.Name += "-splitter"
		nc, err := bus.Connect(ctx, o, g.log)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("splitter: %w", err)
		}
		defer drain(nc, g.cfg.ShutdownTimeout)
		s.nc = nc
	}
	var err error
	if s.js, err = jetstream.New(s.nc); err != nil {
		return fmt.Errorf("splitter: %w", err)
	}
	if s.pub, err = jspub.New(s.nc); err != nil {
		return fmt.Errorf("splitter: %w", err)
	}
	defer s.pub.Close()
	o := s.popts
	if o.Log == nil {
		o.Log = g.log
	}
	if o.Metrics == nil {
		o.Metrics = g.metrics.partitions
	}
	var backoff time.Duration
	for {
		m, err := partition.New(s.js, s.group, s.consume, o)
		if err != nil {
			return fmt.Errorf("splitter: %w", err)
		}
		started := time.Now()
		err = m.Run(ctx)
		backoff = splitRejoinBackoff(backoff, time.Since(started))
		if ctx.Err() != nil || err == nil {
			s.setState(splitStandby, nil)
			return nil
		}
		s.setState(splitFailing, fmt.Errorf("cannot join the splitter group: %w", err))
		g.log.Error("splitter: cannot join the splitter group; retrying", "err", err, "in", backoff)
		select {
		case <-ctx.Done():
			s.setState(splitStandby, nil)
			return nil
		case <-time.After(backoff):
		}
	}
}

// splitRejoinBackoff is how long the splitter waits before it tries to
// join its group again, after a try that failed after ran. While NATS is
// away every try fails, and the wait doubles; it stays short (at most
// 5 s) because transactions the homeserver was told are stored wait for
// the splitter, and a try costs NATS next to nothing. A splitter that had
// been running for a while starts again from the shortest wait.
func splitRejoinBackoff(prev, ran time.Duration) time.Duration {
	const shortest, longest = time.Second, 5 * time.Second
	if prev == 0 || ran > time.Minute {
		return shortest
	}
	return min(2*prev, longest)
}

// drain drains nc, closing it if that takes longer than timeout.
func drain(nc *nats.Conn, timeout time.Duration) {
	done := make(chan struct{})
	nc.SetClosedHandler(func(*nats.Conn) { close(done) })
	if err := nc.Drain(); err != nil {
		nc.Close()
		return
	}
	select {
	case <-done:
	case <-time.After(timeout):
		nc.Close()
	}
}

// splitItem is one transaction message in the splitter's pipeline.
type splitItem struct {
	// msg is the delivered message; nil for one read directly from the
	// stream (a delivery lost on the way), which has no ack.
	msg jetstream.Msg
	seq uint64
	// stored is when JetStream stored the transaction message.
	stored time.Time
	// msgs are what is left to store and kinds what each is (a classIndex,
	// or kindDeadLetter); batch their publication, nil if never published
	// (the splitter was stopping).
	msgs  []*nats.Msg
	kinds []int8
	batch *jspub.Batch
	// block holds its event messages, recycled once it is done.
	block *msgBlock
	// What was stored, for the metrics; ignored are the events no worker
	// reads (not stored), by ignoredKinds.
	published   [3]int
	ignored     [len(ignoredKinds)]int
	deadLt      int
	unconfirmed int
}

const kindDeadLetter int8 = -1

func (it *splitItem) add(m *nats.Msg, kind int8) {
	it.msgs = append(it.msgs, m)
	it.kinds = append(it.kinds, kind)
}

// eventSpan returns the indexes of it's first and last event that can be
// no duplicate (-1 if it has none) and how many events lie from one to
// the other, both included: the stretch whose events can be sent without
// an ack. A moderation event carries a Nats-Msg-Id, so JetStream may drop
// it as a duplicate, and its ack then gives the original's sequence:
// useless as an end. Dead letters are not events.
func (it *splitItem) eventSpan() (first, last, events int) {
	mod := int8(classIndex(bus.ClassModeration))
	first, last = -1, -1
	for i, k := range it.kinds {
		if k == kindDeadLetter || k == mod {
			continue
		}
		if first < 0 {
			first = i
		}
		last = i
	}
	for i := first; first >= 0 && i <= last; i++ {
		if it.kinds[i] != kindDeadLetter {
			events++
		}
	}
	return first, last, events
}

// publish publishes what is left of it. A transaction's first attempt
// asks JetStream to acknowledge only the ends of its eventSpan, every
// moderation event and every dead letter: the events between are sent
// without a reply. One
// connection's messages are stored in the order sent, so when the first
// and last are stored exactly as many sequences apart as there are
// events between them, every one of those is stored (settle). An ack
// costs JetStream about as much as storing the event; this halves what a
// transaction costs it. Retries ask for every ack.
func (s *splitter) publish(it *splitItem) {
	first, last, events := it.eventSpan()
	if it.batch != nil || events < 3 {
		it.batch = s.pub.Publish(it.msgs)
		return
	}
	confirm := make([]bool, len(it.msgs))
	mod := int8(classIndex(bus.ClassModeration))
	for i, k := range it.kinds {
		// A moderation event may be a duplicate JetStream drops (it has
		// a Nats-Msg-Id): its ack says so, and it takes no sequence.
		confirm[i] = k == kindDeadLetter || k == mod || i == first || i == last
	}
	it.batch = s.pub.PublishPartly(it.msgs, confirm)
}

// splitRun is one run of consume: a reading goroutine that fetches,
// routes and publishes, and a completing one that waits for each
// transaction's acks in order and acknowledges it.
type splitRun struct {
	s        *splitter
	ctx      context.Context
	consumer jetstream.Consumer
	stream   jetstream.Stream
	// next is the stream sequence after the newest transaction message
	// this run has seen.
	next  uint64
	queue chan *splitItem
	slots chan struct{}
	// graceOver closes Grace after ctx's end: what is still being stored
	// then is given back (Nak) to the next splitter.
	graceOver chan struct{}
	progress  time.Duration

	mu   sync.Mutex
	held []jetstream.Msg // in stream order
	// pending is how many transactions the last fetched one had behind it.
	pending uint64
	// recovered are the transaction messages recoverLost split whose
	// delivery has not come yet (reading goroutine only).
	recovered map[uint64]bool
	// paused is open while the oldest transaction fails: the reader then
	// publishes no later one, so that as few as possible overtake it.
	paused chan struct{}
}

func (r *splitRun) pause() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.paused == nil {
		r.paused = make(chan struct{})
	}
}

func (r *splitRun) unpause() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.paused != nil {
		close(r.paused)
		r.paused = nil
	}
}

// waitUnpaused waits while paused; false once ctx ends.
func (r *splitRun) waitUnpaused() bool {
	r.mu.Lock()
	ch := r.paused
	r.mu.Unlock()
	if ch == nil {
		return r.ctx.Err() == nil
	}
	select {
	case <-ch:
		return r.ctx.Err() == nil
	case <-r.ctx.Done():
		return false
	}
}

// consume is the partition's Consume: it splits until ctx is cancelled,
// then returns holding nothing (see the package partition).
func (s *splitter) consume(ctx context.Context, consumer string) error {
	c, err := s.js.Consumer(ctx, s.group.Stream, consumer)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("splitter: consumer %s: %w", consumer, err)
	}
	grace := s.popts.Grace
	if grace <= 0 {
		grace = bus.PartitionGrace
	}
	if s.index == nil {
		if x, err := registry.OpenIndex(ctx, s.js); err == nil {
			s.index = x
		} else if ctx.Err() == nil {
			s.g.log.Warn("splitter: cannot read the registry's room index; comments go to the bot worker, which ignores them (check the gateway's NATS permissions)", "err", err)
		}
	}
	r := &splitRun{
		s: s, ctx: ctx, consumer: c,
		queue:     make(chan *splitItem, 2*splitWindow),
		slots:     make(chan struct{}, splitWindow),
		graceOver: make(chan struct{}),
		progress:  max(c.CachedInfo().Config.AckWait/3, 100*time.Millisecond),
	}
	// Every transaction message older than the stream's first is split:
	// the work queue has deleted it.
	if r.stream, err = s.js.Stream(ctx, s.group.Stream); err == nil {
		if info, err := r.stream.Info(ctx); err == nil && info.State.Msgs > 0 {
			r.next = info.State.FirstSeq
		}
	}
	stop := context.AfterFunc(ctx, func() { time.AfterFunc(grace, func() { close(r.graceOver) }) })
	defer stop()
	s.setState(splitActive, nil)
	defer s.handoff.drop()
	defer s.setState(splitStandby, nil)
	defer s.g.metrics.splitBacklog.Set(0)
	s.g.log.Info("splitter active: splitting transactions into the event stream")
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.complete()
	}()
	err = r.read(min(splitFetchWait, grace/2))
	close(r.queue)
	<-done
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// read fetches transaction messages while there is room in the pipeline,
// publishes each one's events and queues it for complete. Once ctx ends
// it publishes nothing more, lets its last fetch end, and queues what
// that fetch brought unpublished, to be given back.
func (r *splitRun) read(fetchWait time.Duration) error {
	for {
		n := r.acquire()
		if n == 0 {
			return nil
		}
		b, err := r.consumer.Fetch(n, jetstream.FetchMaxWait(fetchWait), jetstream.FetchPriorityGroup(r.s.group.PriorityGroup))
		if err != nil {
			r.release(n)
			if r.ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("splitter: fetch: %w", err)
		}
		got := 0
		for m := range b.Messages() {
			got++
			it := &splitItem{msg: m}
			pending := uint64(0)
			if md, err := m.Metadata(); err == nil {
				it.stored, pending, it.seq = md.Timestamp, md.NumPending, md.Sequence.Stream
			}
			r.recoverLost(it.seq)
			r.mu.Lock()
			r.held, r.pending = append(r.held, m), pending
			r.s.g.metrics.splitBacklog.Set(float64(r.pending) + float64(len(r.held)))
			r.mu.Unlock()
			switch {
			case r.recovered[it.seq]:
				// Split from the stream before: acknowledged as it is.
				delete(r.recovered, it.seq)
				it.batch = r.s.pub.Publish(nil)
			case r.waitUnpaused():
				data, routes, ok := r.body(it.seq, m)
				switch {
				case !ok: // stopping: given back unpublished
				case data == nil:
					it.batch = r.s.pub.Publish(nil)
				default:
					r.s.route(r.ctx, it, data, routes, headerValue(m.Headers().Get(bus.HeaderTxnID)))
					r.s.publish(it)
				}
			}
			r.queue <- it // never blocks: a slot is held for it
		}
		r.release(n - got)
		if err := b.Error(); err != nil && r.ctx.Err() == nil {
			return fmt.Errorf("splitter: fetch: %w", err)
		}
	}
}

// headerMsgSize marks a delivery of headers only, with the size of the
// bytes left out.
const headerMsgSize = "Nats-Msg-Size"

// body returns the bytes of the transaction message m, stream sequence
// seq, and the routes of its events if the handler worked them out. The
// splitter's consumer delivers headers only: the bytes come from the
// handoff when this replica stored the message, else from the stream,
// read until it answers; nil if the stream no longer has it (split
// already), false once ctx ends first.
func (r *splitRun) body(seq uint64, m jetstream.Msg) ([]byte, []route, bool) {
	h := m.Headers()
	if h.Get(headerMsgSize) == "" {
		return m.Data(), nil, true // a consumer that delivers bytes
	}
	if d, ok := r.s.handoff.take(h.Get(bus.HeaderMsgID)); ok {
		r.s.g.metrics.splitReads.WithLabelValues("handoff").Inc()
		select {
		case <-d.ready: // the handler is working them out now, without waiting on anything
		case <-r.ctx.Done():
			return nil, nil, false
		}
		return d.data, d.routes, true
	}
	r.s.g.metrics.splitReads.WithLabelValues("stream").Inc()
	backoff := splitMinBackoff
	for {
		raw, err := r.stream.GetMsg(r.ctx, seq)
		switch {
		case err == nil:
			return raw.Data, nil, true
		case errors.Is(err, jetstream.ErrMsgNotFound):
			// Split and acknowledged by another splitter meanwhile.
			return nil, nil, true
		}
		if r.ctx.Err() != nil {
			return nil, nil, false
		}
		r.s.g.log.Warn("splitter: cannot read a transaction message; retrying", "seq", seq, "err", err, "in", backoff)
		select {
		case <-time.After(backoff):
		case <-r.ctx.Done():
			return nil, nil, false
		}
		backoff = min(2*backoff, splitMaxBackoff)
	}
}

// maxLost bounds the transaction messages recoverLost reads directly.
const maxLost = 4 * splitWindow

// recoverLost splits, before the message of stream sequence seq, every
// older one this run did not see: JetStream delivered it, or handed it to
// a pull request, and it was lost on the way (the server restarted, the
// connection dropped). It would come back only after AckWait, behind
// newer transactions: out of the homeserver's order. Read directly from
// the stream, it is split in its place, and its redelivery, when it comes
// in this run, is acknowledged without splitting it again.
func (r *splitRun) recoverLost(seq uint64) {
	if seq == 0 {
		return
	}
	from := r.next
	r.next = max(r.next, seq+1)
	if from == 0 || seq <= from || r.stream == nil || r.ctx.Err() != nil {
		return
	}
	if seq-from > maxLost {
		r.s.g.log.Error("splitter: transaction messages missing from the deliveries; too many to read directly, they will be split when redelivered", "from", from, "to", seq-1)
		return
	}
	for q := from; q < seq; q++ {
		raw, err := r.stream.GetMsg(r.ctx, q)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue // split and acknowledged before
		}
		if err != nil {
			r.s.g.log.Warn("splitter: a transaction message missing from the deliveries could not be read; it will be split when redelivered", "seq", q, "err", err)
			continue
		}
		r.s.g.log.Warn("splitter: a transaction message delivered but lost on the way; split from the stream", "seq", q)
		it := &splitItem{seq: q, stored: raw.Time}
		if r.waitUnpaused() {
			r.s.route(r.ctx, it, raw.Data, nil, headerValue(raw.Header.Get(bus.HeaderTxnID)))
			r.s.publish(it)
			if r.recovered == nil {
				r.recovered = map[uint64]bool{}
			}
			r.recovered[q] = true
			r.queue <- it
		}
	}
}

// acquire waits for a free slot in the pipeline and takes every free one;
// 0 once ctx ends.
func (r *splitRun) acquire() int {
	select {
	case r.slots <- struct{}{}:
	case <-r.ctx.Done():
		return 0
	}
	n := 1
	for n < cap(r.slots) {
		select {
		case r.slots <- struct{}{}:
			n++
			continue
		default:
		}
		break
	}
	return n
}

func (r *splitRun) release(n int) {
	for range n {
		<-r.slots
	}
}

// complete takes the pipeline's transactions in order: each is
// acknowledged once all of its events are stored, or given back (Nak) if
// the splitter stops first.
func (r *splitRun) complete() {
	var acks ackBatch
	defer acks.flush()
	for it := range r.queue {
		if it.msg == nil {
			// Read directly: its delivery, when it comes, is acknowledged.
			if r.finish(it) {
				r.s.split(it)
			}
			r.s.blocks.put(it.block)
			continue
		}
		if it.batch != nil && r.finish(it) {
			acks.add(it.msg)
			r.s.split(it)
		} else {
			_ = it.msg.Nak()
		}
		r.s.blocks.put(it.block)
		r.mu.Lock()
		r.held = r.held[1:]
		r.s.g.metrics.splitBacklog.Set(float64(r.pending) + float64(len(r.held)))
		r.mu.Unlock()
		<-r.slots
	}
}

// splitAckDelay is how long the splitter may hold the acknowledgement of
// a split transaction message so that it goes out in one write with the
// next ones: one transaction at a time, a write of its own is a system
// call and a wake-up on either side for every transaction. Delaying it
// changes nothing but how long the message stays in the work queue: its
// events are stored, and a splitter that dies first leaves it to the next,
// which stores them again as after any death.
const splitAckDelay = 5 * time.Millisecond

// ackBatch holds acknowledgements for up to splitAckDelay, and at most
// splitWindow of them (the consumer's MaxAckPending is far above the
// pipeline and this together).
type ackBatch struct {
	mu      sync.Mutex
	pending []jetstream.Msg
	timer   *time.Timer
}

// add acknowledges m within splitAckDelay.
func (a *ackBatch) add(m jetstream.Msg) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.pending = append(a.pending, m)
	switch {
	case len(a.pending) >= splitWindow:
		a.flushLocked()
	case len(a.pending) > 1:
	case a.timer == nil:
		a.timer = time.AfterFunc(splitAckDelay, a.flush)
	default:
		a.timer.Reset(splitAckDelay)
	}
}

// flush acknowledges what is held now.
func (a *ackBatch) flush() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.flushLocked()
}

func (a *ackBatch) flushLocked() {
	for _, m := range a.pending {
		_ = m.Ack()
	}
	clear(a.pending)
	a.pending = a.pending[:0]
	if a.timer != nil {
		a.timer.Stop()
	}
}

// finish waits until every message of it is stored, retrying in place
// what failed; false if the splitter stops first.
func (r *splitRun) finish(it *splitItem) bool {
	tick := time.NewTicker(r.progress)
	defer tick.Stop()
	backoff := splitMinBackoff
	for {
		deadline := time.NewTimer(r.s.g.publishTimeout)
	wait:
		for {
			select {
			case <-it.batch.Done():
				break wait // stored in time, whatever else happened
			default:
			}
			select {
			case <-it.batch.Done():
				break wait
			case <-tick.C:
				r.inProgress()
			case <-deadline.C:
				it.batch.Abandon(fmt.Errorf("no ack from JetStream within %v", r.s.g.publishTimeout))
				break wait
			case <-r.graceOver:
				deadline.Stop()
				it.batch.Abandon(errors.New("splitter stopping"))
				return false
			}
		}
		deadline.Stop()
		failure := r.s.settle(it)
		if len(it.msgs) == 0 {
			r.unpause()
			return true
		}
		if failure != nil {
			if r.ctx.Err() != nil {
				return false
			}
			r.pause()
			r.s.g.metrics.splitFailures.Inc()
			r.s.setState(splitFailing, failure)
			t := time.NewTimer(backoff)
		sleep:
			for {
				select {
				case <-t.C:
					break sleep
				case <-tick.C:
					r.inProgress()
				case <-r.ctx.Done():
					t.Stop()
					return false
				}
			}
			backoff = min(2*backoff, splitMaxBackoff)
		}
		r.s.publish(it)
	}
}

// inProgress tells JetStream that every transaction held is still being
// worked on, so that none is redelivered meanwhile.
func (r *splitRun) inProgress() {
	r.mu.Lock()
	held := append([]jetstream.Msg(nil), r.held...)
	r.mu.Unlock()
	for _, m := range held {
		_ = m.InProgress()
	}
}

// route is where one event of a transaction message goes: its class's
// subject in its room, or, with a problem, the dead-letter stream.
type route struct {
	raw     []byte // the event, within the transaction message
	class   bus.Class
	byBot   bool // sent by the bot (for the metrics of what is ignored)
	problem string
	eventID string
	typ     string
	roomID  string
}

// judge is the splitter's judgement of the decoded event e, whose room id
// is roomID and bytes raw: checkEvent's, unless the decoder flagged it.
func (g *Gateway) judge(e *rawEvent, roomID string, raw []byte) route {
	r := route{raw: raw, problem: e.Problem, eventID: e.EventID, typ: e.Type, roomID: roomID, byBot: string(e.Sender) == g.bot}
	if r.problem == "" {
		r.class, r.problem = checkEvent(e, roomID, g.bot, g.maxEvent)
	}
	return r
}

// routes decodes a transaction message and judges each of its events, in
// order, into s.routed.
func (s *splitter) routes(data []byte) ([]route, error) {
	var err error
	s.events, err = decodeTransaction(data, s.events[:0])
	defer clear(s.events)
	if err != nil {
		return nil, err
	}
	s.routed = s.routed[:0]
	for i := range s.events {
		e := &s.events[i]
		roomID := ""
		if e.Problem == "" {
			roomID = s.room(e.RoomID).id
		} else {
			roomID = string(e.RoomID) // for the dead letter's subject
		}
		s.routed = append(s.routed, s.g.judge(e, roomID, e.Raw))
	}
	return s.routed, nil
}

// route routes every event of a transaction message (data, of
// transaction txnID) into it: a message to its event subject, or a dead
// letter. routes are its events' routes if the handler handed them over,
// nil to work them out here.
func (s *splitter) route(ctx context.Context, it *splitItem, data []byte, routes []route, txnID string) {
	if routes == nil {
		var err error
		if routes, err = s.routes(data); err != nil {
			// Not a transaction message of ours: kept for an operator to read.
			s.g.log.Error("splitter: unreadable transaction message sent to the dead-letter stream", "txn_id", logID(txnID), "err", err)
			it.add(gatewayDeadLetter("", "transaction message unreadable: "+err.Error(), data,
				nats.Header{bus.HeaderTxnID: {txnID}}), kindDeadLetter)
			return
		}
		defer clear(s.routed)
	}
	it.msgs = make([]*nats.Msg, 0, len(routes))
	it.kinds = make([]int8, 0, len(routes))
	it.block = s.blocks.get(len(routes))
	msgs := it.block.msgs
	for i := range routes {
		rt := &routes[i]
		if rt.problem != "" {
			e := rawEvent{Raw: rt.raw, Problem: rt.problem, EventID: rt.eventID, Type: rt.typ, RoomID: []byte(rt.roomID)}
			it.add(s.g.deadLetterMsg(txnID, &e), kindDeadLetter)
			continue
		}
		rm := s.roomOf(rt.roomID)
		class := rt.class
		if c := bus.InOurRoom(class, rt.typ); c != class && s.ours(ctx, rm) {
			class = c
		}
		if !class.Stored() {
			it.ignored[ignoredAs(rt, class != rt.class)]++
			continue
		}
		m := &msgs[i]
		eventMsg(m, rm.subject(class), rt, txnID)
		it.add(m, int8(classIndex(class)))
	}
}

// ignoredKinds are what the events no worker reads are, the label values
// of cactus_gateway_events_ignored_total: comments (messages in our
// rooms), the bot's own events (its replies, and the bans and power
// levels it propagates), visitors' memberships (joins, leaves), and the
// rest (topics, reactions, redactions, ...).
var ignoredKinds = [...]string{"comment", "bot", "membership", "other"}

// ignoredAs is the index in ignoredKinds of the ignored event rt;
// comment says it was taken out as a message in one of our rooms.
func ignoredAs(rt *route, comment bool) int {
	switch {
	case comment:
		return 0
	case rt.byBot:
		return 1
	case rt.typ == "m.room.member":
		return 2
	}
	return 3
}

// eventMsg makes m, maybe recycled, the message of the event rt routes to
// subject.
func eventMsg(m *nats.Msg, subject string, rt *route, txnID string) {
	m.Subject, m.Data, m.Reply = subject, rt.raw, ""
	setHeaders(m, rt.eventID, txnID, rt.typ)
	if rt.class == bus.ClassModeration {
		// The moderation consumer handles a site's events at once and
		// keeps the one of the highest stream sequence: a second copy
		// of an old ban, stored after the unban that followed it,
		// would win. Moderation events are few; JetStream drops their
		// copies within the duplicate window.
		m.Header[bus.HeaderMsgID] = []string{rt.eventID}
	} else {
		delete(m.Header, bus.HeaderMsgID) // a recycled moderation event's
	}
}

// settle reads the outcome of it's batch: what is stored is counted, and
// it.msgs keeps what is left to store. An event JetStream refuses for good
// becomes a dead letter (resending cannot change its mind, and holding it
// would hold every transaction behind it); any other failure is returned,
// to be retried.
func (s *splitter) settle(it *splitItem) error {
	var failure error
	stored := s.unconfirmedStored(it)
	reconfirm := 0
	left, kinds := it.msgs[:0:0], it.kinds[:0:0]
	for i, m := range it.msgs {
		err := it.batch.MessageErr(i)
		if errors.Is(err, jspub.ErrUnconfirmed) {
			if stored {
				err = nil
			} else {
				reconfirm++
			}
		}
		switch {
		case err == nil && it.kinds[i] == kindDeadLetter:
			it.deadLt++
		case err == nil && it.batch.Duplicate(i):
			// JetStream had it already (a moderation event's retry).
		case err == nil:
			it.published[it.kinds[i]]++
		case errors.Is(err, jspub.ErrUnconfirmed):
			left = append(left, m)
			kinds = append(kinds, it.kinds[i])
		case it.kinds[i] != kindDeadLetter && bus.IsPermanentPublishError(err):
			reason := "refused for good by JetStream: " + err.Error()
			s.g.log.Warn("splitter: event refused for good, sent to the dead-letter stream", "event_id", logID(m.Header.Get(bus.HeaderEventID)), "reason", reason)
			left = append(left, gatewayDeadLetter(m.Subject, reason, m.Data, m.Header))
			kinds = append(kinds, kindDeadLetter)
		default:
			if failure == nil {
				failure = fmt.Errorf("%s: %w", m.Subject, err)
			}
			left = append(left, m)
			kinds = append(kinds, it.kinds[i])
		}
	}
	if reconfirm > 0 {
		// Not known to be stored: sent again with acks. One stored after
		// all is stored twice, which the workers' done markers recognise.
		it.unconfirmed += reconfirm
		s.g.metrics.splitUnconfirmed.Add(float64(reconfirm))
		s.g.log.Warn("splitter: events sent without an ack are not known to be stored; sending them again with acks",
			"seq", it.seq, "events", reconfirm)
	}
	it.msgs, it.kinds = left, kinds
	return failure
}

// unconfirmedStored reports whether the events it's batch sent without an
// ack are stored. The first and last events were sent with acks, and one
// connection's messages are stored in the order sent: when those two are
// stored exactly as many sequences apart as there are events from one to
// the other, so is every event between them. A gap (JetStream refused one,
// silently without a reply subject) or no ack for either end, and every
// unconfirmed event is sent again with acks: the gateway may not read the
// event stream back, and an event stored twice is recognised by the
// workers' done markers. (Another writer filling a refused event's place
// with exactly as many messages in that instant could hide a gap.)
func (s *splitter) unconfirmedStored(it *splitItem) bool {
	first, last, events := it.eventSpan()
	if first < 0 || it.batch.MessageErr(first) != nil || it.batch.MessageErr(last) != nil ||
		it.batch.Duplicate(first) || it.batch.Duplicate(last) {
		return false
	}
	for i := first + 1; i < last; i++ {
		if it.kinds[i] != kindDeadLetter && it.batch.Duplicate(i) {
			events-- // dropped: no sequence between first and last
		}
	}
	a, b := it.batch.Seq(first), it.batch.Seq(last)
	return a > 0 && b > a && b-a == uint64(events-1)
}

// split counts a transaction message whose events are all stored.
func (s *splitter) split(it *splitItem) {
	mt := s.g.metrics
	for i, c := range []bus.Class{bus.ClassBot, bus.ClassModeration} {
		if it.published[i] > 0 {
			mt.eventsPublished[c].Add(float64(it.published[i]))
		}
	}
	for i, n := range it.ignored {
		if n > 0 {
			mt.eventsIgnored[i].Add(float64(n))
		}
	}
	if it.deadLt > 0 {
		mt.deadLettered.Add(float64(it.deadLt))
	}
	if it.msg != nil {
		mt.txnsSplit.Inc()
	}
	if !it.stored.IsZero() {
		mt.splitDelay.Observe(time.Since(it.stored).Seconds())
	}
	s.setState(splitActive, nil)
	if s.g.log.Enabled(context.Background(), slog.LevelDebug) {
		s.g.log.Debug("transaction split", "seq", it.seq,
			"events", it.published[0]+it.published[1]+it.published[2], "stored_again", it.unconfirmed, "dead_lettered", it.deadLt)
	}
}
