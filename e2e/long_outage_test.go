package e2e

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/cactus-comments/appservice/pkg/mxid"
	"github.com/cactus-comments/appservice/services/provisioner/provisioner"
)

// An outage of real length, with the workers' default backoff (up to
// CACTUS_RETRY_MAX_BACKOFF between attempts), in the middle of a
// 2,000-room fan-out and of bot commands: after the homeserver returns,
// every room is banned once, every command answered once, nothing is
// dead-lettered. It takes the outage plus up to one maximum backoff, so
// it runs only when asked:
//
//	CACTUS_LONG_OUTAGE=10m go test -run TestLongHomeserverOutage -timeout 40m ./e2e/
func TestLongHomeserverOutage(t *testing.T) {
	outage, err := time.ParseDuration(os.Getenv("CACTUS_LONG_OUTAGE"))
	if err != nil {
		t.Skip("set CACTUS_LONG_OUTAGE (e.g. 10m) to run")
	}
	h := Start(t, Options{Provisioners: -1, Concurrency: 16})
	h.StartBot(nil)
	const n = 2000
	owner, spammer, site, rooms := siteWithSpammer(t, h, "longoutage", n)
	dm := h.DirectChat(owner)
	reps := []*Service{h.StartProvisioner(provisioner.Options{MinBackoff: time.Second}), h.StartProvisioner(provisioner.Options{MinBackoff: time.Second})}
	h.Quiesce(60 * time.Second)
	before := len(h.BotMessages(dm))

	if err := owner.Client.Ban(h.Ctx, mxid.MustRoomID(site.ModerationRoom), spammer.ID, "spam"); err != nil {
		t.Fatal(err)
	}
	h.WaitSim(func() bool { return countBanned(h, rooms, spammer.ID) >= n/4 }, 120*time.Second, "a quarter of the fan-out")
	h.HSProxy.Down()
	down := time.Now()
	// Commands while the workers cannot reach the homeserver: the
	// homeserver still pushes them (its own side is up).
	const commands = 5
	for range commands {
		h.Say(owner, dm, "help")
	}
	time.Sleep(outage)
	banned := countBanned(h, rooms, spammer.ID)
	t.Logf("homeserver unreachable for %v with %d of %d rooms banned", time.Since(down).Round(time.Second), banned, n)
	h.HSProxy.Up()
	up := time.Now()

	h.WaitSim(func() bool { return allBanned(h, rooms, spammer.ID) }, 15*time.Minute, "the ban in every room after the outage")
	h.WaitBotMessages(dm, before+commands)
	t.Logf("every room banned and every command answered %v after the homeserver came back", time.Since(up).Round(time.Second))
	h.Quiesce(5 * time.Minute)
	if dl := h.DeadLetters(); len(dl) != 0 {
		t.Fatalf("%d dead letters, first: %+v", len(dl), dl[0])
	}
	twice := 0
	for _, r := range rooms {
		if countMembership(h, r, spammer.ID, "ban") != 1 {
			twice++
		}
	}
	if twice != 0 {
		t.Errorf("%d rooms without exactly one ban event", twice)
	}
	if got := len(h.BotMessages(dm)) - before; got != commands {
		t.Errorf("%d replies to %d commands", got, commands)
	}
	for _, r := range reps {
		if d := r.RT.ReadyDetails(); len(d) != 0 && strings.Contains(d[0], "unreachable") {
			t.Errorf("%s still reports %q", r.Name, d)
		}
	}
}
