package provisioner

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/cactus-comments/appservice/pkg/bus"
	"github.com/cactus-comments/appservice/pkg/matrix"
	"github.com/cactus-comments/appservice/pkg/mxid"
	"github.com/cactus-comments/appservice/pkg/namespace"
	"github.com/cactus-comments/appservice/pkg/registry"
)

// errNoAnswer marks a query this replica cannot decide (the registry is
// unreachable): it stays unanswered and the gateway answers 503, which
// makes the homeserver's visitor retry rather than see a false 404.
var errNoAnswer = errors.New("cannot decide")

// subscribeAliasQueries joins the provisioners' queue group. NATS calls the
// handler one message at a time, so each query runs in its own goroutine,
// at most AliasConcurrency at once; wg tracks them for shutdown.
func (p *Provisioner) subscribeAliasQueries(ctx context.Context, wg *sync.WaitGroup) (*nats.Subscription, error) {
	sem := make(chan struct{}, p.opts.AliasConcurrency)
	hctx := context.WithoutCancel(ctx)
	sub, err := p.rt.NC.QueueSubscribe(bus.SubjectAliasQuery, bus.QueueProvisioners, func(m *nats.Msg) {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			p.serveAliasQuery(hctx, m)
		})
	})
	if err != nil {
		return nil, fmt.Errorf("subscribe %s: %w", bus.SubjectAliasQuery, err)
	}
	// A queue subscription with a small pending limit would drop queries
	// under a burst; a query is tiny, so allow many.
	_ = sub.SetPendingLimits(64*1024, 64<<20)
	return sub, nil
}

func (p *Provisioner) serveAliasQuery(ctx context.Context, m *nats.Msg) {
	start := time.Now()
	var q bus.AliasQuery
	if err := json.Unmarshal(m.Data, &q); err != nil || q.Alias == "" {
		p.m.aliasQueries.WithLabelValues("bad_request").Inc()
		p.reply(m, bus.AliasAnswer{Error: "malformed alias query"})
		return
	}
	ans, outcome, finish, err := p.answer(ctx, q.Alias)
	// The gateway waits for the answer only: the bookkeeping of a new
	// room (finish) follows it.
	defer finish()
	p.m.aliasLatency.Observe(time.Since(start).Seconds())
	p.m.aliasQueries.WithLabelValues(outcome).Inc()
	// Attributes rather than a derived logger: deriving one scrubs them
	// even when nothing is logged, on every query.
	attrs := []any{"alias", q.Alias, "outcome", outcome, "took", time.Since(start)}
	if errors.Is(err, errNoAnswer) {
		p.log.Error("alias query left unanswered", append(attrs, "err", err)...)
		return
	}
	if err != nil {
		p.log.Warn("alias query failed", append(attrs, "err", err)...)
	} else {
		p.log.Debug("alias query answered", attrs...)
	}
	p.reply(m, ans)
}

// aliasWorkBound bounds one alias query's work: every attempt of the
// createRoom at the homeserver's request timeout, then the bookkeeping.
func (p *Provisioner) aliasWorkBound() time.Duration {
	return p.cfg.AliasQueryTimeout + 4*p.cfg.HomeserverTimeout
}

func (p *Provisioner) reply(m *nats.Msg, ans bus.AliasAnswer) {
	b, _ := json.Marshal(ans)
	if err := m.Respond(b); err != nil {
		p.log.Warn("alias query reply failed", "err", err)
	}
}

// AliasQuery decides whether alias exists, creating its comment room if
// the alias names a section of a registered site, and returns once the new
// room's bookkeeping is done too. outcome is the metric label; an error
// wrapping errNoAnswer means no answer should be sent.
func (p *Provisioner) AliasQuery(ctx context.Context, alias string) (ans bus.AliasAnswer, outcome string, err error) {
	ans, outcome, finish, err := p.answer(ctx, alias)
	finish()
	return ans, outcome, err
}

// answer is AliasQuery returning as soon as the answer is known. The
// caller answers, then calls finish, which does what a new room still
// needs (see provision) and never returns before it is done.
func (p *Provisioner) answer(ctx context.Context, alias string) (ans bus.AliasAnswer, outcome string, finish func(), err error) {
	parsed, err := p.ns.Parse(alias)
	if err != nil {
		return bus.AliasAnswer{Error: "not a valid room alias"}, "not_comment_room", func() {}, nil
	}
	if parsed.Kind != namespace.Comments || !p.cfg.InNamespace(alias) {
		return bus.AliasAnswer{Error: "not a comment section alias of this service"}, "not_comment_room", func() {}, nil
	}
	// The work is not bounded by what the gateway waits for: a createRoom
	// the homeserver answers late has created the room all the same, and
	// the homeserver will not ask about the alias again, so the registry
	// write and the creation-time bans must happen anyway. The answer may
	// then come too late for the gateway; nobody needs it. But it is
	// bounded: acks that a lost connection never delivers are not waited
	// for beyond it.
	ctx, cancel := context.WithTimeout(ctx, p.aliasWorkBound())
	// One createRoom per alias per replica however many visitors ask at
	// once; other replicas meet M_ROOM_IN_USE.
	leader := false
	res, done := p.flights.do(parsed.Alias.String(), func() flightResult {
		leader = true
		return p.provision(ctx, parsed)
	})
	if !leader && res.outcome == "created" {
		// Another query for the alias created it: for this one it existed.
		res.outcome = "exists"
	}
	return res.ans, res.outcome, func() { done(); cancel() }, res.err
}

// provision creates the comment room of parsed if its site is registered.
// A created room's registry entries are sent before the answer and
// confirmed after it, with the rest of its bookkeeping (the result's
// then).
func (p *Provisioner) provision(ctx context.Context, parsed namespace.Parsed) flightResult {
	// The snapshot may be a little old: the revision check after
	// recording the room catches up with whatever it missed.
	site, rev, err := p.site(ctx, parsed.Site, p.sites.Load())
	if errors.Is(err, registry.ErrNotFound) {
		return flightResult{ans: bus.AliasAnswer{Error: fmt.Sprintf("no site %s is registered", namespace.Quote(parsed.Site))}, outcome: "unknown_site"}
	}
	if err != nil {
		return flightResult{outcome: "error", err: fmt.Errorf("%w: %w", errNoAnswer, err)}
	}
	pl, err := p.sitePowerLevels(ctx, site)
	if err != nil {
		return flightResult{ans: bus.AliasAnswer{Error: err.Error()}, outcome: "error", err: err}
	}
	src, err := p.moderationRoom(ctx, site)
	if err != nil {
		return flightResult{ans: bus.AliasAnswer{Error: err.Error()}, outcome: "error", err: err}
	}
	dst, err := p.newRoom(ctx)
	if err != nil {
		return flightResult{ans: bus.AliasAnswer{Error: "could not create the room"}, outcome: "error", err: err}
	}
	req := &matrix.CreateRoomRequest{
		Visibility:      matrix.VisibilityPrivate,
		RoomAliasName:   p.ns.CommentsLocalpart(parsed.Site, parsed.Section),
		Name:            fmt.Sprintf("%s comment section (%s)", parsed.Site, parsed.Section),
		CreationContent: map[string]any{"m.federate": true},
		InitialState: []matrix.StateEvent{
			{Type: "m.room.join_rules", Content: map[string]string{"join_rule": "public"}},
			{Type: "m.room.guest_access", Content: map[string]string{"guest_access": "can_join"}},
			{Type: "m.room.history_visibility", Content: map[string]string{"history_visibility": "world_readable"}},
		},
		PowerLevelContentOverride: siteLevels(src, pl, dst),
		RoomVersion:               dst.Version,
	}
	roomID, err := p.hs.CreateRoom(ctx, req)
	if matrix.ErrCode(err) == "M_UNSUPPORTED_ROOM_VERSION" {
		p.versions.forget()
	}
	if matrix.IsRoomInUse(err) {
		// Created by another replica, by an earlier attempt of ours, or
		// by hand: it exists, which is all the homeserver asked.
		ans, outcome, err := p.recordExisting(ctx, parsed)
		return flightResult{ans: ans, outcome: outcome, err: err}
	}
	if err != nil {
		msg := "could not create the room"
		var me *matrix.Error
		if errors.As(err, &me) && me.Message != "" {
			msg = me.Message
		}
		if !matrix.IsPermanent(err) {
			// A timeout, a lost connection or a 5xx: the room may exist
			// now. A job finds out later, and records it if it does.
			p.queueResolve(ctx, parsed)
		}
		return flightResult{ans: bus.AliasAnswer{Error: msg}, outcome: "error", err: fmt.Errorf("create room %s: %w", parsed.Alias, err)}
	}
	p.m.roomsCreated.Inc()
	room := registry.Room{Site: parsed.Site, Section: parsed.Section, RoomID: roomID.String(), Alias: parsed.Alias.String(), Create: &dst}
	// The room's registry entries go out now and are confirmed after the
	// answer: they share the connection the answer leaves on, so the
	// server has them before the gateway has the answer. Should one not be
	// stored (the server refused it, or lost it before storing), a
	// resolve job records the room; the registry can also be rebuilt
	// from the homeserver.
	acks, err := p.sendRoom(room)
	if err != nil {
		p.log.Error("created room not recorded; a resolve job will record it", "room_id", roomID.String(), "err", err)
		p.queueResolve(ctx, parsed)
	}
	// The bans the snapshot knows, before the answer: the visitor whose
	// join asked for the room gets in only after them. Should this
	// replica die while they go out, and the gateway that asked with it
	// (so that no unanswered query queues a resolve job), the room would
	// keep part of them: a ban sync queued first, due only after this
	// query's work could last, completes them; settleRoom deletes it.
	var net *safetyNet
	if len(site.Bans) > 0 {
		net = p.queueSafetyNet(parsed, roomID)
	}
	bansErr := p.banAll(ctx, roomID, site.Bans)
	then := func() {
		if acks != nil {
			p.settleRoom(ctx, parsed, site, rev, roomID, acks, net, bansErr)
		}
	}
	return flightResult{ans: bus.AliasAnswer{Exists: true}, outcome: "created", then: then}
}

// sendRoom publishes a new room's registry entries without waiting for
// their acks.
func (p *Provisioner) sendRoom(room registry.Room) ([]jetstream.PubAckFuture, error) {
	msgs, err := p.reg.RoomMsgs(room)
	if err != nil {
		return nil, err
	}
	acks := make([]jetstream.PubAckFuture, len(msgs))
	for i, m := range msgs {
		if acks[i], err = p.roomPub.PublishMsgAsync(m); err != nil {
			return nil, fmt.Errorf("record room %s: %w", room.RoomID, err)
		}
	}
	return acks, nil
}

// safetyNet is a ban sync job queued ahead of a new room's bans.
type safetyNet struct {
	job Job
	ack jetstream.PubAckFuture
}

// queueSafetyNet sends the ban sync job that completes a new room's bans
// if nobody else does (see provision), without waiting for its ack. It
// shares the connection of the room's registry entries, so the server
// has it before any ban goes out.
func (p *Provisioner) queueSafetyNet(parsed namespace.Parsed, room mxid.RoomID) *safetyNet {
	j := Job{Kind: KindSync, Site: parsed.Site, Room: room.String(), Cause: settleCause + room.String(),
		NotBefore: time.Now().Add(p.aliasWorkBound())}
	m, err := j.Msg()
	var f jetstream.PubAckFuture
	if err == nil {
		f, err = p.roomPub.PublishMsgAsync(m)
	}
	if err != nil {
		p.log.Warn("new room's ban sync not queued ahead of its bans", "room_id", room.String(), "err", err)
		return nil
	}
	return &safetyNet{job: j, ack: f}
}

// settleCause starts the cause of a new room's safety net.
const settleCause = "settle:"

// remove deletes the safety net once the room is settled; a net that
// stays (not stored, not deleted) only costs a check of the room's bans
// when it comes due.
func (n *safetyNet) remove(ctx context.Context, p *Provisioner) {
	if n == nil {
		return
	}
	a, err := awaitAck(ctx, n.ack)
	if err != nil {
		p.log.Warn("new room's ban sync was not stored ahead of its bans", "room_id", n.job.Room, "err", err)
		return
	}
	if err := p.jobStream.DeleteMsg(ctx, a.Sequence); err != nil {
		p.log.Debug("new room settled; its ban sync stays and will find nothing to do", "room_id", n.job.Room, "err", err)
	}
}

// settleRoom finishes a new room after the answer: it confirms the
// registry entries, then brings the room up to the site as it is now.
//
// A moderation change updates the site first and then lists its rooms;
// this records the room first and then reads the site; so either the
// change's fan-out reaches the new room or this read sees the change.
// The site is decoded only if it changed since the revision the room was
// created from. What changed since is applied here, like a fan-out
// reaching an existing room: bans the snapshot missed, unbans of users
// banned from it (a job, which unbans only if they are still unbanned),
// new power levels (a job).
func (p *Provisioner) settleRoom(ctx context.Context, parsed namespace.Parsed, site *registry.Site, rev uint64, room mxid.RoomID, acks []jetstream.PubAckFuture, net *safetyNet, bansErr error) {
	attrs := []any{"room_id", room.String(), "alias", parsed.Alias.String()}
	for _, f := range acks {
		if _, err := awaitAck(ctx, f); err != nil {
			p.log.Error("created room not recorded; a resolve job will record it", append(attrs, "err", err)...)
			// The resolve job records the room and applies the site's bans.
			p.queueResolve(ctx, parsed)
			return
		}
	}
	now, moved, err := p.reg.SiteIfMoved(ctx, parsed.Site, rev)
	if errors.Is(err, registry.ErrNotFound) {
		p.log.Warn("the room's site is no longer registered", attrs...)
		net.remove(ctx, p)
		return
	}
	if err != nil {
		// Unknown whether the site moved: converge the room with jobs.
		p.log.Warn("site not re-read after creating a room; queued jobs to bring the room up to it", append(attrs, "err", err)...)
		p.queueJobs(ctx, attrs, Job{Kind: KindSync, Site: parsed.Site, Room: room.String(), Cause: "create:" + room.String()},
			Job{Kind: KindPower, Site: parsed.Site, Room: room.String(), Cause: "create:" + room.String()})
		return
	}
	if !moved {
		now = site
	}
	var jobs []Job
	if string(now.PowerLevels) != string(site.PowerLevels) {
		// The room was created with the old power levels, and the
		// change's fan-out may have missed it.
		jobs = append(jobs, Job{Kind: KindPower, Site: parsed.Site, Room: room.String(), Cause: "create:" + room.String()})
	}
	for _, u := range site.Bans {
		if !now.Banned(u) {
			jobs = append(jobs, Job{Kind: KindMember, Site: parsed.Site, Room: room.String(), User: u, Cause: "create:" + room.String()})
		}
	}
	var missed []string
	for _, u := range now.Bans {
		if !site.Banned(u) {
			missed = append(missed, u)
		}
	}
	if err := errors.Join(bansErr, p.banAll(ctx, room, missed)); err != nil {
		p.log.Warn("bans of a new room incomplete; queued a sync job", append(attrs, "err", err)...)
		jobs = append(jobs, Job{Kind: KindSync, Site: parsed.Site, Room: room.String(), Cause: "create:" + room.String()})
	} else {
		net.remove(ctx, p)
	}
	p.queueJobs(ctx, attrs, jobs...)
}

// queueJobs queues a new room's follow-up jobs, logging what it could not
// queue.
func (p *Provisioner) queueJobs(ctx context.Context, attrs []any, jobs ...Job) {
	for _, j := range jobs {
		if err := p.publishJob(ctx, j); err != nil {
			p.log.Error("job for a new room not queued: the room may lag behind the site until its next change", append(attrs, "kind", j.Kind, "user", j.User, "err", err)...)
		}
	}
}

// recordExisting makes sure an alias that already exists is in the
// registry, at the cost of one alias resolution (only when the registry
// does not have it yet).
func (p *Provisioner) recordExisting(ctx context.Context, parsed namespace.Parsed) (bus.AliasAnswer, string, error) {
	ans := bus.AliasAnswer{Exists: true}
	if _, err := p.reg.Room(ctx, parsed.Site, parsed.Section); err == nil {
		return ans, "exists", nil
	}
	roomID, err := p.hs.ResolveAlias(ctx, parsed.Alias)
	if err != nil {
		// The homeserver said the alias is taken; our bookkeeping failing
		// does not change that answer.
		p.log.Warn("existing comment room not recorded", "alias", parsed.Alias.String(), "err", err)
		return ans, "exists", nil
	}
	room := registry.Room{Site: parsed.Site, Section: parsed.Section, RoomID: roomID.String(), Alias: parsed.Alias.String()}
	if room.Create, err = p.existingRoom(ctx, roomID); err != nil {
		// Recorded anyway: its version is read when a job needs it.
		p.log.Warn("version of an existing comment room not read", "alias", parsed.Alias.String(), "err", err)
	}
	if err := p.reg.PutRoom(ctx, room); err != nil {
		p.log.Warn("existing comment room not recorded", "alias", parsed.Alias.String(), "err", err)
		return ans, "exists", nil
	}
	// Created by an attempt whose answer we never saw: it never got the
	// site's bans either.
	if err := p.publishJob(ctx, Job{Kind: KindSync, Site: parsed.Site, Room: roomID.String(), Cause: "found:" + roomID.String()}); err != nil {
		p.log.Error("existing comment room recorded, but its ban sync not queued", "room_id", roomID.String(), "err", err)
	}
	p.log.Info("existing comment room recorded; its bans follow", "alias", parsed.Alias.String(), "room_id", roomID.String())
	return ans, "exists", nil
}

// queueResolve hands an alias whose createRoom had an unknown outcome to
// a job that looks it up later (see resolveAlias).
func (p *Provisioner) queueResolve(ctx context.Context, parsed namespace.Parsed) {
	// The query's own time may be up: that is often why the outcome is
	// unknown.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	j := bus.ResolveJob(parsed.Site, parsed.Section, parsed.Alias.String())
	if err := p.publishJob(ctx, j); err != nil {
		p.log.Error("createRoom outcome unknown and its resolve job not queued: if the room exists it lacks the registry entry and the site's bans until a registry rebuild",
			"alias", parsed.Alias.String(), "err", err)
		return
	}
	p.log.Warn("createRoom outcome unknown; a job will look the alias up", "alias", parsed.Alias.String())
}

// banAll bans users in a new room, several at a time.
func (p *Provisioner) banAll(ctx context.Context, room mxid.RoomID, users []string) error {
	return forUsers(users, func(user mxid.UserID) error {
		if err := p.hs.Ban(ctx, room, user, "banned on this site"); err != nil {
			return fmt.Errorf("ban %s: %w", user, err)
		}
		return nil
	})
}

// bansAtOnce is how many bans (or unbans) of one room go out at once: a
// site with hundreds of bans gets them into a room in a fraction of the
// time, without flooding the homeserver.
const bansAtOnce = 8

// forUsers calls f for every user id in users, bansAtOnce at a time, and
// joins their errors. What is not a user id is skipped: nothing a
// homeserver would ban.
func forUsers(users []string, f func(mxid.UserID) error) error {
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
		sem  = make(chan struct{}, bansAtOnce)
	)
	for _, u := range users {
		user, err := mxid.ParseUserID(u)
		if err != nil {
			continue
		}
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			if err := f(user); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// site returns a registered site, falling back to the homeserver for a
// site created before the registry existed (and recording it). With a
// snapshot, the site comes from it (shared: not to be modified; possibly
// a little old) with its revision in the registry; without, from the
// bucket, with revision 0 (unknown), as does an imported site.
func (p *Provisioner) site(ctx context.Context, name string, snap *registry.SiteSnapshot) (*registry.Site, uint64, error) {
	var (
		s   *registry.Site
		rev uint64
		err error
	)
	if snap != nil {
		s, rev, err = snap.Site(ctx, name)
	} else {
		s, err = p.reg.Site(ctx, name)
	}
	if !errors.Is(err, registry.ErrNotFound) {
		return s, rev, err
	}
	s, err = registry.SiteFromHomeserver(ctx, p.hs, p.ns, p.bot, name)
	if errors.Is(err, registry.ErrNotFound) {
		p.m.registryMisses.WithLabelValues("absent").Inc()
		return nil, 0, err
	}
	if err != nil {
		return nil, 0, err
	}
	p.m.registryMisses.WithLabelValues("imported").Inc()
	if err := p.reg.CreateSite(ctx, s); errors.Is(err, registry.ErrExists) {
		// Someone recorded it meanwhile; theirs is as good or better.
		s, err := p.reg.Site(ctx, name)
		return s, 0, err
	} else if err != nil {
		p.log.Warn("site read from the homeserver not recorded", "site", name, "err", err)
	}
	p.log.Info("site imported from the homeserver", "site", name, "moderation_room", s.ModerationRoom)
	return s, 0, nil
}

// sitePowerLevels is the content new comment rooms start with (copied
// into their version): the moderation room's, read from the homeserver if
// the snapshot lacks it.
func (p *Provisioner) sitePowerLevels(ctx context.Context, site *registry.Site) (*matrix.PowerLevels, error) {
	var pl matrix.PowerLevels
	if len(site.PowerLevels) > 0 {
		if err := json.Unmarshal(site.PowerLevels, &pl); err != nil {
			return nil, fmt.Errorf("site %q: stored power levels unreadable: %w", site.Name, err)
		}
	} else {
		room, err := mxid.ParseRoomID(site.ModerationRoom)
		if err != nil {
			return nil, fmt.Errorf("site %q: bad moderation room id: %w", site.Name, err)
		}
		got, err := p.hs.GetPowerLevels(ctx, room)
		if err != nil {
			return nil, fmt.Errorf("site %q: moderation room power levels: %w", site.Name, err)
		}
		pl = *got
		raw, _ := json.Marshal(got)
		if _, err := p.reg.UpdateSite(ctx, site.Name, func(s *registry.Site) (bool, error) {
			if len(s.PowerLevels) > 0 {
				return false, nil
			}
			s.PowerLevels = raw
			return true, nil
		}); err != nil {
			p.log.Warn("power levels snapshot not recorded", "site", site.Name, "err", err)
		}
	}
	return &pl, nil
}

type flightResult struct {
	ans     bus.AliasAnswer
	outcome string
	err     error
	// then is the leader's work after the answer, nil if none.
	then func()
}

// flightGroup runs one call per key at a time and gives its result to every
// caller that arrived while it ran.
type flightGroup struct {
	mu sync.Mutex
	m  map[string]*flight
}

type flight struct {
	answered chan struct{}
	res      flightResult
	waiters  int // callers sharing the result, for tests and logs
}

// do returns fn's result, and finish, which the caller must call once it
// has answered. The caller whose fn ran (the leader) runs the result's
// then in finish, and only then frees the key: a query for the same alias
// meanwhile waits instead of creating the room again. Callers that joined
// the flight return as soon as fn has, with the same result and a finish
// that does nothing.
func (g *flightGroup) do(key string, fn func() flightResult) (res flightResult, finish func()) {
	g.mu.Lock()
	if f, ok := g.m[key]; ok {
		f.waiters++
		g.mu.Unlock()
		<-f.answered
		return f.res, func() {}
	}
	if g.m == nil {
		g.m = map[string]*flight{}
	}
	f := &flight{answered: make(chan struct{})}
	g.m[key] = f
	g.mu.Unlock()
	release := func() {
		g.mu.Lock()
		delete(g.m, key)
		g.mu.Unlock()
	}
	ok := false
	defer func() {
		if !ok { // fn panicked: free the waiters and the key
			close(f.answered)
			release()
		}
	}()
	f.res = fn()
	ok = true
	close(f.answered)
	return f.res, sync.OnceFunc(func() {
		defer release()
		if f.res.then != nil {
			f.res.then()
		}
	})
}
