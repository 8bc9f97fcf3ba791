package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cactus-comments/appservice/pkg/hssim"
	"github.com/cactus-comments/appservice/pkg/matrix"
	"github.com/cactus-comments/appservice/pkg/mxid"
	"github.com/cactus-comments/appservice/pkg/power"
	"github.com/cactus-comments/appservice/pkg/registry"
	"github.com/cactus-comments/appservice/services/provisioner/provisioner"
)

func stateString(t *testing.T, h *Harness, room mxid.RoomID, typ, key string) string {
	t.Helper()
	raw, ok := h.HS.StateEvent(room.String(), typ, key)
	if !ok {
		t.Fatalf("room %s has no %s state", room, typ)
	}
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	field := map[string]string{
		"m.room.join_rules": "join_rule", "m.room.guest_access": "guest_access",
		"m.room.history_visibility": "history_visibility", "m.room.name": "name",
		"m.room.canonical_alias": "alias",
	}[typ]
	s, _ := m[field].(string)
	return s
}

func TestVisitorJoinCreatesCommentRoom(t *testing.T) {
	t.Parallel()
	// Each homeserver escapes the alias in the query path its own way;
	// Synapse leaves a '/' of the section unescaped.
	for _, tc := range []struct {
		mode    hssim.Mode
		section string
	}{
		{hssim.Synapse, "posts-hello"},
		{hssim.Synapse, "/posts/hello"},
		{hssim.Dendrite, "/posts/hello"},
		{hssim.Conduit, "/Posts/Hello.html"},
	} {
		t.Run(string(tc.mode)+" "+tc.section, func(t *testing.T) {
			t.Parallel()
			visitorJoinCreatesCommentRoom(t, tc.mode, tc.section)
		})
	}
}

func visitorJoinCreatesCommentRoom(t *testing.T, mode hssim.Mode, section string) {
	h := Start(t, Options{Mode: mode})
	owner := h.User("owner")
	site := h.RegisterSite("blog.example.org", owner)
	spammer := h.User("spammer")
	// The site bans the spammer before the room exists: the new room must
	// start with the ban.
	banInSnapshot(t, h, site, owner, spammer)

	h.HS.ResetCalls()
	visitor := h.User("visitor")
	alias := h.CommentAlias(site.Name, section)
	room := h.Join(visitor, alias)

	for _, c := range []struct{ typ, want string }{
		{"m.room.join_rules", "public"},
		{"m.room.guest_access", "can_join"},
		{"m.room.history_visibility", "world_readable"},
		{"m.room.name", "blog.example.org comment section (" + section + ")"},
		{"m.room.canonical_alias", alias.String()},
	} {
		if got := stateString(t, h, room, c.typ, ""); got != c.want {
			t.Errorf("%s = %q, want %q", c.typ, got, c.want)
		}
	}
	if got := h.HS.PowerLevel(room.String(), owner.ID.String()); got != 100 {
		t.Errorf("owner's level in the comment room = %d, want the moderation room's 100", got)
	}
	if got := h.HS.Membership(room.String(), spammer.ID.String()); got != "ban" {
		t.Errorf("spammer's membership in the new room = %q, want ban", got)
	}
	if got := h.HS.Membership(room.String(), visitor.ID.String()); got != "join" {
		t.Errorf("visitor's membership = %q, want join", got)
	}
	// The query's cost with a warm registry: one createRoom and the bans,
	// no lookups on the homeserver.
	for ep, want := range map[string]int{hssim.EPCreateRoom: 1, hssim.EPBan: 1, hssim.EPStateGet: 0, hssim.EPDirectoryGet: 0, hssim.EPStateAll: 0} {
		if got := h.HS.Calls(ep); got != want {
			t.Errorf("homeserver calls to %s = %d, want %d", ep, got, want)
		}
	}
	// The registry entries leave before the answer and are stored a moment
	// later (the answer does not wait for their acks).
	if rec := recordedRoom(h, site.Name, section); rec.RoomID != room.String() {
		t.Errorf("registry room = %+v; want %s", rec, room)
	}
	if got, err := h.Registry.Lookup(h.Ctx, room.String()); err != nil || got.Site != site.Name {
		t.Errorf("registry lookup = %+v, %v", got, err)
	}

	// A second visitor finds the room; nothing is created again.
	second := h.User("second")
	if again := h.Join(second, alias); again != room {
		t.Errorf("second join went to %s, want %s", again, room)
	}
	if got := h.HS.Calls(hssim.EPCreateRoom); got != 1 {
		t.Errorf("createRoom calls after a second join = %d, want 1", got)
	}
}

func TestConcurrentFirstJoins(t *testing.T) {
	t.Parallel()
	h := Start(t, Options{Provisioners: 3})
	owner := h.User("owner")
	h.RegisterSite("news", owner)
	alias := h.CommentAlias("news", "front-page")
	const visitors = 20
	users := make([]*User, visitors)
	for i := range users {
		users[i] = h.User(fmt.Sprintf("v%02d", i))
	}
	rooms := make([]mxid.RoomID, visitors)
	errs := make([]error, visitors)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i, u := range users {
		wg.Go(func() {
			<-start
			rooms[i], errs[i] = u.Client.JoinRoom(h.Ctx, alias.String())
		})
	}
	close(start)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("visitor %d: %v", i, err)
		}
	}
	var withAlias []string
	for _, r := range h.HS.Rooms() {
		if raw, ok := h.HS.StateEvent(r, "m.room.canonical_alias", ""); ok && strings.Contains(string(raw), alias.String()) {
			withAlias = append(withAlias, r)
		}
	}
	if len(withAlias) != 1 {
		t.Fatalf("rooms with alias %s: %v, want exactly one", alias, withAlias)
	}
	for i, r := range rooms {
		if r.String() != withAlias[0] {
			t.Errorf("visitor %d joined %s, want %s", i, r, withAlias[0])
		}
	}
	if got := len(h.HS.JoinedMembers(withAlias[0])); got != visitors+1 {
		t.Errorf("joined members = %d, want %d visitors and the bot", got, visitors+1)
	}
	if rec := recordedRoom(h, "news", "front-page"); rec.RoomID != withAlias[0] {
		t.Errorf("registry room = %+v", rec)
	}
	// One room, so one query counts as having created it, whichever
	// replicas the others reached and whether they shared its answer.
	if n := metricValue(t, h, "cactus_provisioner_alias_queries_total", "outcome", "created"); n != 1 {
		t.Errorf("alias queries counted as created: %v, want 1 (rooms created: %v)", n, metricValue(t, h, "cactus_provisioner_rooms_created_total"))
	}
}

func TestUnregisteredSite(t *testing.T) {
	t.Parallel()
	h := Start(t, Options{})
	owner := h.User("owner")
	h.RegisterSite("known", owner)
	visitor := h.User("visitor")
	before := len(h.HS.Rooms())
	h.HS.ResetCalls()
	for _, alias := range []string{
		h.CommentAlias("unknown", "page").String(),
		// A site whose name is a prefix of a registered one is not it.
		h.CommentAlias("know", "page").String(),
	} {
		_, err := visitor.Client.JoinRoom(h.Ctx, alias)
		if !matrix.IsNotFound(err) {
			t.Errorf("join %s: err = %v, want not found", alias, err)
		}
	}
	if got := h.HS.Calls(hssim.EPCreateRoom); got != 0 {
		t.Errorf("createRoom calls = %d, want 0", got)
	}
	if got := len(h.HS.Rooms()); got != before {
		t.Errorf("rooms went from %d to %d", before, got)
	}
	if _, err := h.Registry.Site(h.Ctx, "unknown"); err == nil {
		t.Error("an unknown site was recorded")
	}
}

// siteWithRooms registers a site and has a visitor open n comment rooms.
func siteWithRooms(t *testing.T, h *Harness, name string, owner, visitor *User, n int) (*registry.Site, []mxid.RoomID) {
	t.Helper()
	site := h.RegisterSite(name, owner)
	rooms := make([]mxid.RoomID, n)
	for i := range rooms {
		rooms[i] = h.Join(visitor, h.CommentAlias(name, fmt.Sprintf("page%d", i)))
	}
	return site, rooms
}

func TestBanAndUnbanPropagate(t *testing.T) {
	t.Parallel()
	h := Start(t, Options{Provisioners: 2})
	owner := h.User("owner")
	spammer := h.User("spammer")
	foo, fooRooms := siteWithRooms(t, h, "foo", owner, spammer, 4)
	_, barRooms := siteWithRooms(t, h, "foobar", owner, spammer, 2)
	fooMod := mxid.MustRoomID(foo.ModerationRoom)
	all := append([]mxid.RoomID{fooMod}, fooRooms...)

	// The owner bans in one comment room: the moderation room and every
	// other comment room of foo follow; foobar's do not.
	if _, err := owner.Client.JoinRoom(h.Ctx, fooRooms[2].String()); err != nil {
		t.Fatal(err)
	}
	if err := owner.Client.Ban(h.Ctx, fooRooms[2], spammer.ID, "spam"); err != nil {
		t.Fatal(err)
	}
	h.WaitSim(func() bool {
		for _, r := range all {
			if h.HS.Membership(r.String(), spammer.ID.String()) != "ban" {
				return false
			}
		}
		return true
	}, 20*time.Second, "the ban in every room of foo")
	h.Quiesce(20 * time.Second)
	for _, r := range barRooms {
		if got := h.HS.Membership(r.String(), spammer.ID.String()); got != "join" {
			t.Errorf("foobar room %s: spammer is %q, want still join", r, got)
		}
	}
	s, err := h.Registry.Site(h.Ctx, "foo")
	if err != nil || !s.Banned(spammer.ID.String()) {
		t.Errorf("foo's snapshot does not ban the spammer: %+v %v", s, err)
	}
	// The echoes of the bot's own bans caused nothing more: one ban event
	// per room.
	for _, r := range all {
		if n := countMembership(h, r, spammer.ID, "ban"); n != 1 {
			t.Errorf("room %s has %d ban events, want 1", r, n)
		}
	}

	// The owner unbans in the moderation room: every comment room follows.
	if err := owner.Client.Unban(h.Ctx, fooMod, spammer.ID, ""); err != nil {
		t.Fatal(err)
	}
	h.WaitSim(func() bool {
		for _, r := range all {
			if h.HS.Membership(r.String(), spammer.ID.String()) == "ban" {
				return false
			}
		}
		return true
	}, 20*time.Second, "the unban in every room of foo")
	h.Quiesce(20 * time.Second)
	s, err = h.Registry.Site(h.Ctx, "foo")
	if err != nil || s.Banned(spammer.ID.String()) {
		t.Errorf("foo's snapshot still bans the spammer: %+v %v", s, err)
	}
	// A kick is not a moderation change to propagate.
	if _, err := spammer.Client.JoinRoom(h.Ctx, fooRooms[0].String()); err != nil {
		t.Fatal(err)
	}
	if _, err := spammer.Client.JoinRoom(h.Ctx, fooRooms[1].String()); err != nil {
		t.Fatal(err)
	}
	if _, err := owner.Client.JoinRoom(h.Ctx, fooRooms[0].String()); err != nil {
		t.Fatal(err)
	}
	if err := owner.Client.Kick(h.Ctx, fooRooms[0], spammer.ID, "calm down"); err != nil {
		t.Fatal(err)
	}
	h.Quiesce(20 * time.Second)
	if got := h.HS.Membership(fooRooms[1].String(), spammer.ID.String()); got != "join" {
		t.Errorf("after a kick elsewhere the spammer is %q in another room, want join", got)
	}
	if dl := h.DeadLetters(); len(dl) != 0 {
		t.Errorf("dead letters: %+v", dl)
	}
}

func countMembership(h *Harness, room mxid.RoomID, user mxid.UserID, membership string) int {
	n := 0
	for _, e := range h.HS.Timeline(room.String()) {
		if e.Type != "m.room.member" || e.StateKey == nil || *e.StateKey != user.String() {
			continue
		}
		var c struct {
			Membership string `json:"membership"`
		}
		if json.Unmarshal(e.Content, &c) == nil && c.Membership == membership {
			n++
		}
	}
	return n
}

func TestPowerLevelsWithSecondAdmin(t *testing.T) {
	t.Parallel()
	h := Start(t, Options{})
	owner := h.User("owner")
	alice := h.User("alice")
	bob := h.User("bob")
	site, rooms := siteWithRooms(t, h, "docs", owner, bob, 3)
	mod := mxid.MustRoomID(site.ModerationRoom)
	if err := owner.Client.Invite(h.Ctx, mod, alice.ID, ""); err != nil {
		t.Fatal(err)
	}
	if _, err := alice.Client.JoinRoom(h.Ctx, mod.String()); err != nil {
		t.Fatal(err)
	}

	// Step 1: the owner makes alice a second admin at 100, the bot's level.
	pl, err := owner.Client.GetPowerLevels(h.Ctx, mod)
	if err != nil {
		t.Fatal(err)
	}
	pl.SetUserLevel(alice.ID.String(), 100)
	if _, err := owner.Client.SetPowerLevels(h.Ctx, mod, pl); err != nil {
		t.Fatal(err)
	}
	h.WaitSim(func() bool {
		for _, r := range rooms {
			if h.HS.PowerLevel(r.String(), alice.ID.String()) != 100 {
				return false
			}
		}
		return true
	}, 20*time.Second, "alice at 100 in every comment room")

	// Step 2: alice steps down to 0 and makes bob a moderator in one
	// change. The bot cannot lower alice where she sits at its level; the
	// original then lost the whole change. Here bob's promotion applies and
	// alice's demotion is reported as skipped.
	pl, err = alice.Client.GetPowerLevels(h.Ctx, mod)
	if err != nil {
		t.Fatal(err)
	}
	pl.SetUserLevel(alice.ID.String(), 0)
	pl.SetUserLevel(bob.ID.String(), 50)
	if _, err := alice.Client.SetPowerLevels(h.Ctx, mod, pl); err != nil {
		t.Fatal(err)
	}
	h.WaitSim(func() bool {
		for _, r := range rooms {
			if h.HS.PowerLevel(r.String(), bob.ID.String()) != 50 {
				return false
			}
		}
		return true
	}, 20*time.Second, "bob at 50 in every comment room")
	h.Quiesce(20 * time.Second)
	// Where the bot is the room's creator (version 12) it is above alice
	// and carries her demotion too.
	creator := h.RoomOf(rooms[0]).PrivilegedCreators()
	for _, r := range rooms {
		if got := h.HS.PowerLevel(r.String(), alice.ID.String()); got != 100 && !creator {
			t.Errorf("room %s: alice at %d; the bot cannot change her level, want 100 kept", r, got)
		} else if got != 0 && creator {
			t.Errorf("room %s: alice at %d; the bot is the room's creator, want her demotion applied", r, got)
		}
		if got := h.HS.PowerLevel(r.String(), owner.ID.String()); got != 100 {
			t.Errorf("room %s: owner at %d, want 100", r, got)
		}
	}
	s, err := h.Registry.Site(h.Ctx, "docs")
	if err != nil {
		t.Fatal(err)
	}
	var snap matrix.PowerLevels
	if err := json.Unmarshal(s.PowerLevels, &snap); err != nil {
		t.Fatal(err)
	}
	if snap.UserLevel(bob.ID.String()) != 50 || snap.UserLevel(alice.ID.String()) != 0 {
		t.Errorf("snapshot = %+v, want bob 50 and alice 0 as in the moderation room", snap.Users)
	}
	if got := metricValue(t, h, "cactus_provisioner_power_level_changes_skipped_total"); got < float64(len(rooms)) && !creator {
		t.Errorf("skipped power level changes reported = %v, want at least %d", got, len(rooms))
	} else if got != 0 && creator {
		t.Errorf("skipped power level changes reported = %v, want none where the bot is the creator", got)
	}
}

// metricValue sums a counter or gauge over every service of the harness
// that has a runtime, optionally only series with the given label pairs.
func metricValue(t testing.TB, h *Harness, name string, labels ...string) float64 {
	t.Helper()
	h.mu.Lock()
	defer h.mu.Unlock()
	total := 0.0
	for _, s := range h.services {
		if s.RT == nil {
			continue
		}
		mfs, err := s.RT.Metrics.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() != name {
				continue
			}
		series:
			for _, m := range mf.GetMetric() {
				for i := 0; i+1 < len(labels); i += 2 {
					found := false
					for _, l := range m.GetLabel() {
						if l.GetName() == labels[i] && l.GetValue() == labels[i+1] {
							found = true
						}
					}
					if !found {
						continue series
					}
				}
				total += m.GetCounter().GetValue() + m.GetGauge().GetValue()
			}
		}
	}
	return total
}

// bulkRooms creates n comment rooms of site quickly (as the bot, recorded
// directly), for tests about sites with many rooms.
func bulkRooms(t testing.TB, h *Harness, site *registry.Site, n int) []mxid.RoomID {
	t.Helper()
	var pl matrix.PowerLevels
	if err := json.Unmarshal(site.PowerLevels, &pl); err != nil {
		t.Fatal(err)
	}
	rooms := make([]mxid.RoomID, n)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	errs := make(chan error, n)
	for i := range rooms {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			section := fmt.Sprintf("bulk%05d", i)
			r, err := h.Bot.CreateRoom(h.Ctx, &matrix.CreateRoomRequest{
				Visibility: matrix.VisibilityPrivate, RoomAliasName: h.NS.CommentsLocalpart(site.Name, section),
				Name: site.Name + " comment section (" + section + ")", PowerLevelContentOverride: &pl,
				InitialState: []matrix.StateEvent{{Type: "m.room.join_rules", Content: map[string]string{"join_rule": "public"}}},
			})
			if err != nil {
				errs <- err
				return
			}
			rooms[i] = r
			alias, _ := h.NS.CommentsAlias(site.Name, section)
			if err := h.Registry.PutRoom(h.Ctx, registry.Room{Site: site.Name, Section: section, RoomID: r.String(), Alias: alias.String()}); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	return rooms
}

func TestHomeserverErrorsRetried(t *testing.T) {
	t.Parallel()
	// No provisioner yet: the owner's ban is queued before the faults are
	// armed, so that only the fan-out meets them.
	h := Start(t, Options{Provisioners: -1})
	owner := h.User("owner")
	spammer := h.User("spammer")
	site := h.RegisterSite("flaky", owner)
	rooms := bulkRooms(t, h, site, 10)
	h.HS.ResetCalls()
	if err := owner.Client.Ban(h.Ctx, mxid.MustRoomID(site.ModerationRoom), spammer.ID, "spam"); err != nil {
		t.Fatal(err)
	}
	// Rate limits first (each waits as told), then a run of 5xx longer
	// than the client's own attempts, so jobs go back to the queue and
	// come again after a backoff.
	h.HS.InjectFault(hssim.Fault{Endpoint: hssim.EPBan, Status: 429, RetryAfter: 30 * time.Millisecond, Times: 4})
	h.HS.InjectFault(hssim.Fault{Endpoint: hssim.EPBan, Status: 502, Times: 8})
	h.StartProvisioner(provisioner.Options{})
	h.StartProvisioner(provisioner.Options{})
	h.WaitSim(func() bool {
		for _, r := range rooms {
			if h.HS.Membership(r.String(), spammer.ID.String()) != "ban" {
				return false
			}
		}
		return true
	}, 30*time.Second, "the ban in every room despite the errors")
	h.Quiesce(20 * time.Second)
	// The owner's own ban is one call; the fan-out is one per room plus a
	// retry per injected fault.
	if got, want := h.HS.Calls(hssim.EPBan), 1+len(rooms)+4+8; got != want {
		t.Errorf("ban calls = %d, want %d", got, want)
	}
	if got := metricValue(t, h, "cactus_worker_messages_total"); got == 0 {
		t.Error("no worker messages counted")
	}
	if dl := h.DeadLetters(); len(dl) != 0 {
		t.Errorf("dead letters: %+v", dl)
	}
}

func TestHomeserverForbiddenDeadLetters(t *testing.T) {
	t.Parallel()
	h := Start(t, Options{Provisioners: -1})
	owner := h.User("owner")
	spammer := h.User("spammer")
	site := h.RegisterSite("strict", owner)
	rooms := bulkRooms(t, h, site, 3)
	if err := owner.Client.Ban(h.Ctx, mxid.MustRoomID(site.ModerationRoom), spammer.ID, "spam"); err != nil {
		t.Fatal(err)
	}
	h.HS.InjectFault(hssim.Fault{Endpoint: hssim.EPBan, Status: 403, ErrCode: "M_FORBIDDEN", Times: 1})
	h.StartProvisioner(provisioner.Options{})
	h.Quiesce(20 * time.Second)
	banned := 0
	for _, r := range rooms {
		if h.HS.Membership(r.String(), spammer.ID.String()) == "ban" {
			banned++
		}
	}
	dl := h.DeadLetters()
	if banned != len(rooms)-1 || len(dl) != 1 {
		t.Fatalf("banned in %d of %d rooms, %d dead letters; want all but one and one", banned, len(rooms), len(dl))
	}
	d := dl[0]
	if d.Source != "provisioner-jobs" || !strings.Contains(d.Reason, "M_FORBIDDEN") || d.Delivered != 1 {
		t.Errorf("dead letter = source %q reason %q delivered %d", d.Source, d.Reason, d.Delivered)
	}
	var job struct{ Kind, Room, User string }
	if err := json.Unmarshal(d.Data, &job); err != nil || job.Kind != "member" || job.User != spammer.ID.String() {
		t.Errorf("dead letter data = %s (%v)", d.Data, err)
	}
}

func TestRegistryWipedAndRebuilt(t *testing.T) {
	t.Parallel()
	h := Start(t, Options{})
	owner := h.User("owner")
	other := h.User("other")
	visitor := h.User("visitor")
	spammer := h.User("spammer")
	a, _ := siteWithRooms(t, h, "alpha", owner, visitor, 3)
	siteWithRooms(t, h, "beta.example", other, visitor, 2)
	if err := owner.Client.Ban(h.Ctx, mxid.MustRoomID(a.ModerationRoom), spammer.ID, "spam"); err != nil {
		t.Fatal(err)
	}
	h.Quiesce(20 * time.Second)

	before := snapshotRegistry(t, h)
	if err := h.Registry.Wipe(h.Ctx); err != nil {
		t.Fatal(err)
	}
	if s, _ := h.Registry.Sites(h.Ctx); len(s) != 0 {
		t.Fatalf("wipe left %d sites", len(s))
	}
	rep, err := registry.Rebuild(h.Ctx, h.Registry, h.Bot, h.NS, h.BotID, h.Logger("rebuild"))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(rep.Sites, []string{"alpha", "beta.example"}) || rep.CommentRooms != 5 || len(rep.Skipped) != 0 {
		t.Errorf("report = %+v", rep)
	}
	after := snapshotRegistry(t, h)
	if before != after {
		t.Errorf("registry after rebuild differs:\nbefore: %s\nafter:  %s", before, after)
	}
	// The rebuilt registry works: a new section of alpha starts banned.
	room := h.Join(visitor, h.CommentAlias("alpha", "new"))
	if got := h.HS.Membership(room.String(), spammer.ID.String()); got != "ban" {
		t.Errorf("spammer in a room created after the rebuild: %q, want ban", got)
	}
}

// snapshotRegistry renders what the homeserver can give back: sites with
// owner, moderation room, bans and power levels, and every comment room.
func snapshotRegistry(t *testing.T, h *Harness) string {
	t.Helper()
	sites, err := h.Registry.Sites(h.Ctx)
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, s := range sites {
		var pl matrix.PowerLevels
		if err := json.Unmarshal(s.PowerLevels, &pl); err != nil {
			t.Fatalf("site %s power levels: %v", s.Name, err)
		}
		canon, _ := json.Marshal(pl)
		fmt.Fprintf(&b, "site %s owner=%s mod=%s %s bans=%v pl=%s\n", s.Name, s.Owner, s.ModerationRoom, showRoom(s.ModerationCreate), s.Bans, canon)
		rooms, err := h.Registry.Rooms(h.Ctx, s.Name)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rooms {
			fmt.Fprintf(&b, "  room %s %s %s %s\n", r.Section, r.RoomID, r.Alias, showRoom(r.Create))
		}
	}
	return b.String()
}

func TestSiteMissingFromRegistryFallsBackToHomeserver(t *testing.T) {
	t.Parallel()
	h := Start(t, Options{})
	owner := h.User("owner")
	spammer := h.User("spammer")
	troll := h.User("troll")
	visitor := h.User("visitor")
	// A site of the original appservice: only its moderation room exists,
	// with a ban already in it, and one comment room made back then.
	mod := h.CreateModerationRoom("legacy", owner)
	if err := owner.Client.Ban(h.Ctx, mod, spammer.ID, "spam"); err != nil {
		t.Fatal(err)
	}
	old, err := h.Bot.CreateRoom(h.Ctx, &matrix.CreateRoomRequest{
		RoomAliasName:             h.NS.CommentsLocalpart("legacy", "old"),
		InitialState:              []matrix.StateEvent{{Type: "m.room.join_rules", Content: map[string]string{"join_rule": "public"}}},
		PowerLevelContentOverride: power.ModerationRoomOverride(h.HS.RoomVersion(), h.BotID.String(), owner.ID.String()),
	})
	if err != nil {
		t.Fatal(err)
	}
	h.Quiesce(10 * time.Second)

	// A visitor's first join imports the site and creates the room with
	// the site's bans.
	room := h.Join(visitor, h.CommentAlias("legacy", "new"))
	if got := h.HS.Membership(room.String(), spammer.ID.String()); got != "ban" {
		t.Errorf("spammer in the new room: %q, want ban", got)
	}
	site, err := h.Registry.Site(h.Ctx, "legacy")
	if err != nil {
		t.Fatalf("site not imported: %v", err)
	}
	if site.ModerationRoom != mod.String() || site.Owner != owner.ID.String() || !site.Banned(spammer.ID.String()) {
		t.Errorf("imported site = %+v", site)
	}

	// A ban inside the old comment room, which the registry never saw,
	// reaches the moderation room and the new room.
	if _, err := owner.Client.JoinRoom(h.Ctx, old.String()); err != nil {
		t.Fatal(err)
	}
	if err := owner.Client.Ban(h.Ctx, old, troll.ID, "trolling"); err != nil {
		t.Fatal(err)
	}
	h.WaitSim(func() bool {
		return h.HS.Membership(mod.String(), troll.ID.String()) == "ban" &&
			h.HS.Membership(room.String(), troll.ID.String()) == "ban"
	}, 20*time.Second, "the troll banned across the legacy site")
	if r, err := h.Registry.Room(h.Ctx, "legacy", "old"); err != nil || r.RoomID != old.String() {
		t.Errorf("old room not recorded: %+v, %v", r, err)
	}
}

func TestRunBootstrapsAndServes(t *testing.T) {
	t.Parallel()
	h := Start(t, Options{Provisioners: -1})
	svc := h.StartService("provisioner", provisioner.Run)
	profile := func() string {
		resp, err := http.Get(h.HS.URL() + "/_matrix/client/v3/profile/" + url.PathEscape(h.BotID.String()) + "/displayname")
		if err != nil {
			return ""
		}
		defer resp.Body.Close()
		var p struct {
			DisplayName string `json:"displayname"`
		}
		_ = json.NewDecoder(resp.Body).Decode(&p)
		return p.DisplayName
	}
	h.Eventually(func() bool { return profile() == "Cactus Comments" }, 20*time.Second, "the bot's display name")
	owner := h.User("owner")
	h.RegisterSite("served", owner)
	visitor := h.User("visitor")
	// Run answers alias queries once it is up; until then the gateway
	// finds no provisioner and the join fails, so wait for a success.
	alias := h.CommentAlias("served", "page")
	h.Eventually(func() bool {
		_, err := visitor.Client.JoinRoom(h.Ctx, alias.String())
		return err == nil
	}, 20*time.Second, "a join served by the provisioner started with Run")
	if err := svc.Stop(); err != nil {
		t.Errorf("Run returned %v after a graceful stop", err)
	}
}

func TestBansFailingAtCreationAreQueued(t *testing.T) {
	t.Parallel()
	h := Start(t, Options{})
	owner := h.User("owner")
	spammer := h.User("spammer")
	site := h.RegisterSite("queued", owner)
	banInSnapshot(t, h, site, owner, spammer)
	// The homeserver fails every attempt of the new room's ban: the visitor
	// still gets the room at once, and the ban follows as a job.
	h.HS.InjectFault(hssim.Fault{Endpoint: hssim.EPBan, Status: 503, Times: 3})
	visitor := h.User("visitor")
	room := h.Join(visitor, h.CommentAlias(site.Name, "page"))
	h.WaitSim(func() bool { return h.HS.Membership(room.String(), spammer.ID.String()) == "ban" },
		20*time.Second, "the ban applied by the queued job")
	if got := metricValue(t, h, "cactus_provisioner_fanout_jobs_published_total"); got < 1 {
		t.Errorf("jobs published = %v, want the sync job", got)
	}
}

func showRoom(r *power.Room) string {
	if r == nil {
		return "version=?"
	}
	return fmt.Sprintf("version=%s creators=%v", r.Version, r.Creators())
}
