package botworker

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/cactus-comments/appservice/pkg/bus"
	"github.com/cactus-comments/appservice/pkg/cas"
	"github.com/cactus-comments/appservice/pkg/embednats"
)

// On a replicated bucket a lost compare-and-set comes back with another
// error code than on a single replica; every one must be read as a
// conflict and retried, or concurrent registrations of one user fail.
func TestStateUpdateOnReplicatedBucket(t *testing.T) {
	c := embednats.StartCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const writers, each = 6, 10
	var wg sync.WaitGroup
	errs := make(chan error, writers*each)
	for w := range writers {
		// One connection per writer, each to a different node, as
		// replicas of the botworker would be.
		nc, err := nats.Connect(c.Servers[w%len(c.Servers)].ClientURL())
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		js, err := jetstream.New(nc)
		if err != nil {
			t.Fatal(err)
		}
		if err := (bus.Topology{Replicas: 3}).Ensure(ctx, js); err != nil {
			t.Fatal(err)
		}
		b, err := cas.Open(ctx, js, bus.BucketLimit)
		if err != nil {
			t.Fatal(err)
		}
		s := &state{b: b, now: time.Now}
		wg.Go(func() {
			for i := range each {
				site := fmt.Sprintf("site-%d-%d", w, i)
				if _, _, err := s.claim(ctx, alice, site, "$"+site, 1000, false); err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}
