package embednats

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

func publishAndCount(t *testing.T, url string, publish bool) uint64 {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{Name: "T", Subjects: []string{"t.>"}, Storage: jetstream.FileStorage})
	if err != nil {
		t.Fatal(err)
	}
	if publish {
		if _, err := js.Publish(ctx, "t.x", []byte("kept")); err != nil {
			t.Fatal(err)
		}
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Msgs
}

func TestRestartKeepsData(t *testing.T) {
	for _, tmp := range []bool{false, true} {
		name := map[bool]string{false: "given dir", true: "temporary dir"}[tmp]
		t.Run(name, func(t *testing.T) {
			var o Options
			if !tmp {
				o.Dir = t.TempDir()
			}
			s, err := Start(o)
			if err != nil {
				t.Fatal(err)
			}
			url := s.ClientURL()
			if n := publishAndCount(t, url, true); n != 1 {
				t.Fatalf("%d messages before restart", n)
			}
			store := s.opts.Dir

			s.Stop()
			if _, err := nats.Connect(url, nats.MaxReconnects(0)); err == nil {
				t.Fatal("connected to a stopped server")
			}
			if _, err := os.Stat(store); err != nil {
				t.Fatalf("Stop removed the store: %v", err)
			}

			r, err := s.Restart()
			if err != nil {
				t.Fatal(err)
			}
			if r.ClientURL() != url {
				t.Errorf("restarted on %s, want %s", r.ClientURL(), url)
			}
			if n := publishAndCount(t, url, false); n != 1 {
				t.Fatalf("%d messages after restart, want 1", n)
			}
			// The old handle no longer owns the store.
			s.Shutdown()
			if _, err := os.Stat(store); err != nil {
				t.Fatalf("old server's Shutdown removed the restarted server's store: %v", err)
			}
			r.Shutdown()
			_, err = os.Stat(store)
			if tmp && !os.IsNotExist(err) {
				t.Errorf("temporary store left behind: %v", err)
			}
			if !tmp && err != nil {
				t.Errorf("given store removed: %v", err)
			}
		})
	}
}

func TestStartTestBindsLoopback(t *testing.T) {
	s := StartTest(t)
	if s.opts.Host != "127.0.0.1" || s.opts.Port == 0 {
		t.Fatalf("bound %s:%d", s.opts.Host, s.opts.Port)
	}
	if !s.JetStreamEnabled() {
		t.Fatal("JetStream disabled")
	}
}

func TestClusterReplicates(t *testing.T) {
	c := StartCluster(t, 3)
	nc, err := nats.Connect(c.ClientURLs())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "R3", Subjects: []string{"r3.>"}, Replicas: 3})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(ctx, "r3.x", []byte("x")); err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.Cluster == nil || len(info.Cluster.Replicas) != 2 || info.State.Msgs != 1 {
		t.Fatalf("stream cluster info %+v, %d messages; want a leader and two replicas", info.Cluster, info.State.Msgs)
	}
}
