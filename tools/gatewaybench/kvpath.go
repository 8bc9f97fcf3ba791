package main

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/cactus-comments/appservice/pkg/bus"
)

// kvPaths measures, against the same nats-server, the registry round
// trips of a first-visit alias query as the provisioner makes them today
// and as a proposed design would, n times each, interleaved:
//
//   - today: read the site, write the room, write the index, re-read the
//     site: four sequential round trips;
//   - proposed: the site from an in-memory snapshot kept by a KV watch,
//     the room and the index written at once (two async publishes, one
//     wait), then one read of the site to catch a change that raced the
//     creation: two round trips.
//
// It also times a bare NATS request/reply (the gateway-to-provisioner
// hop) with a responder that answers at once.
func kvPaths(ctx context.Context, natsURL string, n int) (map[string][]int64, error) {
	nc, js, err := connectJS(natsURL, "gatewaybench-kvpath")
	if err != nil {
		return nil, err
	}
	defer nc.Close()
	kv := map[string]jetstream.KeyValue{}
	for _, b := range []string{bus.BucketSites, bus.BucketRooms, bus.BucketIndex} {
		if kv[b], err = js.KeyValue(ctx, b); err != nil {
			return nil, err
		}
	}
	siteKey := bus.Token("kvpath")
	site := []byte(`{"name":"kvpath","owner":"@owner:example.org","moderation_room":"!mod:example.org","power_levels":{"users":{"@owner:example.org":100}}}`)
	if _, err := kv[bus.BucketSites].Put(ctx, siteKey, site); err != nil {
		return nil, err
	}
	// The snapshot: a watch applies every change of the sites bucket.
	var (
		mu   sync.Mutex
		snap = map[string][]byte{}
	)
	w, err := kv[bus.BucketSites].WatchAll(ctx)
	if err != nil {
		return nil, err
	}
	defer w.Stop()
	go func() {
		for e := range w.Updates() {
			if e == nil {
				continue
			}
			mu.Lock()
			snap[e.Key()] = e.Value()
			mu.Unlock()
		}
	}()
	reply, err := nc.Subscribe("kvpath.rpc", func(m *nats.Msg) { _ = m.Respond([]byte(`{"exists":true}`)) })
	if err != nil {
		return nil, err
	}
	defer reply.Unsubscribe()
	room := []byte(`{"site":"kvpath","section":"s","room_id":"!room:example.org","alias":"#comments_kvpath_s:example.org"}`)

	today := func(i int) error {
		if _, err := kv[bus.BucketSites].Get(ctx, siteKey); err != nil {
			return err
		}
		if _, err := kv[bus.BucketRooms].Put(ctx, siteKey+"."+strconv.Itoa(i), room); err != nil {
			return err
		}
		if _, err := kv[bus.BucketIndex].Put(ctx, bus.Token("!r"+strconv.Itoa(i)+":example.org"), room); err != nil {
			return err
		}
		_, err := kv[bus.BucketSites].Get(ctx, siteKey)
		return err
	}
	proposed := func(i int) error {
		mu.Lock()
		_, ok := snap[siteKey]
		mu.Unlock()
		if !ok {
			return fmt.Errorf("site not in the snapshot")
		}
		f1, err := js.PublishAsync("$KV."+bus.BucketRooms+"."+siteKey+"."+strconv.Itoa(i), room)
		if err != nil {
			return err
		}
		f2, err := js.PublishAsync("$KV."+bus.BucketIndex+"."+bus.Token("!r"+strconv.Itoa(i)+":example.org"), room)
		if err != nil {
			return err
		}
		for _, f := range []jetstream.PubAckFuture{f1, f2} {
			select {
			case <-f.Ok():
			case err := <-f.Err():
				return err
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		_, err = kv[bus.BucketSites].Get(ctx, siteKey)
		return err
	}
	rpc := func(int) error {
		_, err := nc.Request("kvpath.rpc", []byte(`{"alias":"#comments_kvpath_s:example.org"}`), 5*time.Second)
		return err
	}
	paths := []struct {
		name string
		fn   func(int) error
	}{{"today", today}, {"proposed", proposed}, {"request", rpc}}
	out := map[string][]int64{}
	for i := range n + 50 {
		for _, p := range paths {
			t0 := time.Now()
			if err := p.fn(i); err != nil {
				return nil, fmt.Errorf("%s: %w", p.name, err)
			}
			if i >= 50 {
				out[p.name] = append(out[p.name], int64(time.Since(t0)))
			}
		}
	}
	return out, nil
}
