package partition

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/cactus-comments/appservice/pkg/bus"
)

// Consume consumes one partition: it pulls from the durable consumer named
// consumer (on the group's stream, through the group's priority group)
// until ctx is cancelled, and then returns holding nothing: see the
// package documentation for what it must do on cancellation. An error
// return while ctx is live is logged and consume is called again after a
// backoff, for as long as the member owns the partition.
type Consume func(ctx context.Context, consumer string) error

// Options configure a Member.
type Options struct {
	// Instance names this member in its group: unique per process. Default:
	// the host name (a Kubernetes pod name) and a random suffix.
	Instance string
	// Grace is how long consume may take to return after its context is
	// cancelled (default bus.PartitionGrace). The bucket's lease must cover
	// the consumers' AckWait plus Grace (see Run).
	Grace time.Duration
	// Heartbeat is how often the member refreshes its records. Default: a
	// quarter of the lease left after AckWait and Grace, so that a member
	// fences itself only after three refreshes in a row failed.
	Heartbeat time.Duration
	Log       *slog.Logger
	Metrics   *Metrics
}

// Member is one replica's membership in a partitioned consumer group: it
// announces itself, computes which partitions it owns, claims them and
// runs consume for each, and hands them over when the members change.
type Member struct {
	js      jetstream.JetStream
	g       bus.PartitionGroup
	consume Consume
	o       Options
	held    atomic.Pointer[[]int]
}

var keyToken = regexp.MustCompile(`^[-_a-zA-Z0-9]+$`)

// New checks the declaration and the options; Run does the rest.
func New(js jetstream.JetStream, g bus.PartitionGroup, consume Consume, o Options) (*Member, error) {
	switch {
	case js == nil || consume == nil:
		return nil, errors.New("partition: JetStream and consume are required")
	case !keyToken.MatchString(g.Name):
		return nil, fmt.Errorf("partition: group name %q must be one key token ([-_a-zA-Z0-9]+)", g.Name)
	case g.Partitions <= 0 || g.Stream == "" || g.Bucket == "" || g.PriorityGroup == "":
		return nil, fmt.Errorf("partition: group %s needs partitions, a stream, a bucket and a priority group", g.Name)
	case o.Grace < 0 || o.Heartbeat < 0:
		return nil, errors.New("partition: negative grace or heartbeat")
	}
	if o.Instance == "" {
		o.Instance = defaultInstance()
	}
	if o.Grace == 0 {
		o.Grace = bus.PartitionGrace
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	o.Log = o.Log.With("group", g.Name, "member", o.Instance)
	return &Member{js: js, g: g, consume: consume, o: o}, nil
}

func defaultInstance() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "member"
	}
	var b [4]byte
	_, _ = rand.Read(b[:])
	return host + "-" + hex.EncodeToString(b[:])
}

// Instance is this member's name in its group.
func (m *Member) Instance() string { return m.o.Instance }

// Held is the partitions this member consumes now, in order.
func (m *Member) Held() []int {
	if p := m.held.Load(); p != nil {
		return slices.Clone(*p)
	}
	return nil
}

type slotState int

const (
	idle     slotState = iota
	running            // claimed, consume running
	stopping           // consume cancelled, not returned yet
)

// slot is one partition as this member sees it.
type slot struct {
	state     slotState
	rev       uint64    // revision of our claim
	refreshed time.Time // last successful write of our claim
	cancel    context.CancelFunc
	stopAt    time.Time
	overrun   bool
	// lost: the claim is no longer ours, so stopping must neither unpin
	// nor release it: another member owns the partition.
	lost     bool
	nextTry  time.Time // no claim attempt before
	failures int       // claim attempts failed in a row
}

// seen is a record of the bucket as the watch last showed it, with the
// local time it was last written.
type seen struct {
	holder string
	at     time.Time
}

// run is the state of one Run. Only the loop goroutine touches it; consume
// goroutines report back through finished.
type run struct {
	m                    *Member
	kv                   jetstream.KeyValue
	stream               jetstream.Stream
	lease, fence, beat   time.Duration
	opTimeout            time.Duration
	log                  *slog.Logger
	met                  *groupMetrics
	watcher              jetstream.KeyWatcher
	watchCtx             context.Context
	ready, leaving       bool
	beatOK               bool
	members              map[string]seen // instance -> last heartbeat seen
	claims               map[int]seen    // partition -> holder
	slots                []slot
	finished             chan int
	memberKey, claimsPre string
}

// Run joins the group and consumes the partitions this member owns until
// ctx is cancelled; then it hands them over (each consume returns, the
// partition is unpinned and its claim released), leaves the group and
// returns nil. It returns an error at once if the group is not declared
// as the order argument needs (pinned partition consumers with AckWait ≤
// PinnedTTL; a bucket whose TTL, the lease, covers AckWait + Grace and
// two heartbeats, with expiry markers) or if another member has the same
// instance name. Run is called once per Member.
func (m *Member) Run(ctx context.Context) error {
	r, err := m.start(ctx)
	if err != nil {
		if ctx.Err() != nil {
			// Asked to stop before joining: a clean stop.
			return nil
		}
		return err
	}
	defer r.met.owned.Set(0)
	defer func() {
		if r.watcher != nil {
			_ = r.watcher.Stop()
		}
	}()
	return r.loop(ctx)
}

func (m *Member) start(ctx context.Context) (*run, error) {
	g := m.g
	r := &run{
		m: m, log: m.o.Log, met: m.o.Metrics.group(g.Name),
		members: map[string]seen{}, claims: map[int]seen{}, beatOK: true,
		slots:     make([]slot, g.Partitions),
		finished:  make(chan int, g.Partitions),
		memberKey: g.Name + ".members." + bus.Token(m.o.Instance),
		claimsPre: g.Name + ".claims.",
	}
	var err error
	if r.kv, err = m.js.KeyValue(ctx, g.Bucket); err != nil {
		return nil, fmt.Errorf("partition %s: bucket %s: %w", g.Name, g.Bucket, err)
	}
	st, err := r.kv.Status(ctx)
	if err != nil {
		return nil, fmt.Errorf("partition %s: bucket %s: %w", g.Name, g.Bucket, err)
	}
	if r.lease = st.TTL(); r.lease <= 0 || st.LimitMarkerTTL() <= 0 {
		return nil, fmt.Errorf("partition %s: bucket %s needs a TTL (dead members' records must expire) and expiry markers (members must see them go)", g.Name, g.Bucket)
	}
	if r.stream, err = m.js.Stream(ctx, g.Stream); err != nil {
		return nil, fmt.Errorf("partition %s: stream %s: %w", g.Name, g.Stream, err)
	}
	var ackWait time.Duration
	for p := range g.Partitions {
		c, err := r.stream.Consumer(ctx, g.Consumer(p))
		if err != nil {
			return nil, fmt.Errorf("partition %s: consumer %s: %w", g.Name, g.Consumer(p), err)
		}
		cfg := c.CachedInfo().Config
		if cfg.PriorityPolicy != jetstream.PriorityPolicyPinned || !slices.Contains(cfg.PriorityGroups, g.PriorityGroup) ||
			cfg.AckPolicy != jetstream.AckExplicitPolicy || cfg.AckWait > cfg.PinnedTTL {
			return nil, fmt.Errorf("partition %s: consumer %s must pin its client in priority group %q, ack explicitly and have AckWait (%v) ≤ PinnedTTL (%v)",
				g.Name, g.Consumer(p), g.PriorityGroup, cfg.AckWait, cfg.PinnedTTL)
		}
		ackWait = max(ackWait, cfg.AckWait)
	}
	r.fence = r.lease - ackWait - m.o.Grace
	if r.beat = m.o.Heartbeat; r.beat == 0 {
		r.beat = r.fence / 4
	}
	if r.beat <= 0 || r.fence < 2*r.beat {
		return nil, fmt.Errorf("partition %s: the lease (%v, TTL of bucket %s) must exceed AckWait (%v) + grace (%v) by two heartbeats (%v) at least",
			g.Name, r.lease, g.Bucket, ackWait, m.o.Grace, r.beat)
	}
	r.opTimeout = max(r.beat, 2*time.Second)
	if _, err := r.kv.Create(ctx, r.memberKey, []byte(m.o.Instance)); err != nil {
		if errors.Is(err, jetstream.ErrKeyExists) {
			return nil, fmt.Errorf("partition %s: instance %q is already a member (another process with this name, or this one restarted less than %v ago)", g.Name, m.o.Instance, r.lease)
		}
		return nil, fmt.Errorf("partition %s: join: %w", g.Name, err)
	}
	// The watch outlives ctx: a leaving member still hands over.
	r.watchCtx = context.WithoutCancel(ctx)
	if err := r.watch(); err != nil {
		_ = r.kv.Delete(ctx, r.memberKey)
		return nil, err
	}
	r.log.Info("joined partitioned consumer group", "partitions", g.Partitions, "lease", r.lease, "heartbeat", r.beat, "fence_after", r.fence)
	return r, nil
}

func (r *run) watch() error {
	var err error
	if r.watcher, err = r.kv.Watch(r.watchCtx, r.m.g.Name+".>"); err != nil {
		return fmt.Errorf("partition %s: watch: %w", r.m.g.Name, err)
	}
	// A new watch starts with every current record: forget the old view.
	r.ready = false
	clear(r.members)
	clear(r.claims)
	return nil
}

func (r *run) loop(ctx context.Context) error {
	tick := time.NewTicker(r.beat)
	defer tick.Stop()
	done := ctx.Done()
	var updates <-chan jetstream.KeyValueEntry
	for {
		if r.leaving && r.allIdle() {
			r.log.Info("left partitioned consumer group")
			return nil
		}
		if r.watcher != nil {
			updates = r.watcher.Updates()
		} else {
			updates = nil
		}
		select {
		case <-done:
			done = nil
			r.leave()
		case e, ok := <-updates:
			if !ok {
				r.log.Warn("partition: watch ended; restarting it at the next heartbeat")
				r.watcher = nil
				continue
			}
			r.apply(e)
		case p := <-r.finished:
			r.released(p)
		case <-tick.C:
			r.heartbeat()
			if r.watcher == nil && !r.leaving {
				if err := r.watch(); err != nil {
					r.log.Warn("partition: watch", "err", err)
				}
			}
		}
		r.reconcile()
	}
}

// apply records one change of the bucket.
func (r *run) apply(e jetstream.KeyValueEntry) {
	if e == nil {
		r.ready = true // the current records are all in
		return
	}
	gone := e.Operation() != jetstream.KeyValuePut
	now := time.Now()
	key := e.Key()
	switch {
	case strings.HasPrefix(key, r.m.g.Name+".members."):
		inst, err := bus.ParseToken(strings.TrimPrefix(key, r.m.g.Name+".members."))
		if err != nil {
			return
		}
		if gone {
			delete(r.members, inst)
		} else {
			r.members[inst] = seen{holder: inst, at: now}
		}
		r.met.members.Set(float64(len(r.live())))
	case strings.HasPrefix(key, r.claimsPre):
		p, err := strconv.Atoi(strings.TrimPrefix(key, r.claimsPre))
		if err != nil || p < 0 || p >= len(r.slots) {
			return
		}
		if gone {
			delete(r.claims, p)
			return
		}
		holder := string(e.Value())
		r.claims[p] = seen{holder: holder, at: now}
		// Only a write after our own claim can mean we lost it; the watch
		// may still be showing older ones.
		if s := &r.slots[p]; s.state != idle && !s.lost && holder != r.m.o.Instance && e.Revision() > s.rev {
			// Our claim expired and another member took the partition.
			s.lost = true
			r.met.event("lost")
			r.stop(p, "another member claimed the partition")
		}
	}
}

// live is the members the assignment is computed over: those seen with a
// fresh heartbeat, and this one unless it is leaving. A member whose
// expiry marker was missed drops out when its record is older than the
// lease.
func (r *run) live() []string {
	stale := time.Now().Add(-r.lease - 2*r.beat)
	ms := make([]string, 0, len(r.members)+1)
	for inst, s := range r.members {
		if inst != r.m.o.Instance && s.at.After(stale) {
			ms = append(ms, inst)
		}
	}
	if !r.leaving {
		ms = append(ms, r.m.o.Instance)
	}
	return ms
}

func (r *run) reconcile() {
	if !r.ready && !r.leaving {
		return
	}
	var owners []string
	if !r.leaving {
		owners = Assign(len(r.slots), r.live())
	}
	now := time.Now()
	for p := range r.slots {
		mine := owners != nil && owners[p] == r.m.o.Instance
		switch s := &r.slots[p]; {
		case s.state == running && !mine:
			r.stop(p, "reassigned")
		case s.state == idle && mine && r.claimFree(p) && !now.Before(s.nextTry):
			r.acquire(p)
		}
	}
	r.publishHeld()
}

// claimFree: as far as the watch shows, nobody else claims p.
func (r *run) claimFree(p int) bool {
	c, ok := r.claims[p]
	return !ok || c.holder == r.m.o.Instance || c.at.Before(time.Now().Add(-r.lease-2*r.beat))
}

func (r *run) opCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(r.watchCtx, r.opTimeout)
}

func (r *run) claimKey(p int) string { return r.claimsPre + strconv.Itoa(p) }

// acquire claims p and starts consuming it.
func (r *run) acquire(p int) {
	s := &r.slots[p]
	sent := time.Now()
	s.nextTry = sent.Add(r.beat)
	ctx, cancel := r.opCtx()
	defer cancel()
	self := r.m.o.Instance
	rev, err := r.kv.Create(ctx, r.claimKey(p), []byte(self))
	if errors.Is(err, jetstream.ErrKeyExists) {
		// The watch lagged, or the claim is ours from before (a release
		// that failed): read who holds it.
		e, gerr := r.kv.Get(ctx, r.claimKey(p))
		switch {
		case gerr == nil && string(e.Value()) == self:
			// Ours, but perhaps about to expire: renew it first.
			rev, err = r.kv.Update(ctx, r.claimKey(p), []byte(self), e.Revision())
		case gerr == nil:
			r.claims[p] = seen{holder: string(e.Value()), at: time.Now()}
			return
		}
	}
	if err != nil {
		if s.failures++; s.failures == 1 {
			r.log.Warn("partition: claim failed; retrying every heartbeat", "partition", p, "err", err)
		}
		return
	}
	// Nobody else may consume p now: the previous holder released it after
	// stopping, or it died and its claim expired after its messages came
	// back. A pin still standing belongs to it; drop it so that this
	// member is pinned at its first pull.
	if err := r.stream.UnpinConsumer(ctx, r.m.g.Consumer(p), r.m.g.PriorityGroup); err != nil {
		r.log.Warn("partition: unpin before consuming failed; the old pin lapses after PinnedTTL", "partition", p, "err", err)
	}
	cctx, ccancel := context.WithCancel(r.watchCtx)
	*s = slot{state: running, rev: rev, refreshed: sent, cancel: ccancel}
	r.met.event("acquired")
	r.log.Info("partition acquired", "partition", p, "consumer", r.m.g.Consumer(p))
	go r.consume(cctx, p)
}

// consume runs the caller's consume for p until ctx is cancelled.
func (r *run) consume(ctx context.Context, p int) {
	defer func() { r.finished <- p }()
	name := r.m.g.Consumer(p)
	backoff := 100 * time.Millisecond
	for {
		err := r.m.consume(ctx, name)
		if ctx.Err() != nil {
			return
		}
		r.met.event("consume_restarted")
		r.log.Error("partition: consumer stopped; restarting", "partition", p, "consumer", name, "err", err, "in", backoff)
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		backoff = min(2*backoff, 30*time.Second)
	}
}

// stop cancels consume of p; released finishes the handover when it has
// returned.
func (r *run) stop(p int, why string) {
	s := &r.slots[p]
	if s.state != running {
		return
	}
	s.cancel()
	s.state, s.stopAt = stopping, time.Now()
	r.log.Info("partition stopping", "partition", p, "why", why)
}

// released runs once consume of p has returned: nothing of p is held any
// more, so the pin and the claim can go, in that order.
func (r *run) released(p int) {
	s := &r.slots[p]
	took := time.Since(s.stopAt)
	if !s.lost {
		ctx, cancel := r.opCtx()
		if err := r.stream.UnpinConsumer(ctx, r.m.g.Consumer(p), r.m.g.PriorityGroup); err != nil {
			r.log.Warn("partition: unpin failed; the next owner waits for PinnedTTL", "partition", p, "err", err)
		}
		if err := r.kv.Delete(ctx, r.claimKey(p), jetstream.LastRevision(s.rev)); err != nil {
			r.log.Warn("partition: release failed; the claim expires with the lease", "partition", p, "err", err)
		}
		cancel()
		r.met.event("released")
	}
	r.met.release.Observe(took.Seconds())
	r.log.Info("partition released", "partition", p, "took", took, "lost", s.lost)
	*s = slot{nextTry: s.nextTry}
}

// heartbeat refreshes this member's record and claims, and fences the
// partitions whose claim it could not refresh for too long: another
// member may take them once the claim expires, and by then this member
// must hold nothing of them.
func (r *run) heartbeat() {
	ctx, cancel := r.opCtx()
	defer cancel()
	self := []byte(r.m.o.Instance)
	// Claims count from before the writes: the server's lease starts
	// when it stores them, a little later.
	now := time.Now()
	if !r.leaving {
		if _, err := r.kv.Put(ctx, r.memberKey, self); err != nil {
			if r.beatOK {
				r.log.Warn("partition: heartbeat failed", "err", err)
			}
			r.beatOK = false
		} else {
			r.beatOK = true
		}
	}
	for p := range r.slots {
		s := &r.slots[p]
		if s.state == idle || s.lost {
			continue
		}
		rev, err := r.kv.Update(ctx, r.claimKey(p), self, s.rev)
		switch {
		case err == nil:
			s.rev, s.refreshed = rev, now
		case errors.Is(err, jetstream.ErrKeyRevisionMismatch) || errors.Is(err, jetstream.ErrKeyNotFound):
			s.lost = true
			r.met.event("lost")
			r.stop(p, "claim lost")
		case now.Sub(s.refreshed) < 2*r.beat:
			r.log.Warn("partition: claim refresh failed", "partition", p, "err", err)
		}
		if s.state == running && now.Sub(s.refreshed) >= r.fence {
			r.met.event("fenced")
			r.log.Error("partition: claim not refreshed in time; stopping before it can expire", "partition", p, "since", now.Sub(s.refreshed))
			r.stop(p, "fenced")
		}
		if s.state == stopping && !s.overrun && now.Sub(s.stopAt) > r.m.o.Grace {
			s.overrun = true
			r.met.event("overrun")
			r.log.Warn("partition: consumer still stopping after the grace period; the partition waits for it", "partition", p, "since", now.Sub(s.stopAt))
		}
	}
	r.met.members.Set(float64(len(r.live())))
}

// leave announces the departure, so that the others reassign at once, and
// stops every partition; the loop returns when all are released.
func (r *run) leave() {
	r.leaving = true
	ctx, cancel := r.opCtx()
	defer cancel()
	if err := r.kv.Delete(ctx, r.memberKey); err != nil {
		r.log.Warn("partition: leave failed; the record expires with the lease", "err", err)
	}
}

func (r *run) allIdle() bool {
	for _, s := range r.slots {
		if s.state != idle {
			return false
		}
	}
	return true
}

func (r *run) publishHeld() {
	var held []int
	for p, s := range r.slots {
		if s.state == running {
			held = append(held, p)
		}
	}
	r.m.held.Store(&held)
	r.met.owned.Set(float64(len(held)))
}
