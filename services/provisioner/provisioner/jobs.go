package provisioner

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/cactus-comments/appservice/pkg/bus"
	"github.com/cactus-comments/appservice/pkg/matrix"
	"github.com/cactus-comments/appservice/pkg/mxid"
	"github.com/cactus-comments/appservice/pkg/power"
	"github.com/cactus-comments/appservice/pkg/registry"
	"github.com/cactus-comments/appservice/pkg/worker"
)

// Job is one unit of fan-out work (see bus.Job, its wire form shared with
// the gateway, which queues resolve jobs for queries nobody answered).
type Job = bus.Job

// Job kinds (see bus.JobMember and the others).
const (
	KindMember  = bus.JobMember
	KindPower   = bus.JobPower
	KindSync    = bus.JobSync
	KindResolve = bus.JobResolve
)

// publishJob queues one job and waits for its ack.
func (p *Provisioner) publishJob(ctx context.Context, j Job) error {
	m, err := j.Msg()
	if err != nil {
		return err
	}
	if _, err := p.rt.JS.PublishMsg(ctx, m); err != nil {
		return fmt.Errorf("publish %s job for %s: %w", j.Kind, j.Room, err)
	}
	p.m.jobsPublished.WithLabelValues(j.Kind).Inc()
	return nil
}

// awaitAck waits for an asynchronous publish's ack.
func awaitAck(ctx context.Context, f jetstream.PubAckFuture) (*jetstream.PubAck, error) {
	select {
	case a := <-f.Ok():
		return a, nil
	case err := <-f.Err():
		return nil, err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// fanOut queues jobs with at most PublishWindow awaiting their acks, and
// returns once every one is stored. progress is called now and then, so a
// handler can keep its message while publishing thousands.
func (p *Provisioner) fanOut(ctx context.Context, jobs []Job, progress func()) error {
	if len(jobs) == 0 {
		return nil
	}
	start := time.Now()
	wait := func(f jetstream.PubAckFuture) error { _, err := awaitAck(ctx, f); return err }
	w := p.opts.PublishWindow
	kind, site := jobs[0].Kind, jobs[0].Site
	futures := make([]jetstream.PubAckFuture, len(jobs))
	for i, j := range jobs {
		if i >= w {
			if err := wait(futures[i-w]); err != nil {
				return fmt.Errorf("fan-out: job %d of %d: %w", i-w, len(jobs), err)
			}
		}
		m, err := j.Msg()
		if err != nil {
			return err
		}
		if futures[i], err = p.pub.PublishMsgAsync(m); err != nil {
			return fmt.Errorf("fan-out: job %d of %d: %w", i, len(jobs), err)
		}
		if (i+1)%1000 == 0 {
			if progress != nil {
				progress()
			}
			p.log.Info("fan-out publishing", "kind", kind, "site", site, "published", i+1, "total", len(jobs))
		}
	}
	for _, f := range futures[max(0, len(futures)-w):] {
		if err := wait(f); err != nil {
			return fmt.Errorf("fan-out: %w", err)
		}
	}
	p.m.jobsPublished.WithLabelValues(kind).Add(float64(len(jobs)))
	p.log.Info("fan-out queued", "kind", kind, "site", site, "jobs", len(jobs), "took", time.Since(start))
	return nil
}

// handleJob runs one job from the jobs stream.
func (p *Provisioner) handleJob(ctx context.Context, m jetstream.Msg) error {
	var j Job
	if err := json.Unmarshal(m.Data(), &j); err != nil {
		p.m.jobs.WithLabelValues("unknown", "failed").Inc()
		return worker.Permanent(fmt.Errorf("undecodable job: %w", err))
	}
	if wait := time.Until(j.NotBefore); wait > 0 {
		return worker.NotDue(wait)
	}
	attempt := worker.Attempt(ctx)
	if j.Kind == KindResolve {
		did, err := p.resolveAlias(ctx, j, m)
		return p.jobDone(ctx, j, did, err, attempt)
	}
	room, err := mxid.ParseRoomID(j.Room)
	if err != nil {
		p.m.jobs.WithLabelValues(j.Kind, "failed").Inc()
		return worker.Permanent(fmt.Errorf("job with a bad room id: %w", err))
	}
	var did bool
	switch j.Kind {
	case KindMember:
		did, err = p.convergeMember(ctx, j, room, j.Recheck || worker.Retried(ctx))
	case KindPower:
		did, err = p.convergePower(ctx, j, room)
	case KindSync:
		did, err = p.syncBans(ctx, j, room)
	default:
		err = worker.Permanent(fmt.Errorf("unknown job kind %q", j.Kind))
	}
	return p.jobDone(ctx, j, did, err, attempt)
}

// jobDone counts a job's outcome and maps its error onto the retry rules.
func (p *Provisioner) jobDone(ctx context.Context, j Job, did bool, err error, attempt int) error {
	log := p.log.With("kind", j.Kind, "site", j.Site, "room_id", j.Room, "cause", j.Cause, "attempt", attempt)
	if err != nil {
		err = classify(err)
		outcome := "retried"
		if worker.IsPermanent(err) || worker.LastAttempt(ctx) {
			outcome = "failed"
		}
		p.m.jobs.WithLabelValues(j.Kind, outcome).Inc()
		return err
	}
	outcome := "done"
	if !did {
		outcome = "noop"
	}
	p.m.jobs.WithLabelValues(j.Kind, outcome).Inc()
	log.Debug("job finished", "outcome", outcome)
	if n := p.jobsDone.Add(1); n%1000 == 0 {
		pending, _ := p.pendingJobs(ctx)
		p.log.Info("fan-out progress", "jobs_done_here", n, "jobs_pending_all", pending)
	}
	return nil
}

// resolveAlias looks up the alias of a comment room whose creation had an
// unknown outcome. A room found is recorded, and gets the site's bans (a
// room found recorded gets them too). A
// room not found may still be on its way (the homeserver can take longer
// than our request timeout), so the lookup is repeated for a while before
// the job concludes that nothing was created; the next visitor's query
// then creates it.
func (p *Provisioner) resolveAlias(ctx context.Context, j Job, m jetstream.Msg) (bool, error) {
	alias, err := mxid.ParseRoomAlias(j.Alias)
	if err != nil {
		return false, worker.Permanent(fmt.Errorf("resolve job with a bad alias: %w", err))
	}
	if r, err := p.reg.Room(ctx, j.Site, j.Section); err == nil {
		// Recorded (by the query itself, or by another visitor's query).
		// The query went unanswered, so whoever recorded it may have died
		// halfway through the room's bans: bring them up to the site's.
		id, err := mxid.ParseRoomID(r.RoomID)
		if err != nil {
			return false, worker.Permanent(fmt.Errorf("resolve job: recorded room of %s has a bad id: %w", j.Alias, err))
		}
		p.log.Info("resolve job: room already recorded; checking its bans", "alias", j.Alias, "room_id", r.RoomID)
		return p.syncBans(ctx, Job{Kind: KindSync, Site: j.Site, Room: r.RoomID, Cause: j.Cause}, id)
	}
	roomID, err := p.hs.ResolveAlias(ctx, alias)
	if matrix.IsNotFound(err) {
		stored := time.Now()
		if md, merr := m.Metadata(); merr == nil {
			stored = md.Timestamp
		}
		if time.Since(stored) < p.resolveWindow() {
			// Not the homeserver's 404 itself: that would read as a
			// permanent refusal.
			return false, worker.RetryAfter(fmt.Errorf("alias %s not there yet (%v)", j.Alias, err), p.resolveWindow()/8)
		}
		p.log.Info("resolve job: the room was never created", "alias", j.Alias)
		return false, nil
	}
	if err != nil {
		return false, err
	}
	room := registry.Room{Site: j.Site, Section: j.Section, RoomID: roomID.String(), Alias: j.Alias}
	if err := p.reg.PutRoom(ctx, room); err != nil {
		return false, err
	}
	p.log.Info("resolve job: room created by a createRoom whose answer was lost; recorded", "alias", j.Alias, "room_id", roomID.String())
	return p.syncBans(ctx, Job{Kind: KindSync, Site: j.Site, Room: roomID.String(), Cause: j.Cause}, roomID)
}

// resolveWindow is how long a resolve job keeps looking for a room that
// may still be on its way.
func (p *Provisioner) resolveWindow() time.Duration {
	return max(4*p.cfg.HomeserverTimeout, 30*time.Second)
}

// classify maps homeserver errors onto the worker's retry rules: a rate
// limit waits as long as the homeserver said, a refusal is permanent,
// anything else (5xx, network) backs off.
func classify(err error) error {
	if worker.IsPermanent(err) {
		return err
	}
	if errors.Is(err, registry.ErrNotFound) {
		return worker.Permanent(err)
	}
	var me *matrix.Error
	if errors.As(err, &me) {
		if matrix.IsLimitExceeded(err) && me.RetryAfter > 0 {
			return worker.RetryAfter(err, me.RetryAfter)
		}
		if matrix.IsPermanent(err) {
			return worker.Permanent(err)
		}
	}
	return err
}

// maxConverge bounds how often a job re-applies because the snapshot moved
// under it; beyond that the newer change's own jobs take over.
const maxConverge = 5

// convergeMember bans or unbans j.User in room as the snapshot says. Each
// pass re-reads the snapshot after acting: if another replica's job for a
// newer change ran in between, this job would otherwise land last with a
// stale decision. checkFirst (a redelivery) reads the membership first, so
// an action already done before a crash is not done twice.
func (p *Provisioner) convergeMember(ctx context.Context, j Job, room mxid.RoomID, checkFirst bool) (bool, error) {
	user, err := mxid.ParseUserID(j.User)
	if err != nil {
		return false, worker.Permanent(fmt.Errorf("job with a bad user id: %w", err))
	}
	site, err := p.reg.Site(ctx, j.Site)
	if err != nil {
		return false, err
	}
	did := false
	for range maxConverge {
		ban := site.Banned(j.User)
		if checkFirst {
			membership, err := p.membership(ctx, room, user)
			if err != nil {
				return did, err
			}
			if (membership == matrix.MembershipBan) == ban {
				return did, nil
			}
		}
		if err := p.setBan(ctx, site, room, user, ban); err != nil {
			return did, err
		}
		did = true
		now, err := p.reg.Site(ctx, j.Site)
		if err != nil {
			return did, err
		}
		if now.Banned(j.User) == ban {
			return did, nil
		}
		site, checkFirst = now, true
	}
	return did, nil
}

// setBan bans or unbans. A refusal that leaves the room as wanted (the
// user already unbanned, say) is success; other refusals are explained by
// the room's rules (see refusal).
func (p *Provisioner) setBan(ctx context.Context, site *registry.Site, room mxid.RoomID, user mxid.UserID, ban bool) error {
	var err error
	if ban {
		err = p.hs.Ban(ctx, room, user, "banned on this site")
	} else {
		err = p.hs.Unban(ctx, room, user, "")
	}
	if err == nil || !matrix.IsForbidden(err) {
		return err
	}
	membership, merr := p.membership(ctx, room, user)
	if merr == nil && (membership == matrix.MembershipBan) == ban {
		return nil
	}
	return p.refusal(ctx, site, room, user, ban, err)
}

// membership is user's membership in room, "" if they never had one.
func (p *Provisioner) membership(ctx context.Context, room mxid.RoomID, user mxid.UserID) (string, error) {
	var c struct {
		Membership string `json:"membership"`
	}
	err := p.hs.GetStateEvent(ctx, room, "m.room.member", user.String(), &c)
	if matrix.IsNotFound(err) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	return c.Membership, nil
}

// convergePower makes room's power levels follow the snapshot as far as
// the bot may, and reports what it may not change. Setting them only when
// they differ makes a redelivered job a no-op.
func (p *Provisioner) convergePower(ctx context.Context, j Job, room mxid.RoomID) (bool, error) {
	did := false
	for range maxConverge {
		site, err := p.reg.Site(ctx, j.Site)
		if err != nil {
			return did, err
		}
		if len(site.PowerLevels) == 0 {
			return did, nil
		}
		var want matrix.PowerLevels
		if err := json.Unmarshal(site.PowerLevels, &want); err != nil {
			return did, worker.Permanent(fmt.Errorf("site %q: stored power levels unreadable: %w", j.Site, err))
		}
		// The moderation room first: while the bot cannot read it (the
		// replacement of an upgrade, before the owner invites the bot) the
		// snapshot cannot be read without its creators, and when it is
		// this job's room, reading the room's levels would be refused.
		src, err := p.moderationRoom(ctx, site)
		if err != nil {
			return did, err
		}
		if src == nil {
			// It waits, as the site's power levels do.
			p.log.Info("power levels job waits until the bot can read the moderation room", "site", j.Site, "room_id", j.Room)
			return did, nil
		}
		cur, err := p.hs.GetPowerLevels(ctx, room)
		if err != nil {
			return did, err
		}
		dst, err := p.roomOf(ctx, site, room)
		if err != nil {
			return did, err
		}
		target, skipped := power.Reconcile(dst, cur, siteLevels(src, &want, dst), p.bot.String())
		for _, s := range skipped {
			p.m.plSkipped.Inc()
			p.log.Warn("power level change not applied: the bot may not make it", "site", j.Site, "room_id", j.Room, "change", s.String())
		}
		if !samePowerLevels(cur, target) {
			if _, err := p.hs.SetPowerLevels(ctx, room, target); err != nil {
				return did, err
			}
			did = true
		}
		now, err := p.reg.Site(ctx, j.Site)
		if err != nil {
			return did, err
		}
		if string(now.PowerLevels) == string(site.PowerLevels) {
			return did, nil
		}
	}
	return did, nil
}

// syncBans bans in room every user the snapshot bans and the room does not.
func (p *Provisioner) syncBans(ctx context.Context, j Job, room mxid.RoomID) (bool, error) {
	site, err := p.reg.Site(ctx, j.Site)
	if errors.Is(err, registry.ErrNotFound) {
		return false, nil // a site no longer registered has no bans to bring
	}
	if err != nil {
		return false, err
	}
	members, err := p.hs.Members(ctx, room, matrix.MembershipBan)
	if err != nil {
		return false, err
	}
	banned := map[string]bool{}
	for _, e := range members {
		if e.StateKey != nil {
			banned[*e.StateKey] = true
		}
	}
	var missing []string
	for _, u := range site.Bans {
		if !banned[u] {
			missing = append(missing, u)
		}
	}
	var n atomic.Int64
	err = forUsers(missing, func(user mxid.UserID) error {
		if err := p.setBan(ctx, site, room, user, true); err != nil {
			return fmt.Errorf("ban %s: %w", user, err)
		}
		n.Add(1)
		return nil
	})
	if n.Load() > 0 {
		attrs := []any{"site", j.Site, "room_id", j.Room, "banned", n.Load(), "cause", j.Cause}
		if strings.HasPrefix(j.Cause, settleCause) {
			p.log.Warn("a new room was left without some of its site's bans (whoever created it stopped while applying them); banned them now", attrs...)
		} else {
			p.log.Info("ban sync: banned users the room was missing", attrs...)
		}
	}
	return n.Load() > 0, err
}
