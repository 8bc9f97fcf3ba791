package worker

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/cactus-comments/appservice/pkg/bus"
)

// Runs that share lanes share the limit: two partition consumers with 16
// lanes each asked for, sharing 2, never run more than 2 handlers at once,
// and both get their messages handled.
func TestSharedLanes(t *testing.T) {
	e := newEnv(t)
	g := (bus.Topology{}).BotGroup()
	rooms := map[int][]string{}
	for i := 0; len(rooms[0]) < 3 || len(rooms[1]) < 3; i++ {
		room := fmt.Sprintf("!r%d:x", i)
		if p := bus.PartitionOf(room, g.Partitions); p < 2 && len(rooms[p]) < 3 {
			rooms[p] = append(rooms[p], room)
		}
	}
	for p, rs := range rooms {
		for _, r := range rs {
			e.publish(r, fmt.Sprintf("$e%d%s", p, r))
		}
	}
	lanes := NewLanes(2)
	var running, most, handled atomic.Int32
	release := make(chan struct{})
	started := make(chan struct{}, 6)
	h := func(context.Context, jetstream.Msg) error {
		n := running.Add(1)
		for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
		}
		started <- struct{}{}
		<-release
		running.Add(-1)
		handled.Add(1)
		return nil
	}
	for p := range 2 {
		o := e.options(16)
		o.Consumer, o.PriorityGroup, o.Lanes = g.Consumer(p), g.PriorityGroup, lanes
		e.run(o, h)
	}
	<-started
	<-started
	close(release)
	e.poll("every message of both partitions handled", func() bool { return handled.Load() == 6 })
	if m := most.Load(); m > 2 {
		t.Fatalf("%d handlers ran at once on 2 shared lanes", m)
	}
}
