package cas

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/cactus-comments/appservice/pkg/embednats"
)

func TestIsConflict(t *testing.T) {
	api := func(code jetstream.ErrorCode) error {
		return &jetstream.APIError{Code: 400, ErrorCode: code, Description: "wrong last sequence"}
	}
	for _, tt := range []struct {
		name string
		err  error
		want bool
	}{
		{"key exists", jetstream.ErrKeyExists, true},
		{"revision mismatch", jetstream.ErrKeyRevisionMismatch, true},
		{"10071", api(jetstream.JSErrCodeStreamWrongLastSequence), true},
		{"10164 (replicated)", api(jetstream.JSErrCodeStreamWrongLastSequenceConstant), true},
		{"10164 wrapped", fmt.Errorf("write: %w", api(jetstream.JSErrCodeStreamWrongLastSequenceConstant)), true},
		{"not found", jetstream.ErrKeyNotFound, false},
		{"other API error", api(jetstream.JSErrCodeStreamNotFound), false},
		{"timeout", context.DeadlineExceeded, false},
		{"nil", nil, false},
	} {
		if got := IsConflict(tt.err); got != tt.want {
			t.Errorf("%s: IsConflict = %v, want %v", tt.name, got, tt.want)
		}
	}
}

// bucketOn creates (or binds) the bucket through a connection of its own.
func bucketOn(t *testing.T, url string, replicas int) *Bucket {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "cas_test", History: 1, Replicas: replicas}); err != nil {
		t.Fatal(err)
	}
	b, err := Open(ctx, js, "cas_test")
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Concurrent increments of one counter from connections to every node:
// none is lost and none fails, whichever code the conflicts came with.
func TestUpdateUnderContention(t *testing.T) {
	for _, tc := range []struct {
		name  string
		nodes int
	}{{"R1", 1}, {"R3", 3}} {
		t.Run(tc.name, func(t *testing.T) {
			var urls []string
			if tc.nodes == 1 {
				urls = []string{embednats.StartTest(t).ClientURL()}
			} else {
				for _, s := range embednats.StartCluster(t, tc.nodes).Servers {
					urls = append(urls, s.ClientURL())
				}
			}
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			const writers, each = 8, 15
			var calls atomic.Int64
			var wg sync.WaitGroup
			errs := make(chan error, writers*each)
			for w := range writers {
				b := bucketOn(t, urls[w%len(urls)], tc.nodes)
				wg.Go(func() {
					for range each {
						_, err := b.Update(ctx, "counter", func(cur []byte) ([]byte, bool, error) {
							calls.Add(1)
							n := 0
							if cur != nil {
								var err error
								if n, err = strconv.Atoi(string(cur)); err != nil {
									return nil, false, err
								}
							}
							return []byte(strconv.Itoa(n + 1)), true, nil
						})
						if err != nil {
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
			e, err := bucketOn(t, urls[0], tc.nodes).Get(ctx, "counter")
			if err != nil {
				t.Fatal(err)
			}
			if got := string(e.Value); got != strconv.Itoa(writers*each) {
				t.Fatalf("counter = %s, want %d", got, writers*each)
			}
			// Not a pass condition, but the test is only worth something
			// if writers did collide.
			t.Logf("%d increments took %d attempts", writers*each, calls.Load())
		})
	}
}

func TestGetAndCreate(t *testing.T) {
	b := bucketOn(t, embednats.StartTest(t).ClientURL(), 1)
	ctx := t.Context()
	for _, replicated := range []bool{false, true} {
		// Both ways of reading: direct (one replica) and from the leader.
		b.replicated = replicated
		getAndCreate(t, ctx, b)
		if err := b.KV().Purge(ctx, "k"); err != nil {
			t.Fatal(err)
		}
	}
}

func getAndCreate(t *testing.T, ctx context.Context, b *Bucket) {
	if _, err := b.Get(ctx, "k"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get of a missing key = %v", err)
	}
	if created, err := b.Create(ctx, "k", []byte("1")); err != nil || !created {
		t.Fatalf("first Create = %v, %v", created, err)
	}
	if created, err := b.Create(ctx, "k", []byte("2")); err != nil || created {
		t.Fatalf("second Create = %v, %v; want false without error", created, err)
	}
	e, err := b.Get(ctx, "k")
	if err != nil || string(e.Value) != "1" || e.Revision == 0 {
		t.Fatalf("Get = %+v, %v", e, err)
	}
	// fn saying "no change" writes nothing and returns the revision read.
	rev, err := b.Update(ctx, "k", func([]byte) ([]byte, bool, error) { return nil, false, nil })
	if err != nil || rev != e.Revision {
		t.Fatalf("no-op Update = %d, %v; want %d", rev, err, e.Revision)
	}
	boom := errors.New("boom")
	if _, err := b.Update(ctx, "k", func([]byte) ([]byte, bool, error) { return nil, false, boom }); !errors.Is(err, boom) {
		t.Fatalf("Update with a failing fn = %v", err)
	}
	for name, remove := range map[string]func() error{
		"deleted": func() error { return b.KV().Delete(ctx, "k") },
		"purged":  func() error { return b.KV().Purge(ctx, "k") },
	} {
		if _, err := b.KV().Put(ctx, "k", []byte("x")); err != nil {
			t.Fatal(err)
		}
		if err := remove(); err != nil {
			t.Fatal(err)
		}
		if _, err := b.Get(ctx, "k"); !errors.Is(err, ErrNotFound) {
			t.Errorf("Get of a %s key = %v, want not found", name, err)
		}
		// Update sees it as absent and creates it again.
		if _, err := b.Update(ctx, "k", func(cur []byte) ([]byte, bool, error) {
			if cur != nil {
				return nil, false, fmt.Errorf("%s key read as %q", name, cur)
			}
			return []byte("again"), true, nil
		}); err != nil {
			t.Errorf("Update of a %s key: %v", name, err)
		}
	}
}

// A write acknowledged through one node is what a leader read through
// another node returns next, every time.
func TestGetSeesTheLastWriteOnR3(t *testing.T) {
	c := embednats.StartCluster(t, 3)
	var bs []*Bucket
	for _, s := range c.Servers {
		b := bucketOn(t, s.ClientURL(), 3)
		if !b.replicated {
			t.Fatal("an R3 bucket not recognised as replicated: its reads would not go to the leader")
		}
		bs = append(bs, b)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for i := range 300 {
		w, r := bs[i%3], bs[(i+1)%3]
		want := strconv.Itoa(i)
		if _, err := w.KV().Put(ctx, "k", []byte(want)); err != nil {
			t.Fatal(err)
		}
		e, err := r.Get(ctx, "k")
		if err != nil {
			t.Fatal(err)
		}
		if string(e.Value) != want {
			t.Fatalf("write %d: read back %q through another node", i, e.Value)
		}
	}
}
