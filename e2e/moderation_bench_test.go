package e2e

import (
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/cactus-comments/appservice/pkg/hssim"
	"github.com/cactus-comments/appservice/pkg/mxid"
	"github.com/cactus-comments/appservice/pkg/registry"
	"github.com/cactus-comments/appservice/services/provisioner/provisioner"
)

// BenchmarkModerationManySites measures moderation throughput when many
// sites ban at once: every site's owner bans a user in its moderation
// room at the same moment, and the clock stops when every comment room
// of every site has the ban. The simulator adds 2 ms to every ban, as a
// homeserver's own work would. With 1, 2 and 4 provisioner replicas.
//
//	go test -run '^$' -bench BenchmarkModerationManySites -benchtime 3x -timeout 30m ./e2e/
//
// CACTUS_BENCH_SITES (default 200) and CACTUS_BENCH_SITE_ROOMS (comment
// rooms per site, default 5) change the set-up; CACTUS_BENCH_NATS_LATENCY
// (a duration, default none) puts that delay each way between the
// services and NATS, as a network would.
func BenchmarkModerationManySites(b *testing.B) {
	nSites := envInt(b, "CACTUS_BENCH_SITES", 200)
	perSite := envInt(b, "CACTUS_BENCH_SITE_ROOMS", 5)
	var latency time.Duration
	if v := os.Getenv("CACTUS_BENCH_NATS_LATENCY"); v != "" {
		var err error
		if latency, err = time.ParseDuration(v); err != nil {
			b.Fatalf("CACTUS_BENCH_NATS_LATENCY=%q: %v", v, err)
		}
	}
	h := Start(b, Options{Provisioners: -1, NATSLatency: latency})
	owner := h.User("owner")
	sites := make([]*registry.Site, nSites)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	for i := range sites {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			sites[i] = h.RegisterSite(fmt.Sprintf("site%04d", i), owner)
		})
	}
	wg.Wait()
	for _, s := range sites {
		bulkRooms(b, h, s, perSite)
	}
	settleForBenchmark(b, h)

	seq := 0
	eachReplicaCount(b, h, func(b *testing.B) map[string]float64 {
		seq++
		target := h.User(fmt.Sprintf("spammer%d", seq))
		base := h.HS.Calls(hssim.EPBan)
		t0 := time.Now()
		var wg sync.WaitGroup
		errs := make(chan error, len(sites))
		for _, s := range sites {
			wg.Go(func() {
				if err := owner.Client.Ban(h.Ctx, mxid.MustRoomID(s.ModerationRoom), target.ID, "spam"); err != nil {
					errs <- err
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			b.Fatal(err)
		}
		// The moderation consumer's own share: every event handled (its
		// jobs queued). Nothing signals it: poll.
		modDone := make(chan time.Duration, 1)
		go func() {
			for metricValue(b, h, "cactus_provisioner_moderation_events_total", "action", "ban") < float64(seq*len(sites)) || !h.ModerationDrained() {
				time.Sleep(5 * time.Millisecond)
			}
			modDone <- time.Since(t0)
		}()
		// Each site: the owner's ban and one per comment room.
		h.WaitSim(func() bool { return h.HS.Calls(hssim.EPBan) >= base+len(sites)*(1+perSite) }, 10*time.Minute, "every site's fan-out")
		elapsed := time.Since(t0)
		mod := <-modDone
		return map[string]float64{
			"s/round":             elapsed.Seconds(),
			"sites/s":             float64(len(sites)) / elapsed.Seconds(),
			"moderation-events/s": float64(len(sites)) / mod.Seconds(),
		}
	})
}

// BenchmarkFanOutAfterKill measures how long the rest of a fan-out takes
// after one of two provisioner replicas is killed in the middle of it:
// what the killed replica held comes back only when the consumer's
// AckWait runs out.
//
//	go test -run '^$' -bench BenchmarkFanOutAfterKill -benchtime 3x -timeout 30m ./e2e/
//
// CACTUS_BENCH_ROOMS (default 3000) changes the site's size.
func BenchmarkFanOutAfterKill(b *testing.B) {
	rooms := envInt(b, "CACTUS_BENCH_ROOMS", 3000)
	h := Start(b, Options{Provisioners: -1})
	owner := h.User("owner")
	site := h.RegisterSite("killbench", owner)
	bulkRooms(b, h, site, rooms)
	settleForBenchmark(b, h)
	mod := mxid.MustRoomID(site.ModerationRoom)
	for i := range b.N {
		survivor := h.StartProvisioner(provisioner.Options{})
		victim := h.StartProvisioner(provisioner.Options{})
		target := h.User(fmt.Sprintf("spammer%d", i))
		base := h.HS.Calls(hssim.EPBan)
		if err := owner.Client.Ban(h.Ctx, mod, target.ID, "spam"); err != nil {
			b.Fatal(err)
		}
		h.WaitSim(func() bool { return h.HS.Calls(hssim.EPBan) >= base+rooms/3 }, 10*time.Minute, "a third of the fan-out")
		t0 := time.Now()
		victim.Kill()
		// Done: every room banned and every job acknowledged, those the
		// killed replica held included (nothing signals the acks: poll).
		h.Eventually(func() bool { return h.HS.Calls(hssim.EPBan) >= base+1+rooms && h.JobsDrained() }, 10*time.Minute, "the rest of the fan-out")
		b.ReportMetric(time.Since(t0).Seconds(), "s-after-kill")
		h.Quiesce(5 * time.Minute)
		if err := survivor.Stop(); err != nil {
			b.Fatal(err)
		}
	}
}
