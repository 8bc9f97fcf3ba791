package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/cactus-comments/appservice/pkg/bus"
	"github.com/cactus-comments/appservice/pkg/config"
	"github.com/cactus-comments/appservice/pkg/mxid"
)

// Benchmarks of the bot through the whole path: a user's message is stored
// by the simulator, pushed to the gateway, published to JetStream, handled
// by a botworker, and the reply sent back to the simulator. Latency is
// from the client's send to the reply being in the room's timeline.
//
//	go test -run '^$' -bench BenchmarkBot -benchtime 200x ./e2e/

func reportLatencies(b *testing.B, lat []time.Duration) {
	b.Helper()
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	q := func(p float64) float64 {
		i := int(p * float64(len(lat)-1))
		return float64(lat[i].Microseconds()) / 1000
	}
	b.ReportMetric(q(0.50), "p50_ms")
	b.ReportMetric(q(0.99), "p99_ms")
	b.ReportMetric(float64(lat[len(lat)-1].Microseconds())/1000, "max_ms")
}

func benchBot(b *testing.B, memory bool) (*Harness, *ReplyWatch) {
	h := Start(b, Options{Memory: memory, Concurrency: 16})
	_, w := h.StartWatchedBot(func(c *config.Config) { c.RegistrationLimit = 1 << 20 })
	return h, w
}

func waitReplies(b *testing.B, h *Harness, w *ReplyWatch, room mxid.RoomID, n int) {
	ctx, cancel := context.WithTimeout(h.Ctx, 60*time.Second)
	defer cancel()
	if err := w.Wait(ctx, room, n); err != nil {
		b.Error(err)
	}
}

// One command at a time: the latency a site owner sees.
func BenchmarkBotLatency(b *testing.B) {
	for _, storage := range []string{"file", "memory"} {
		for _, cmd := range []string{"help", "register"} {
			b.Run(storage+"/"+cmd, func(b *testing.B) {
				h, w := benchBot(b, storage == "memory")
				owner := h.User("owner")
				dm := h.DirectChat(owner)
				lat := make([]time.Duration, 0, b.N)
				b.ResetTimer()
				for i := range b.N {
					body := "help"
					if cmd == "register" {
						body = fmt.Sprintf("register site%d", i)
					}
					start := time.Now()
					h.Say(owner, dm, body)
					waitReplies(b, h, w, dm, i+1)
					lat = append(lat, time.Since(start))
				}
				b.StopTimer()
				reportLatencies(b, lat)
			})
		}
	}
}

// Many owners typing at once, each in their own direct chat: throughput
// of the bot (one replica, 16 lanes) and the latency under that load.
func BenchmarkBotThroughput(b *testing.B) {
	for _, owners := range []int{50, 200} {
		for _, cmd := range []string{"help", "register"} {
			b.Run(fmt.Sprintf("owners=%d/%s", owners, cmd), func(b *testing.B) {
				h, w := benchBot(b, false)
				users := make([]*User, owners)
				dms := make([]mxid.RoomID, owners)
				for i := range owners {
					users[i] = h.User(fmt.Sprintf("owner%d", i))
					dms[i] = h.DirectChat(users[i])
				}
				// b.N commands in total, spread over the owners; each owner
				// sends its next command when the previous one is answered.
				var (
					mu  sync.Mutex
					lat = make([]time.Duration, 0, b.N)
					wg  sync.WaitGroup
				)
				b.ResetTimer()
				start := time.Now()
				for o := range owners {
					n := b.N / owners
					if o < b.N%owners {
						n++
					}
					wg.Go(func() {
						for i := range n {
							body := "help"
							if cmd == "register" {
								body = fmt.Sprintf("register o%ds%d", o, i)
							}
							t0 := time.Now()
							h.Say(users[o], dms[o], body)
							waitReplies(b, h, w, dms[o], i+1)
							d := time.Since(t0)
							mu.Lock()
							lat = append(lat, d)
							mu.Unlock()
						}
					})
				}
				wg.Wait()
				elapsed := time.Since(start)
				b.StopTimer()
				b.ReportMetric(float64(b.N)/elapsed.Seconds(), "cmds/s")
				reportLatencies(b, lat)
			})
		}
	}
}

// The botworker alone: commands published straight to JetStream (no
// homeserver push, no gateway), replies sent to the simulator. This is the
// bot's own capacity; the difference to BenchmarkBotThroughput is the
// delivery path in front of it.
func BenchmarkBotDirect(b *testing.B) {
	for _, cmd := range []string{"help", "register"} {
		b.Run(cmd, func(b *testing.B) {
			h, w := benchBot(b, false)
			const owners = 100
			users := make([]*User, owners)
			dms := make([]mxid.RoomID, owners)
			for i := range owners {
				users[i] = h.User(fmt.Sprintf("owner%d", i))
				dms[i] = h.DirectChat(users[i])
			}
			per := make([]int, owners)
			b.ResetTimer()
			start := time.Now()
			var acks []jetstream.PubAckFuture
			for i := range b.N {
				o := i % owners
				body := "help"
				if cmd == "register" {
					body = fmt.Sprintf("register d%d", i)
				}
				raw, _ := json.Marshal(map[string]any{
					"event_id": fmt.Sprintf("$bench%d-%d", i, start.UnixNano()), "type": "m.room.message",
					"room_id": dms[o].String(), "sender": users[o].ID.String(), "origin_server_ts": time.Now().UnixMilli(),
					"content": map[string]any{"msgtype": "m.text", "body": body},
				})
				f, err := h.JS.PublishAsync(bus.EventSubject(bus.ClassBot, dms[o].String()), raw)
				if err != nil {
					b.Fatal(err)
				}
				acks = append(acks, f)
				per[o]++
			}
			for _, f := range acks {
				select {
				case <-f.Ok():
				case err := <-f.Err():
					b.Fatal(err)
				}
			}
			for o := range owners {
				waitReplies(b, h, w, dms[o], per[o])
			}
			elapsed := time.Since(start)
			b.StopTimer()
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "cmds/s")
		})
	}
}
