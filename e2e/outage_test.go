package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/cactus-comments/appservice/pkg/bus"
	"github.com/cactus-comments/appservice/pkg/event"
	"github.com/cactus-comments/appservice/pkg/hssim"
	"github.com/cactus-comments/appservice/pkg/mxid"
	"github.com/cactus-comments/appservice/pkg/registry"
	"github.com/cactus-comments/appservice/services/provisioner/provisioner"
)

// siteWithSpammer registers a site with n comment rooms (made in bulk) and
// returns its owner and a user about to be banned.
func siteWithSpammer(t testing.TB, h *Harness, name string, n int) (owner, spammer *User, site *registry.Site, rooms []mxid.RoomID) {
	t.Helper()
	owner = h.User("owner")
	spammer = h.User("spammer")
	site = h.RegisterSite(name, owner)
	return owner, spammer, site, bulkRooms(t, h, site, n)
}

// allBanned reports whether user is banned in every room.
func allBanned(h *Harness, rooms []mxid.RoomID, user mxid.UserID) bool {
	for _, r := range rooms {
		if h.HS.Membership(r.String(), user.String()) != "ban" {
			return false
		}
	}
	return true
}

func countBanned(h *Harness, rooms []mxid.RoomID, user mxid.UserID) int {
	n := 0
	for _, r := range rooms {
		if h.HS.Membership(r.String(), user.String()) == "ban" {
			n++
		}
	}
	return n
}

// The homeserver refuses connections in the middle of a 2,000-room
// fan-out, for far longer than the workers used to retry (4 deliveries
// with these backoffs, about 2 s), and comes back: every room is banned,
// nothing is dead-lettered and no room gets a second ban event. While it
// is down the provisioners stay ready and say why they are waiting.
func TestHomeserverOutageDuringFanOut(t *testing.T) {
	t.Parallel()
	h := Start(t, Options{Provisioners: -1, Concurrency: 16})
	const n = 2000
	owner, spammer, site, rooms := siteWithSpammer(t, h, "outage", n)
	warm := h.StartProvisioner(provisioner.Options{})
	h.Quiesce(60 * time.Second)
	reps := []*Service{warm, h.StartProvisioner(provisioner.Options{})}
	h.HS.ResetCalls()

	if err := owner.Client.Ban(h.Ctx, mxid.MustRoomID(site.ModerationRoom), spammer.ID, "spam"); err != nil {
		t.Fatal(err)
	}
	h.WaitSim(func() bool { return h.HS.Calls(hssim.EPBan) >= n/4 }, 60*time.Second, "a quarter of the fan-out")
	h.HSProxy.Down()
	down := time.Now()
	// The replicas notice: their calls get no answer. They stay ready.
	h.Eventually(func() bool {
		for _, r := range reps {
			if d := r.RT.ReadyDetails(); len(d) == 0 || !strings.Contains(d[0], "homeserver unreachable") {
				return false
			}
		}
		return true
	}, 30*time.Second, "every provisioner to report the homeserver unreachable")
	for _, r := range reps {
		if err := r.RT.Ready(); err != nil {
			t.Errorf("%s not ready while only the homeserver is down: %v", r.Name, err)
		}
	}
	if got := metricValue(t, h, "cactus_homeserver_unreachable"); got != float64(len(reps)) {
		t.Errorf("cactus_homeserver_unreachable summed over replicas = %v, want %d", got, len(reps))
	}
	banned := countBanned(h, rooms, spammer.ID)
	if banned == n {
		t.Fatal("the fan-out finished before the outage")
	}
	// Several times what the workers used to retry for.
	time.Sleep(8 * time.Second)
	t.Logf("homeserver down for %v with %d of %d rooms banned", time.Since(down).Round(time.Millisecond), banned, n)
	h.HSProxy.Up()

	h.WaitSim(func() bool { return allBanned(h, rooms, spammer.ID) }, 60*time.Second, "the ban in every room after the outage")
	h.Quiesce(60 * time.Second)
	if dl := h.DeadLetters(); len(dl) != 0 {
		t.Fatalf("%d dead letters, first: %+v", len(dl), dl[0])
	}
	for _, r := range rooms {
		if c := countMembership(h, r, spammer.ID, "ban"); c != 1 {
			t.Errorf("room %s: %d ban events, want 1", r, c)
		}
	}
	for _, r := range reps {
		if d := r.RT.ReadyDetails(); len(d) != 0 {
			t.Errorf("%s still reports %q after the homeserver came back", r.Name, d)
		}
	}
}

// One site's homeserver calls are rate limited with a long Retry-After:
// another site's ban propagates meanwhile, as if nothing happened. Only
// the limited site's own jobs wait, and they wait in JetStream, not in a
// lane.
func TestRateLimitedSiteDoesNotDelayOthers(t *testing.T) {
	t.Parallel()
	h := Start(t, Options{Provisioners: -1, Concurrency: 4})
	owner := h.User("owner")
	spammer := h.User("spammer")
	slow := h.RegisterSite("limited", owner)
	fast := h.RegisterSite("unlimited", owner)
	slowRooms := bulkRooms(t, h, slow, 60)
	fastRooms := bulkRooms(t, h, fast, 20)
	const retryAfter = 20 * time.Second
	for _, r := range slowRooms {
		h.HS.InjectFault(hssim.Fault{Endpoint: hssim.EPBan, Room: r.String(), Status: http.StatusTooManyRequests, RetryAfter: retryAfter})
	}
	h.StartProvisioner(provisioner.Options{})
	h.Quiesce(30 * time.Second)

	if err := owner.Client.Ban(h.Ctx, mxid.MustRoomID(slow.ModerationRoom), spammer.ID, "spam"); err != nil {
		t.Fatal(err)
	}
	// Every job of the limited site has met its 429 once (refused calls
	// change nothing the simulator could signal: poll).
	h.Eventually(func() bool { return h.HS.Calls(hssim.EPBan) >= 1+len(slowRooms) }, 30*time.Second, "the limited site's jobs to meet the rate limit")
	start := time.Now()
	if err := owner.Client.Ban(h.Ctx, mxid.MustRoomID(fast.ModerationRoom), spammer.ID, "spam"); err != nil {
		t.Fatal(err)
	}
	h.WaitSim(func() bool { return allBanned(h, fastRooms, spammer.ID) }, 60*time.Second, "the other site's ban everywhere")
	t.Logf("the other site's ban reached its %d rooms in %v", len(fastRooms), time.Since(start).Round(time.Millisecond))
	// The mechanism, not a stopwatch: it finished while every job of the
	// limited site was still waiting out its Retry-After.
	if n := countBanned(h, slowRooms, spammer.ID); n != 0 {
		t.Fatalf("%d rooms of the limited site banned before its Retry-After passed", n)
	}
	h.HS.ClearFaults()
	h.WaitSim(func() bool { return allBanned(h, slowRooms, spammer.ID) }, 2*retryAfter+30*time.Second, "the limited site's ban once the limit is lifted")
	h.Quiesce(30 * time.Second)
	if dl := h.DeadLetters(); len(dl) != 0 {
		t.Fatalf("dead letters: %+v", dl)
	}
}

// A replica killed in the middle of a fan-out: the jobs it held come back
// after the consumers' AckWait (seconds), and the rest of the fan-out
// finishes on the other replica without a second ban anywhere.
func TestReplicaKilledMidFanOut(t *testing.T) {
	t.Parallel()
	h := Start(t, Options{Provisioners: -1, Concurrency: 8})
	const n = 300
	owner, spammer, site, rooms := siteWithSpammer(t, h, "killed", n)
	victim := h.StartProvisioner(provisioner.Options{})
	h.Quiesce(30 * time.Second)
	survivor := h.StartProvisioner(provisioner.Options{})
	// Slow bans: the fan-out is in full flow on both replicas at the kill.
	h.HS.SetLatency(hssim.EPBan, 20*time.Millisecond)
	cons, err := h.JS.Consumer(h.Ctx, bus.StreamJobs, bus.ConsumerJobs)
	if err != nil {
		t.Fatal(err)
	}
	if ackWait := cons.CachedInfo().Config.AckWait; ackWait != bus.AckWait || ackWait > 30*time.Second {
		t.Fatalf("jobs consumer AckWait %v, want the topology's %v (seconds)", ackWait, bus.AckWait)
	}

	if err := owner.Client.Ban(h.Ctx, mxid.MustRoomID(site.ModerationRoom), spammer.ID, "spam"); err != nil {
		t.Fatal(err)
	}
	h.WaitSim(func() bool { return h.HS.Calls(hssim.EPBan) >= n/3 }, 60*time.Second, "a third of the bans")
	killed := time.Now()
	victim.Kill()
	// Done means every job acknowledged: those the killed replica held
	// (its homeserver calls may well have landed) only once they came
	// back to the survivor.
	h.Eventually(func() bool { return h.JobsDrained() && allBanned(h, rooms, spammer.ID) }, 2*bus.AckWait+60*time.Second,
		"the rest of the fan-out on the survivor")
	took := time.Since(killed)
	h.Quiesce(30 * time.Second)
	info, err := cons.Info(h.Ctx)
	if err != nil {
		t.Fatal(err)
	}
	jobs, err := h.JS.Stream(h.Ctx, bus.StreamJobs)
	if err != nil {
		t.Fatal(err)
	}
	si, err := jobs.Info(h.Ctx)
	if err != nil {
		t.Fatal(err)
	}
	// Nothing failed, so every delivery beyond one per job is a job the
	// killed replica held, handed out again once its AckWait ran out.
	redelivered := info.Delivered.Consumer - si.State.LastSeq
	if redelivered == 0 {
		t.Fatalf("no job came back from the killed replica (%d deliveries of %d jobs)", info.Delivered.Consumer, si.State.LastSeq)
	}
	t.Logf("fan-out finished %v after the kill (AckWait %v); %d jobs came back from the killed replica", took.Round(time.Millisecond), bus.AckWait, redelivered)
	for _, r := range rooms {
		if c := countMembership(h, r, spammer.ID, "ban"); c != 1 {
			t.Errorf("room %s: %d ban events, want 1", r, c)
		}
	}
	if dl := h.DeadLetters(); len(dl) != 0 {
		t.Errorf("dead letters: %+v", dl)
	}
	if err := survivor.Stop(); err != nil {
		t.Error(err)
	}
}

// repush sends an event the homeserver pushed before to the gateway again,
// in a transaction with the original's id, as a homeserver retrying after
// a long outage does.
func repush(t *testing.T, h *Harness, eventID string) {
	t.Helper()
	var ev *event.Event
	for _, room := range h.HS.Rooms() {
		for _, e := range h.HS.Timeline(room) {
			if e.EventID == eventID {
				ev = &e
			}
		}
	}
	if ev == nil {
		t.Fatalf("event %s not found", eventID)
	}
	txn := ""
	for _, tx := range h.HS.Transactions() {
		for _, id := range tx.EventIDs {
			if id == eventID {
				txn = tx.TxnID
			}
		}
	}
	body, err := json.Marshal(map[string]any{"events": []*event.Event{ev}})
	if err != nil {
		t.Fatal(err)
	}
	req, err := http.NewRequestWithContext(h.Ctx, http.MethodPut, h.GatewayURL+"/_matrix/app/v1/transactions/"+txn, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+testHSToken)
	resp, err := h.httpc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("repush of %s: HTTP %d", eventID, resp.StatusCode)
	}
}

// storedAgain pushes an event again until the event stream stores it a
// second time: its duplicate window is over.
func storedAgain(t *testing.T, h *Harness, eventID string, class bus.Class, room string) {
	t.Helper()
	s, err := h.JS.Stream(h.Ctx, bus.StreamEvents)
	if err != nil {
		t.Fatal(err)
	}
	subject := (bus.Topology{}).StoredSubject(class, room)
	first, err := s.GetLastMsgForSubject(h.Ctx, subject)
	if err != nil {
		t.Fatal(err)
	}
	h.Eventually(func() bool {
		repush(t, h, eventID)
		last, err := s.GetLastMsgForSubject(h.Ctx, subject)
		return err == nil && last.Sequence > first.Sequence && last.Header.Get(bus.HeaderEventID) == eventID
	}, 30*time.Second, fmt.Sprintf("event %s stored again after the duplicate window", eventID))
}

// lastEventID is the id of the last event in room matching match.
func lastEventID(t *testing.T, h *Harness, room mxid.RoomID, match func(event.Event) bool) string {
	t.Helper()
	tl := h.HS.Timeline(room.String())
	for i := len(tl) - 1; i >= 0; i-- {
		if match(tl[i]) {
			return tl[i].EventID
		}
	}
	t.Fatalf("no matching event in %s", room)
	return ""
}

// An event the homeserver sends again after the event stream's duplicate
// window, and after the homeserver itself forgot the bot's send
// transaction ids (both short here), has no second effect: no second
// reply to a command, and an old ban does not come back after a newer
// unban.
func TestEventStoredAgainAfterDuplicateWindow(t *testing.T) {
	t.Parallel()
	h := Start(t, Options{Duplicates: 2 * time.Second})
	h.StartBot(nil)
	owner := h.User("owner")
	spammer := h.User("spammer")
	dm := h.DirectChat(owner)
	help := h.Say(owner, dm, "help")
	h.WaitBotMessages(dm, 1)

	site := h.RegisterSite("again", owner)
	rooms := bulkRooms(t, h, site, 10)
	mod := mxid.MustRoomID(site.ModerationRoom)
	if err := owner.Client.Ban(h.Ctx, mod, spammer.ID, "spam"); err != nil {
		t.Fatal(err)
	}
	h.WaitSim(func() bool { return allBanned(h, rooms, spammer.ID) }, 30*time.Second, "the ban everywhere")
	ban := lastEventID(t, h, mod, func(e event.Event) bool {
		return e.Type == "m.room.member" && e.Sender == owner.ID.String() && e.StateKey != nil && *e.StateKey == spammer.ID.String()
	})
	if err := owner.Client.Unban(h.Ctx, mod, spammer.ID, ""); err != nil {
		t.Fatal(err)
	}
	h.WaitSim(func() bool { return countBanned(h, rooms, spammer.ID) == 0 }, 30*time.Second, "the unban everywhere")
	h.Quiesce(30 * time.Second)
	h.QuiesceBot(30 * time.Second)

	// The transaction stream forgets as soon as the event stream does: the
	// same retried transaction, byte for byte, is split again after the
	// window each time, and its events are stored again.
	txns, err := h.JS.Stream(h.Ctx, bus.StreamTxns)
	if err != nil {
		t.Fatal(err)
	}
	if got := txns.CachedInfo().Config.Duplicates; got != 2*time.Second {
		t.Errorf("transaction stream's duplicate window %v, want the event stream's (2s)", got)
	}
	storedAgain(t, h, help, bus.ClassBot, dm.String())
	storedAgain(t, h, help, bus.ClassBot, dm.String())
	storedAgain(t, h, ban, bus.ClassModeration, mod.String())
	h.Quiesce(30 * time.Second)
	h.QuiesceBot(30 * time.Second)

	if got := h.BotMessages(dm); len(got) != 1 {
		t.Errorf("the bot answered %d times: %q", len(got), got)
	}
	for _, r := range rooms {
		if m := h.HS.Membership(r.String(), spammer.ID.String()); m == "ban" {
			t.Errorf("room %s: the old ban came back after the newer unban", r)
		}
		if c := countMembership(h, r, spammer.ID, "ban"); c != 1 {
			t.Errorf("room %s: %d ban events, want 1", r, c)
		}
	}
	if got := metricValue(t, h, "cactus_worker_messages_total", "outcome", "duplicate"); got < 3 {
		t.Errorf("events recognised by their done markers: %v, want 3", got)
	}
}
