package e2e

import (
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/cactus-comments/appservice/pkg/bus"
	"github.com/cactus-comments/appservice/pkg/dlq"
	"github.com/cactus-comments/appservice/pkg/mxid"
	"github.com/cactus-comments/appservice/pkg/registry"
	"github.com/cactus-comments/appservice/pkg/service"
)

// A moderation event whose snapshot update succeeded but whose fan-out
// failed until the retry horizon is dead-lettered; replaying it reaches
// every room of the site, although the snapshot already holds its change.
func TestReplayedModerationDeadLetterReachesEveryRoom(t *testing.T) {
	t.Parallel()
	h := Start(t, Options{RetryHorizon: 3 * time.Second})
	const n = 30
	owner, spammer, site, rooms := siteWithSpammer(t, h, "replayed", n)
	h.Quiesce(20 * time.Second)
	var recorded []registry.Room
	for _, r := range rooms {
		rec, err := h.Registry.Lookup(h.Ctx, r.String())
		if err != nil {
			t.Fatal(err)
		}
		recorded = append(recorded, rec)
	}

	// The fan-out cannot list the site's rooms: the rooms bucket is gone.
	if err := h.JS.DeleteKeyValue(h.Ctx, bus.BucketRooms); err != nil {
		t.Fatal(err)
	}
	mod := mxid.MustRoomID(site.ModerationRoom)
	if err := owner.Client.Ban(h.Ctx, mod, spammer.ID, "spam"); err != nil {
		t.Fatal(err)
	}
	var dead []bus.DeadLetter
	h.Eventually(func() bool {
		dead = h.DeadLetters()
		return len(dead) > 0
	}, 30*time.Second, "the moderation event dead-lettered after the retry horizon")
	if len(dead) != 1 || dead[0].Source != bus.ConsumerModeration {
		t.Fatalf("dead letters %+v, want the one moderation event", dead)
	}
	if s, err := h.Registry.Site(h.Ctx, site.Name); err != nil || !s.Banned(spammer.ID.String()) {
		t.Fatalf("the snapshot should hold the ban already: %+v, %v", s, err)
	}

	// The operator repairs the cause and replays.
	topo := service.Topology(h.Config())
	if err := topo.Ensure(h.Ctx, h.JS); err != nil {
		t.Fatal(err)
	}
	for _, r := range recorded {
		if err := h.Registry.PutRoom(h.Ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	s, err := h.JS.Stream(h.Ctx, bus.StreamDLQ)
	if err != nil {
		t.Fatal(err)
	}
	l, err := dlq.Get(h.Ctx, s, dlqSeqs(t, h, s)[0])
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dlq.Replayers(nil).Replay(h.Ctx, h.JS, s, l); err != nil {
		t.Fatal(err)
	}
	h.WaitSim(func() bool {
		for _, r := range rooms {
			if h.HS.Membership(r.String(), spammer.ID.String()) != "ban" {
				return false
			}
		}
		return true
	}, 30*time.Second, "the replayed ban in every room")
	h.Quiesce(20 * time.Second)
	for _, r := range rooms {
		if c := countMembership(h, r, spammer.ID, "ban"); c != 1 {
			t.Errorf("room %s: %d ban events, want 1", r, c)
		}
	}
	if dl := h.DeadLetters(); len(dl) != 0 {
		t.Errorf("dead letters after the replay: %+v", dl)
	}
}

// dlqSeqs lists the sequences of the stored dead letters.
func dlqSeqs(t *testing.T, h *Harness, s jetstream.Stream) []uint64 {
	t.Helper()
	info, err := s.Info(h.Ctx)
	if err != nil {
		t.Fatal(err)
	}
	var seqs []uint64
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		if _, err := s.GetMsg(h.Ctx, seq); err == nil {
			seqs = append(seqs, seq)
		}
	}
	if len(seqs) == 0 {
		t.Fatal("no dead letter stored")
	}
	return seqs
}
