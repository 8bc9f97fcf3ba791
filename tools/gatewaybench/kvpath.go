package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/cactus-comments/appservice/pkg/bus"
	"github.com/cactus-comments/appservice/pkg/registry"
)

// kvPaths measures, against the same nats-server, the registry round
// trips of a first-visit alias query, n times each, interleaved:
//
//   - sequential: read the site, write the room, write the index, re-read
//     the site: four round trips one after another, each read decoded;
//   - the provisioner's: the site from the registry's watched snapshot
//     (no round trip), the room and the index written together
//     (Registry.PutRoom), then a revision check of the site that decodes
//     nothing unless it moved (Registry.SiteIfMoved): two round trips.
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
	reg, err := registry.Open(ctx, js)
	if err != nil {
		return nil, err
	}
	const name = "kvpath"
	siteKey := bus.Token(name)
	site := &registry.Site{Name: name, Owner: "@owner:example.org", ModerationRoom: "!mod:example.org",
		PowerLevels: json.RawMessage(`{"users":{"@owner:example.org":100}}`)}
	if err := reg.PutSite(ctx, site); err != nil {
		return nil, err
	}
	wctx, stop := context.WithCancel(ctx)
	defer stop()
	snap := reg.WatchSites(wctx, nil)
	reply, err := nc.Subscribe("kvpath.rpc", func(m *nats.Msg) { _ = m.Respond([]byte(`{"exists":true}`)) })
	if err != nil {
		return nil, err
	}
	defer reply.Unsubscribe()
	room := []byte(`{"site":"kvpath","section":"s","room_id":"!room:example.org","alias":"#comments_kvpath_s:example.org"}`)
	roomID := func(i int) string { return "!r" + strconv.Itoa(i) + ":example.org" }

	sequential := func(i int) error {
		var s registry.Site
		e, err := kv[bus.BucketSites].Get(ctx, siteKey)
		if err != nil {
			return err
		}
		if err := json.Unmarshal(e.Value(), &s); err != nil {
			return err
		}
		if _, err := kv[bus.BucketRooms].Put(ctx, siteKey+"."+bus.Token("s"+strconv.Itoa(i)), room); err != nil {
			return err
		}
		if _, err := kv[bus.BucketIndex].Put(ctx, bus.Token(roomID(i)), room); err != nil {
			return err
		}
		if e, err = kv[bus.BucketSites].Get(ctx, siteKey); err != nil {
			return err
		}
		return json.Unmarshal(e.Value(), &s)
	}
	provisioner := func(i int) error {
		_, rev, err := snap.Site(ctx, name)
		if err != nil {
			return err
		}
		if err := reg.PutRoom(ctx, registry.Room{Site: name, Section: "p" + strconv.Itoa(i), RoomID: roomID(-1 - i)}); err != nil {
			return err
		}
		_, _, err = reg.SiteIfMoved(ctx, name, rev)
		return err
	}
	rpc := func(int) error {
		_, err := nc.Request("kvpath.rpc", []byte(`{"alias":"#comments_kvpath_s:example.org"}`), 5*time.Second)
		return err
	}
	paths := []struct {
		name string
		fn   func(int) error
	}{{"sequential", sequential}, {"provisioner", provisioner}, {"request", rpc}}
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
