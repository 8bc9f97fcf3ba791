package e2e

import (
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/cactus-comments/appservice/pkg/bus"
	"github.com/cactus-comments/appservice/pkg/hssim"
	"github.com/cactus-comments/appservice/pkg/matrix"
	"github.com/cactus-comments/appservice/pkg/mxid"
	"github.com/cactus-comments/appservice/pkg/registry"
	"github.com/cactus-comments/appservice/services/provisioner/provisioner"
)

// banInSnapshot has the owner ban spammer in the site's moderation room
// and waits until the snapshot has it, so that new rooms must start with
// the ban.
func banInSnapshot(t *testing.T, h *Harness, site *registry.Site, owner, spammer *User) {
	t.Helper()
	if err := owner.Client.Ban(h.Ctx, mxid.MustRoomID(site.ModerationRoom), spammer.ID, "spam"); err != nil {
		t.Fatal(err)
	}
	h.Eventually(func() bool {
		s, err := h.Registry.Site(h.Ctx, site.Name)
		return err == nil && s.Banned(spammer.ID.String())
	}, 20*time.Second, "the ban in the site's snapshot")
	h.Quiesce(20 * time.Second)
}

// joinLater makes visitor join alias in the background; the channel gets
// the join's error.
func joinLater(h *Harness, visitor *User, alias string) <-chan error {
	joined := make(chan error, 1)
	go func() {
		_, err := visitor.Client.JoinRoom(h.Ctx, alias)
		joined <- err
	}()
	return joined
}

// recordedRoom waits for a comment room to be in the registry.
func recordedRoom(h *Harness, site, section string) registry.Room {
	h.t.Helper()
	var room registry.Room
	h.Eventually(func() bool {
		var err error
		room, err = h.Registry.Room(h.Ctx, site, section)
		return err == nil
	}, 60*time.Second, "the room of "+site+"_"+section+" in the registry")
	return room
}

// A createRoom that the homeserver answers after the gateway stopped
// waiting for the alias query still ends with the room in the registry
// and the site's bans in it: Synapse commits the room and never asks
// about the alias again, so this is the only chance to record it.
func TestSlowCreateRoomStillRecorded(t *testing.T) {
	t.Parallel()
	h := Start(t, Options{AliasQueryTimeout: time.Second})
	owner := h.User("owner")
	spammer := h.User("spammer")
	site := h.RegisterSite("slow", owner)
	banInSnapshot(t, h, site, owner, spammer)

	h.HS.SetLatency(hssim.EPCreateRoom, 3*time.Second)
	visitor := h.User("visitor")
	alias := h.CommentAlias(site.Name, "page")
	// The gateway gives up after a second: this first join fails.
	if _, err := visitor.Client.JoinRoom(h.Ctx, alias.String()); err == nil {
		t.Log("the first join succeeded (the query was answered in time after all)")
	}
	var room registry.Room
	h.Eventually(func() bool {
		var err error
		room, err = h.Registry.Room(h.Ctx, site.Name, "page")
		return err == nil
	}, 30*time.Second, "the slowly created room in the registry")
	h.WaitSim(func() bool { return h.HS.Membership(room.RoomID, spammer.ID.String()) == "ban" },
		20*time.Second, "the site's ban in the slowly created room")
	if r, ok := h.HS.ResolveAliasLocal(alias.String()); !ok || r != room.RoomID {
		t.Fatalf("alias resolves to %q, registry says %s", r, room.RoomID)
	}
	h.HS.SetLatency(hssim.EPCreateRoom, 0)
	if got := h.Join(visitor, alias); got.String() != room.RoomID {
		t.Fatalf("second join went to %s, want %s", got, room.RoomID)
	}
}

// simCommitsAbandonedCreateRoom reports whether the simulator, like
// Synapse, creates a room whose createRoom request the client gave up on.
func simCommitsAbandonedCreateRoom(t *testing.T, h *Harness) bool {
	t.Helper()
	h.HS.SetLatency(hssim.EPCreateRoom, 500*time.Millisecond)
	defer h.HS.SetLatency(hssim.EPCreateRoom, 0)
	ctx, cancel := context.WithTimeout(h.Ctx, 100*time.Millisecond)
	defer cancel()
	name := "comments_probe-abandoned-create"
	_, _ = h.Bot.CreateRoom(ctx, &matrix.CreateRoomRequest{RoomAliasName: name})
	alias := "#" + name + ":" + serverName
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if _, ok := h.HS.ResolveAliasLocal(alias); ok {
			return true
		}
		time.Sleep(50 * time.Millisecond)
	}
	return false
}

// When the provisioner itself cannot tell whether createRoom happened (its
// requests time out), a durable job looks the alias up later and, since
// the room exists, records it and applies the site's bans.
func TestCreateRoomOutcomeUnknownResolvedLater(t *testing.T) {
	t.Parallel()
	h := Start(t, Options{AliasQueryTimeout: time.Second, HomeserverTimeout: 300 * time.Millisecond})
	if !simCommitsAbandonedCreateRoom(t, h) {
		t.Skip("the simulator drops a createRoom whose client hung up; Synapse commits it. This test needs the simulator to do the same.")
	}
	owner := h.User("owner")
	spammer := h.User("spammer")
	site := h.RegisterSite("unknown", owner)
	banInSnapshot(t, h, site, owner, spammer)

	// Every createRoom outlives the provisioner's request timeout, so all
	// its attempts time out while the first one creates the room.
	h.HS.SetLatency(hssim.EPCreateRoom, time.Second)
	visitor := h.User("visitor")
	alias := h.CommentAlias(site.Name, "page")
	_, _ = visitor.Client.JoinRoom(h.Ctx, alias.String())
	var room registry.Room
	h.Eventually(func() bool {
		var err error
		room, err = h.Registry.Room(h.Ctx, site.Name, "page")
		return err == nil
	}, 30*time.Second, "the room recorded by the resolve job")
	h.WaitSim(func() bool { return h.HS.Membership(room.RoomID, spammer.ID.String()) == "ban" },
		20*time.Second, "the site's ban in the room")
	if dl := h.DeadLetters(); len(dl) != 0 {
		t.Errorf("dead letters: %+v", dl)
	}
}

// A room found existing (M_ROOM_IN_USE) but missing from the registry is
// recorded and gets the site's bans too.
func TestExistingRoomMissingFromRegistryGetsBans(t *testing.T) {
	t.Parallel()
	h := Start(t, Options{})
	owner := h.User("owner")
	spammer := h.User("spammer")
	site := h.RegisterSite("orphan", owner)
	banInSnapshot(t, h, site, owner, spammer)
	// A comment room the registry never heard of, without the site's
	// bans (created, say, by a provisioner that crashed right after).
	orphan, err := h.Bot.CreateRoom(h.Ctx, &matrix.CreateRoomRequest{
		RoomAliasName: h.NS.CommentsLocalpart(site.Name, "page"),
		InitialState:  []matrix.StateEvent{{Type: "m.room.join_rules", Content: map[string]string{"join_rule": "public"}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	// A second provisioner's query for the alias meets M_ROOM_IN_USE.
	p := h.Provisioners()[0]
	if ans, outcome, err := p.AliasQuery(h.Ctx, h.CommentAlias(site.Name, "page").String()); err != nil || !ans.Exists || outcome != "exists" {
		t.Fatalf("alias query: %+v %q %v", ans, outcome, err)
	}
	if r, err := h.Registry.Room(h.Ctx, site.Name, "page"); err != nil || r.RoomID != orphan.String() {
		t.Fatalf("registry room = %+v, %v; want %s", r, err, orphan)
	}
	h.WaitSim(func() bool { return h.HS.Membership(orphan.String(), spammer.ID.String()) == "ban" },
		20*time.Second, "the site's ban in the room found existing")
}

// The provisioner reads sites from a snapshot that a watch keeps, which
// lags the bucket. A ban the snapshot has not seen yet still reaches the
// new room without a job: the revision check after recording the room
// (right after the answer) sees that the site moved and applies the bans
// as they are now. The snapshot here is stopped before the ban, so it
// lags for certain.
func TestBanNotYetInTheSnapshotAppliedAtCreation(t *testing.T) {
	t.Parallel()
	h := Start(t, Options{})
	owner := h.User("owner")
	spammer := h.User("spammer")
	site := h.RegisterSite("lagging", owner)

	wctx, stop := context.WithCancel(h.Ctx)
	snap := h.Registry.WatchSites(wctx, nil)
	var rev uint64
	h.Eventually(func() bool {
		var ok bool
		rev, ok = snap.Cached(site.Name)
		return ok
	}, 20*time.Second, "the site in the snapshot")
	stop()
	p := h.StartProvisioner(provisioner.Options{Sites: snap}).Provisioner

	banInSnapshot(t, h, site, owner, spammer)
	if now, ok := snap.Cached(site.Name); !ok || now != rev {
		t.Fatalf("the stopped snapshot moved from revision %d to %d", rev, now)
	}
	if s, _, err := snap.Site(h.Ctx, site.Name); err != nil || s.Banned(spammer.ID.String()) {
		t.Fatalf("the snapshot should not know the ban yet: %+v, %v", s, err)
	}

	ans, outcome, err := p.AliasQuery(h.Ctx, h.CommentAlias(site.Name, "page").String())
	if err != nil || !ans.Exists || outcome != "created" {
		t.Fatalf("alias query: %+v %q %v", ans, outcome, err)
	}
	room, err := h.Registry.Room(h.Ctx, site.Name, "page")
	if err != nil {
		t.Fatal(err)
	}
	// No job and no waiting: the query's own bookkeeping, which follows
	// its answer at once, re-read the site and applied the ban.
	if got := h.HS.Membership(room.RoomID, spammer.ID.String()); got != "ban" {
		t.Fatalf("spammer's membership in the new room when the query was answered: %q, want ban", got)
	}
}

// A provisioner that dies while its createRoom is under way leaves a room
// the homeserver created and will never ask about again. The gateway,
// which never got an answer, hands the alias to a durable resolve job
// that another replica runs: the room ends in the registry with the
// site's bans.
func TestProvisionerKilledDuringCreateRoomLosesNoRoom(t *testing.T) {
	t.Parallel()
	h := Start(t, Options{AliasQueryTimeout: 2 * time.Second, Provisioners: -1})
	if !simCommitsAbandonedCreateRoom(t, h) {
		t.Skip("the simulator drops a createRoom whose client hung up; Synapse commits it. This test needs the simulator to do the same.")
	}
	first := h.StartProvisioner(provisioner.Options{})
	owner := h.User("owner")
	spammer := h.User("spammer")
	site := h.RegisterSite("killed", owner)
	banInSnapshot(t, h, site, owner, spammer)

	h.HS.SetLatency(hssim.EPCreateRoom, time.Second)
	creates := h.HS.Calls(hssim.EPCreateRoom)
	visitor := h.User("visitor")
	alias := h.CommentAlias(site.Name, "page")
	joined := joinLater(h, visitor, alias.String())
	h.Eventually(func() bool { return h.HS.Calls(hssim.EPCreateRoom) > creates }, 20*time.Second, "the createRoom under way")
	first.Kill()
	h.StartProvisioner(provisioner.Options{})
	<-joined // the gateway gave up on the dead replica: this join fails

	room := recordedRoom(h, site.Name, "page")
	if r, ok := h.HS.ResolveAliasLocal(alias.String()); !ok || r != room.RoomID {
		t.Fatalf("alias resolves to %q, registry says %s", r, room.RoomID)
	}
	h.WaitSim(func() bool { return h.HS.Membership(room.RoomID, spammer.ID.String()) == "ban" },
		30*time.Second, "the site's ban in the dead replica's room")
	if dl := h.DeadLetters(); len(dl) != 0 {
		t.Errorf("dead letters: %+v", dl)
	}
}

// A provisioner killed while applying a new room's bans (after the
// room was recorded, before its answer) leaves a room with only some of
// the site's bans, which must be completed:
//   - the gateway, which got no answer, queues a resolve job; finding the
//     room recorded must not stop it from bringing the room's bans up to
//     the site's (the safety net below is due only after the test's wait);
//   - when the gateway that asked died too (a node lost, say), nobody
//     queues that job: the ban sync the provisioner queued before the
//     first ban (its safety net) does it once due.
func TestKilledDuringNewRoomBansLeavesNoBanOut(t *testing.T) {
	for _, c := range []struct {
		name      string
		gateway   bool // the query comes through a gateway that survives
		hsTimeout time.Duration
	}{
		{"provisioner", true, 30 * time.Second},
		{"provisioner and gateway", false, time.Second},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			h := Start(t, Options{AliasQueryTimeout: 2 * time.Second, HomeserverTimeout: c.hsTimeout, Provisioners: -1})
			first := h.StartProvisioner(provisioner.Options{})
			owner := h.User("owner")
			site := h.RegisterSite("halfbanned", owner)
			var spammers []*User
			for i := range 12 {
				sp := h.User(fmt.Sprintf("spammer%d", i))
				banInSnapshot(t, h, site, owner, sp)
				spammers = append(spammers, sp)
			}

			h.HS.SetLatency(hssim.EPBan, 400*time.Millisecond)
			bans := h.HS.Calls(hssim.EPBan)
			alias := h.CommentAlias(site.Name, "page").String()
			visitor := h.User("visitor")
			answered := make(chan struct{})
			go func() {
				defer close(answered)
				if c.gateway {
					<-joinLater(h, visitor, alias) // the gateway gives up on the dead replica
				} else {
					_, _, _ = first.Provisioner.AliasQuery(h.Ctx, alias)
				}
			}()
			h.Eventually(func() bool { return h.HS.Calls(hssim.EPBan) > bans }, 20*time.Second, "the new room's bans under way")
			// A killed process sends nothing more, but the harness's Kill
			// lets the replica's goroutines run to their end: the
			// homeserver refuses what they would still send. The bans
			// already under way land.
			h.HS.InjectFault(hssim.Fault{Endpoint: hssim.EPBan, Status: http.StatusForbidden, ErrCode: "M_FORBIDDEN"})
			first.Kill()
			<-answered
			h.HS.ClearFaults()
			h.HS.SetLatency(hssim.EPBan, 0)
			room := recordedRoom(h, site.Name, "page")
			n := 0
			for _, sp := range spammers {
				if h.HS.Membership(room.RoomID, sp.ID.String()) == "ban" {
					n++
				}
			}
			if n == len(spammers) {
				t.Fatal("every ban landed before the replica died: the test proves nothing")
			}
			h.StartProvisioner(provisioner.Options{})
			for _, sp := range spammers {
				h.WaitSim(func() bool { return h.HS.Membership(room.RoomID, sp.ID.String()) == "ban" },
					60*time.Second, "every site ban in the room whose bans the dead replica left half done")
			}
			if dl := h.DeadLetters(); len(dl) != 0 {
				t.Errorf("dead letters: %+v", dl)
			}
		})
	}
}

// The safety net of a new room's bans (a ban sync due long after the
// query) is deleted once the room is settled: rooms created normally cost
// the homeserver no later check.
func TestSettledRoomLeavesNoSafetyNet(t *testing.T) {
	t.Parallel()
	h := Start(t, Options{})
	owner := h.User("owner")
	site := h.RegisterSite("netted", owner)
	spammer := h.User("spammer")
	banInSnapshot(t, h, site, owner, spammer)
	jobs, err := h.JS.Stream(h.Ctx, bus.StreamJobs)
	if err != nil {
		t.Fatal(err)
	}
	before, err := jobs.Info(h.Ctx)
	if err != nil {
		t.Fatal(err)
	}
	p := h.StartProvisioner(provisioner.Options{}).Provisioner
	ans, _, err := p.AliasQuery(h.Ctx, h.CommentAlias(site.Name, "page").String())
	if err != nil || !ans.Exists {
		t.Fatalf("alias query: %+v, %v", ans, err)
	}
	room := recordedRoom(h, site.Name, "page")
	if h.HS.Membership(room.RoomID, spammer.ID.String()) != "ban" {
		t.Fatal("the site's ban is not in the new room")
	}
	after, err := jobs.Info(h.Ctx)
	if err != nil {
		t.Fatal(err)
	}
	if after.State.LastSeq == before.State.LastSeq {
		t.Fatal("no safety net was queued for a site with bans: the test proves nothing")
	}
	if after.State.Msgs != 0 {
		t.Fatalf("%d jobs left in the stream after the room was settled", after.State.Msgs)
	}
}

// A room created while the registry refuses writes is still recorded once
// it takes them again: the provisioner hands the alias to a resolve job.
func TestCreatedRoomRecordedAfterRegistryRefusedIt(t *testing.T) {
	t.Parallel()
	h := Start(t, Options{})
	owner := h.User("owner")
	site := h.RegisterSite("refused", owner)

	rooms, err := h.JS.Stream(h.Ctx, "KV_"+bus.BucketRooms)
	if err != nil {
		t.Fatal(err)
	}
	cfg := rooms.CachedInfo().Config
	limit := cfg.MaxMsgSize
	cfg.MaxMsgSize = 16 // smaller than any room record
	if _, err := h.JS.UpdateStream(h.Ctx, cfg); err != nil {
		t.Fatal(err)
	}
	p := h.StartProvisioner(provisioner.Options{}).Provisioner
	ans, _, err := p.AliasQuery(h.Ctx, h.CommentAlias(site.Name, "page").String())
	if err != nil || !ans.Exists {
		t.Fatalf("alias query: %+v, %v", ans, err)
	}
	if _, err := h.Registry.Room(h.Ctx, site.Name, "page"); err == nil {
		t.Fatal("the room was recorded although the bucket refused it")
	}
	cfg.MaxMsgSize = limit
	if _, err := h.JS.UpdateStream(h.Ctx, cfg); err != nil {
		t.Fatal(err)
	}
	h.Eventually(func() bool {
		_, err := h.Registry.Room(h.Ctx, site.Name, "page")
		return err == nil
	}, 60*time.Second, "the room in the registry once it takes writes again")
}
