package partition

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/cactus-comments/appservice/pkg/embednats"
)

// Why members' records expire by the bucket's TTL and not by per-key TTLs:
// nats.go's KeyValue.Update (v1.55) writes without a TTL, so a key created
// with KeyTTL and refreshed with Update (the only compare-and-set write)
// would never expire. The bucket's TTL applies to every write, and with
// LimitMarkerTTL its expiry leaves a marker that watchers see.
func TestLeaseMechanics(t *testing.T) {
	_, _, js := embednats.JetStreamTest(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	perKey, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "per_key", LimitMarkerTTL: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	rev, err := perKey.Create(ctx, "k", []byte("1"), jetstream.KeyTTL(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := perKey.Update(ctx, "k", []byte("2"), rev); err != nil {
		t.Fatal(err)
	}

	bucket, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "leased", TTL: time.Second, LimitMarkerTTL: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	w, err := bucket.Watch(ctx, ">", jetstream.UpdatesOnly())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = w.Stop() }()
	rev, err = bucket.Create(ctx, "k", []byte("1"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bucket.Update(ctx, "k", []byte("2"), rev); err != nil {
		t.Fatal(err)
	}
	var ops []jetstream.KeyValueOp
	for len(ops) < 3 {
		select {
		case e := <-w.Updates():
			ops = append(ops, e.Operation())
		case <-ctx.Done():
			t.Fatalf("watch saw %v, then nothing: the lease never expired", ops)
		}
	}
	if ops[2] != jetstream.KeyValuePurge {
		t.Fatalf("watch saw %v, want put, put, then the expiry marker", ops)
	}
	if _, err := bucket.Get(ctx, "k"); err == nil {
		t.Error("the leased key survived its bucket's TTL")
	}
	// Long after its own TTL, the per-key one is still there.
	if e, err := perKey.Get(ctx, "k"); err != nil || string(e.Value()) != "2" {
		t.Errorf("per-key TTL after Update: %v, %v; if Update now keeps the TTL, per-key leases became possible", e, err)
	}
}
