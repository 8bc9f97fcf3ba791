package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/cactus-comments/appservice/pkg/hssim"
	"github.com/cactus-comments/appservice/pkg/matrix"
	"github.com/cactus-comments/appservice/pkg/mxid"
)

// botScript is a conversation with the bot: each command and what its
// answer says, so that an answer out of order is seen.
func botScript(site string) (sent, want []string) {
	sent = []string{"help", "sites", "register " + site, "sites", "bogus", "register " + site, "sites"}
	want = []string{"register <sitename>", "not registered any", "Done", "1 site", `"help"`, "already registered", "1 site"}
	return sent, want
}

// checkScript fails unless room holds exactly the answers of the script,
// once each, in order.
func checkScript(t *testing.T, h *Harness, who string, room mxid.RoomID, sent, want []string) {
	t.Helper()
	got := h.BotMessages(room)
	if len(got) != len(want) {
		t.Errorf("%s: %d answers to %d commands: %q", who, len(got), len(sent), got)
	}
	for i := range min(len(got), len(want)) {
		if !strings.Contains(got[i], want[i]) {
			t.Errorf("%s: answer %d to %q is %q, want %q (order)", who, i, sent[i], got[i], want[i])
		}
	}
}

// Three botworker replicas, one command of a room failing on the
// homeserver and retried: the room's later commands wait for it, other
// rooms go on, and every answer comes once, in order.
func TestBotOrderAcrossReplicasWithRetry(t *testing.T) {
	t.Parallel()
	h := Start(t, Options{Concurrency: 2})
	for range 3 {
		h.StartBot(nil)
	}
	const owners = 4
	users, dms := h.Owners(owners)
	// createRoom fails as often as the clients of all the registers try
	// by themselves: every call fails while failures remain, so at least
	// one register exhausts its client's attempts and is retried by the
	// worker, in place.
	h.HS.InjectFault(hssim.Fault{Endpoint: hssim.EPCreateRoom, Times: owners * matrix.DefaultMaxAttempts, Status: 502})
	for step := range 7 {
		for i := range owners {
			sent, _ := botScript(fmt.Sprintf("site%d", i))
			h.Say(users[i], dms[i], sent[step])
		}
	}
	for i := range owners {
		h.WaitBotMessages(dms[i], 7)
	}
	h.QuiesceBot(30 * time.Second)
	for i := range owners {
		sent, want := botScript(fmt.Sprintf("site%d", i))
		checkScript(t, h, users[i].ID.String(), dms[i], sent, want)
	}
	if got := metricValue(t, h, "cactus_worker_messages_total", "outcome", "retry"); got == 0 {
		t.Error("no command was retried: the fault did not hit")
	}
	if dl := h.DeadLetters(); len(dl) != 0 {
		t.Errorf("dead letters: %+v", dl)
	}
}

// A botworker replica is killed while commands flow: its partitions move
// to the others once its lease runs out, what it held comes back first,
// and no command is lost, answered twice, or answered out of order.
func TestBotReplicaKilledWhileCommandsFlow(t *testing.T) {
	t.Parallel()
	h := Start(t, Options{Concurrency: 2, AckWait: 2 * time.Second})
	replicas := map[string]*Service{}
	for range 3 {
		s := h.StartBotService(nil)
		replicas[s.Name] = s
	}
	const owners = 6
	users, dms := h.Owners(owners)
	// The homeserver answers slowly, so that commands are in flight when
	// the replica dies.
	h.HS.SetLatency(hssim.EPSend, 20*time.Millisecond)
	say := func(step int) {
		for i := range owners {
			sent, _ := botScript(fmt.Sprintf("site%d", i))
			h.Say(users[i], dms[i], sent[step])
		}
	}
	for step := range 3 {
		say(step)
	}
	h.WaitBotMessages(dms[0], 1)
	victim := h.PartitionOwner(dms[0])
	if replicas[victim] == nil {
		t.Fatalf("the partition of %s is held by %q, not a replica of the test", dms[0], victim)
	}
	replicas[victim].Kill()
	killed := time.Now()
	for step := 3; step < 7; step++ {
		say(step)
	}
	for i := range owners {
		h.WaitSim(func() bool { return h.botMessageCount(dms[i]) >= 7 }, 90*time.Second,
			fmt.Sprintf("all answers in the DM of %s", users[i].ID))
	}
	t.Logf("every command answered %v after the kill", time.Since(killed).Round(time.Millisecond))
	h.QuiesceBot(60 * time.Second)
	for i := range owners {
		sent, want := botScript(fmt.Sprintf("site%d", i))
		checkScript(t, h, users[i].ID.String(), dms[i], sent, want)
	}
	if owner := h.PartitionOwner(dms[0]); owner == victim || replicas[owner] == nil {
		t.Errorf("the killed replica's partition is held by %q", owner)
	}
	if dl := h.DeadLetters(); len(dl) != 0 {
		t.Errorf("dead letters: %+v", dl)
	}
}
