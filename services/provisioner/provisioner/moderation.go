package provisioner

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/cactus-comments/appservice/pkg/event"
	"github.com/cactus-comments/appservice/pkg/matrix"
	"github.com/cactus-comments/appservice/pkg/mxid"
	"github.com/cactus-comments/appservice/pkg/namespace"
	"github.com/cactus-comments/appservice/pkg/registry"
	"github.com/cactus-comments/appservice/pkg/worker"
)

// handleModeration applies one moderation event to its site's snapshot
// and fans the change out as one job per room.
//
// Events are handled concurrently, in any order, on any replica: the
// snapshot keeps, for each decision (a user's ban, the power levels), the
// event-stream sequence of the event that made it, and an event only
// changes a decision that an older event made (registry.Site.DecideBan).
// So a slow or rate-limited site holds only its own events, and the
// snapshot still ends as in-order application would leave it. The jobs
// converge each room on the snapshot as it is when they run.
//
// Jobs are queued only when the snapshot changed, or when an earlier
// attempt may have changed it and died before queuing (a retry), or for a
// replay (a forced full re-run): an event that changes nothing, such as a
// moderator banning a user the site already bans, costs no homeserver
// call. The job ids derive from the event id, so a retry queues nothing
// twice within the jobs stream's duplicate window.
func (p *Provisioner) handleModeration(ctx context.Context, m jetstream.Msg) error {
	e, err := event.Decode(m.Data())
	if err != nil {
		return worker.Permanent(err)
	}
	if e.Type == "m.room.tombstone" {
		return p.handleTombstone(ctx, m, e)
	}
	// The bot only acts to propagate: its own bans and power levels coming
	// back are echoes, and acting on them would loop. This is checked
	// first because a fan-out over 10,000 rooms sends 10,000 echoes.
	if e.Sender == p.bot.String() {
		p.m.moderation.WithLabelValues("echo").Inc()
		return nil
	}
	log := p.log.With("event_id", e.EventID, "room_id", e.RoomID, "type", e.Type, "sender", e.Sender)

	room, err := p.lookupRoom(ctx, e.RoomID)
	if errors.Is(err, registry.ErrNotFound) {
		p.m.moderation.WithLabelValues("ignored").Inc()
		log.Debug("moderation event in a room that is not ours")
		return nil
	}
	if err != nil {
		return classify(err)
	}
	log = log.With("site", room.Site)
	seq := eventSequence(ctx, m)
	if room.ReplacedBy != "" && !room.ReplacedAfter(seq) {
		// The old room's events from after its tombstone: the replacement
		// is the site's room now. Its events from before the tombstone
		// (handled late: events are handled in any order) still count.
		p.m.moderation.WithLabelValues("ignored").Inc()
		log.Info("moderation event in an upgraded room ignored: its replacement is the site's room", "replaced_by", room.ReplacedBy)
		return nil
	}
	prev := ""
	if isLeaveBySomeoneElse(e) && e.PrevMembership() == "" {
		if prev, err = p.prevMembership(ctx, e, log); err != nil {
			return classify(err)
		}
	}
	d, err := decide(e, room.IsModeration(), prev)
	if err != nil {
		return worker.Permanent(err)
	}
	if d.kind == decideNothing {
		// Canonical alias changes only matter for rooms we did not know,
		// which lookupRoom has just recorded; kicks and self-leaves are
		// not propagated; power levels of one comment room stay there.
		p.m.moderation.WithLabelValues("ignored").Inc()
		return nil
	}
	if done, err := worker.CheckDone(ctx, e.EventID); err != nil {
		return classify(err)
	} else if done {
		p.m.moderation.WithLabelValues("duplicate").Inc()
		log.Info("moderation event handled before (stored again after the duplicate window); nothing to do")
		return nil
	}
	if d.kind == decidePowerLevels {
		// Power levels can only be copied into comment rooms knowing who
		// the moderation room's creators are. Until the bot can read the
		// room, the decision waits here, retried, keeping its sequence:
		// once applied it is ordered among the site's other power levels
		// as the homeserver ordered them.
		if known, err := p.knowModerationRoom(ctx, room.Site, log); err != nil {
			return classify(err)
		} else if !known {
			return errDeferred
		}
	}
	p.m.moderation.WithLabelValues(d.action()).Inc()

	taken, changed := false, false
	if _, err := p.reg.UpdateSite(ctx, room.Site, func(s *registry.Site) (bool, error) {
		taken, changed = d.apply(s, seq)
		return taken, nil
	}); err != nil {
		return classify(err)
	}
	replay := worker.Replay(ctx)
	if !changed && replay == nil && !worker.Retried(ctx) {
		log.Info("moderation change already in the site's snapshot, or a newer one is; nothing to propagate",
			"action", d.action(), "user", d.user, "newest", taken)
		return nil
	}
	except, cause, recheck := e.RoomID, e.EventID, worker.Retried(ctx)
	if replay != nil {
		// Every room again, with job ids of their own: jobs of the first
		// run may have been dead-lettered themselves.
		except, cause = "", fmt.Sprintf("%s/replay/%d", e.EventID, messageSequence(m))
	}
	targets, err := p.siteRooms(ctx, room.Site, except)
	if err != nil {
		return classify(err)
	}
	kind := KindMember
	if d.kind == decidePowerLevels {
		kind = KindPower
	}
	jobs := make([]Job, 0, len(targets))
	for _, t := range targets {
		jobs = append(jobs, Job{Kind: kind, Site: room.Site, Room: t, User: d.user, Cause: cause, Recheck: recheck})
	}
	log.Info("propagating", "action", d.action(), "user", d.user, "rooms", len(jobs), "replay", replay != nil)
	return p.fanOut(ctx, jobs, func() { _ = m.InProgress() })
}

// isLeaveBySomeoneElse reports a leave caused by another user: a kick or
// an unban, which only the previous membership tells apart.
func isLeaveBySomeoneElse(e *event.Event) bool {
	return e.Type == "m.room.member" && e.StateKey != nil &&
		e.Membership() == matrix.MembershipLeave && e.Sender != *e.StateKey
}

// prevMembership is the membership a member event replaced when the event
// as pushed does not say: Synapse leaves unsigned.prev_content out of the
// events its recoverer resends after a failed push, Dendrite out of every
// push. The homeserver serves the event with it to clients. "" when it
// cannot tell either (a refusal, or no earlier membership): the event is
// then taken as "not banned as of this event".
func (p *Provisioner) prevMembership(ctx context.Context, e *event.Event, log *slog.Logger) (string, error) {
	room, err := mxid.ParseRoomID(e.RoomID)
	if err != nil {
		return "", nil
	}
	id, err := mxid.ParseEventID(e.EventID)
	if err != nil {
		return "", nil
	}
	ev, err := p.hs.EventContext(ctx, room, id)
	switch {
	case err == nil:
		return ev.PrevMembership(), nil
	case matrix.IsPermanent(err):
		log.Warn("previous membership unknown; taking the leave as not banned from now on", "err", err)
		return "", nil
	}
	return "", err
}

// errDeferred is the transient failure of a power levels decision that
// waits until the bot can read the site's moderation room.
var errDeferred = errors.New("power levels deferred: the bot cannot read the site's moderation room yet")

// eventSequence is the event-stream sequence that orders the decision of
// the message's event: the original's for a replay, so that replaying an
// old ban after a newer unban cannot ban again.
func eventSequence(ctx context.Context, m jetstream.Msg) uint64 {
	if o := worker.Replay(ctx); o != nil {
		return o.Sequence
	}
	return messageSequence(m)
}

func messageSequence(m jetstream.Msg) uint64 {
	if md, err := m.Metadata(); err == nil {
		return md.Sequence.Stream
	}
	return 0
}

// What a moderation event decides for its site.
const (
	decideNothing = iota
	decideBan
	decidePowerLevels
)

type decision struct {
	kind        int
	user        string
	banned      bool
	powerLevels json.RawMessage // canonical JSON
}

func (d decision) action() string {
	switch {
	case d.kind == decidePowerLevels:
		return "power_levels"
	case d.kind == decideBan && d.banned:
		return "ban"
	case d.kind == decideBan:
		return "unban"
	}
	return "ignored"
}

// decide reads what a moderation event means for its site, from the event
// alone, so that it does not depend on the order events are handled in.
//
// A leave caused by someone else is an unban when the user was banned
// before, and a kick otherwise, which is not propagated. Homeservers say
// which in unsigned.prev_content; when it is missing, the event is taken
// as "not banned as of this event": if the user was banned that is the
// unban, and if not it changes nothing, which is what a kick changes in
// the site's ban list either way.
//
// prev is the membership the homeserver says the event replaced when the
// event as pushed does not carry it ("" when unknown).
func decide(e *event.Event, inModerationRoom bool, prev string) (decision, error) {
	switch {
	case e.Type == "m.room.member" && e.StateKey != nil:
		user := *e.StateKey
		// Content that is no membership is refused, to be dead-lettered:
		// taken as "nothing to do" it would vanish unseen.
		// The membership is all a decision reads: a reason or display
		// name of the wrong type does not undo a ban the homeserver
		// applied (its auth rules read only the membership).
		membership, ok := e.MembershipField()
		if !ok {
			return decision{}, errors.New("unreadable membership: content.membership is missing or not a string")
		}
		switch membership {
		case matrix.MembershipBan:
			return decision{kind: decideBan, user: user, banned: true}, nil
		case matrix.MembershipLeave:
			if e.Sender == user {
				return decision{}, nil
			}
			if p := e.PrevMembership(); p != "" {
				prev = p
			}
			if prev != "" && prev != matrix.MembershipBan {
				return decision{}, nil
			}
			return decision{kind: decideBan, user: user, banned: false}, nil
		}
	case e.Type == "m.room.power_levels" && e.StateKeyIs("") && inModerationRoom:
		// Power levels set in one comment room stay there, as in the
		// original: the moderation room is where a site's are set.
		var pl matrix.PowerLevels
		if err := event.DecodeContent(e.Content, &pl); err != nil {
			return decision{}, fmt.Errorf("unreadable power levels: %w", err)
		}
		c, err := canonicalJSON(&pl)
		if err != nil {
			return decision{}, err
		}
		return decision{kind: decidePowerLevels, powerLevels: c}, nil
	}
	return decision{}, nil
}

// apply records d in the site's snapshot as of the event with stream
// sequence seq (see registry.Site.DecideBan).
func (d decision) apply(s *registry.Site, seq uint64) (taken, changed bool) {
	switch d.kind {
	case decideBan:
		return s.DecideBan(d.user, d.banned, seq)
	case decidePowerLevels:
		// Stored power levels may come from the homeserver verbatim: the
		// same content must compare equal whatever its spelling.
		var old matrix.PowerLevels
		if len(s.PowerLevels) > 0 && json.Unmarshal(s.PowerLevels, &old) == nil {
			if c, err := canonicalJSON(&old); err == nil {
				s.PowerLevels = c
			}
		}
		return s.DecidePowerLevels(d.powerLevels, seq)
	}
	return false, false
}

// siteRooms lists every room of a site (moderation room and comment rooms)
// except the one the change came from.
func (p *Provisioner) siteRooms(ctx context.Context, siteName, except string) ([]string, error) {
	site, err := p.reg.Site(ctx, siteName)
	if err != nil {
		return nil, err
	}
	rooms, err := p.reg.Rooms(ctx, siteName)
	if err != nil {
		return nil, err
	}
	out := make([]string, 0, len(rooms)+1)
	if site.ModerationRoom != "" && site.ModerationRoom != except {
		out = append(out, site.ModerationRoom)
	}
	for _, r := range rooms {
		if r.RoomID != except {
			out = append(out, r.RoomID)
		}
	}
	return out, nil
}

// lookupRoom finds which site a room belongs to. A room the registry does
// not know is looked up on the homeserver by its canonical alias, so that
// sites and rooms made before the registry existed (or lost with it) are
// moderated too; what is found is recorded.
func (p *Provisioner) lookupRoom(ctx context.Context, roomID string) (registry.Room, error) {
	room, err := p.reg.Lookup(ctx, roomID)
	if !errors.Is(err, registry.ErrNotFound) {
		return room, err
	}
	id, perr := mxid.ParseRoomID(roomID)
	if perr != nil {
		return registry.Room{}, err
	}
	var c struct {
		Alias string `json:"alias"`
	}
	if herr := p.hs.GetStateEvent(ctx, id, "m.room.canonical_alias", "", &c); herr != nil {
		if matrix.IsNotFound(herr) || matrix.IsForbidden(herr) {
			return registry.Room{}, err
		}
		return registry.Room{}, herr
	}
	parsed, perr := p.ns.Parse(c.Alias)
	if perr != nil || parsed.Kind == namespace.NotOurs {
		return registry.Room{}, err
	}
	site, _, serr := p.site(ctx, parsed.Site, nil)
	if serr != nil {
		return registry.Room{}, serr
	}
	if parsed.Kind == namespace.Moderation {
		if site.ModerationRoom != roomID {
			return registry.Room{}, err
		}
		return registry.Room{Site: site.Name, RoomID: roomID}, nil
	}
	room = registry.Room{Site: site.Name, Section: parsed.Section, RoomID: roomID, Alias: parsed.Alias.String()}
	if err := p.reg.PutRoom(ctx, room); err != nil {
		return registry.Room{}, err
	}
	p.m.registryMisses.WithLabelValues("imported").Inc()
	p.log.Info("comment room imported from the homeserver", "site", site.Name, "room_id", roomID)
	return room, nil
}
