package main

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/cactus-comments/appservice/pkg/bus"
	"github.com/cactus-comments/appservice/tools/gatewaybench/publish"
)

// dupResult is nats-server's memory at one point of a duplicate-window run.
type dupResult struct {
	Window time.Duration
	Events int
	// When: "after N events", "after purge".
	When string
	// RSS from /proc; HeapInuse from the server's own Go runtime.
	RSS, Heap int64
	Rate      float64 // events/s while publishing
	// StillDuplicate: after the purge, is an old event id still refused
	// as a duplicate (the window's map survives the purge)?
	StillDuplicate *bool
}

// dupWindow publishes millions of events of realistic ids into the event
// stream with several duplicate windows and reads nats-server's memory.
func dupWindow(ctx context.Context, b *binaries, o options) ([]dupResult, error) {
	var out []dupResult
	runs := []struct {
		window time.Duration
		marks  []int
		purge  bool
	}{
		// A window longer than the run: every event stays in it, and the
		// purge shows what a purge frees.
		{20 * time.Minute, []int{1_000_000, 4_000_000}, true},
		{bus.DuplicateWindow, []int{1_000_000, 4_000_000}, false},
		{30 * time.Second, []int{4_000_000}, false},
	}
	for _, r := range runs {
		res, err := dupRun(ctx, b, r.window, r.marks, r.purge)
		if err != nil {
			return out, fmt.Errorf("window %v: %w", r.window, err)
		}
		out = append(out, res...)
	}
	return out, nil
}

func dupRun(ctx context.Context, b *binaries, window time.Duration, marks []int, purge bool) ([]dupResult, error) {
	prof, err := freePort()
	if err != nil {
		return nil, err
	}
	ns, err := startNATS(b, "--profile", strconv.Itoa(prof))
	if err != nil {
		return nil, err
	}
	defer ns.stop()
	if err := ensureTopology(ctx, ns.url, 1, false); err != nil {
		return nil, err
	}
	nc, js, err := connectJS(ns.url, "gatewaybench-dupwindow")
	if err != nil {
		return nil, err
	}
	defer nc.Close()
	stream, err := js.Stream(ctx, bus.StreamEvents)
	if err != nil {
		return nil, err
	}
	cfg := stream.CachedInfo().Config
	cfg.Duplicates = window
	if _, err := js.UpdateStream(ctx, cfg); err != nil {
		return nil, err
	}
	heapURL := fmt.Sprintf("http://127.0.0.1:%d/debug/pprof/heap?debug=1", prof)
	sample := func(when string, events int, rate float64) dupResult {
		s := ns.sample()
		fmt.Fprintf(os.Stderr, "  window %v %s: RSS %.0f MiB\n", window, when, float64(s.RSS)/(1<<20))
		return dupResult{Window: window, Events: events, When: when, RSS: s.RSS, Heap: heapInuse(heapURL), Rate: rate}
	}
	var out []dupResult
	sent := 0
	for _, mark := range marks {
		t0 := time.Now()
		if err := flood(ctx, nc, sent, mark); err != nil {
			return out, err
		}
		rate := float64(mark-sent) / time.Since(t0).Seconds()
		sent = mark
		out = append(out, sample(fmt.Sprintf("after %dM events", mark/1_000_000), mark, rate))
	}
	if purge {
		if err := stream.Purge(ctx); err != nil {
			return out, err
		}
		// Give the server's collector and scavenger time to return what
		// the purge freed.
		time.Sleep(30 * time.Second)
		r := sample("after purging the stream, 30 s later", sent, 0)
		if path := os.Getenv("GATEWAYBENCH_HEAPPROFILE"); path != "" {
			if err := saveProfile(fmt.Sprintf("http://127.0.0.1:%d/debug/pprof/heap", prof), path); err != nil {
				return out, err
			}
		}
		p, err := publish.New("async", nc, 8192)
		if err != nil {
			return out, err
		}
		res, err := p.Publish(ctx, &publish.Txn{Msgs: []*nats.Msg{floodMsg(0)}})
		if err != nil {
			return out, err
		}
		dup := res.Duplicates == 1
		r.StillDuplicate = &dup
		out = append(out, r)
	}
	return out, nil
}

// flood publishes events from..to-1: 1 KiB each, ids shaped like Matrix
// event ids (44 bytes), over 64 rooms, four transactions of 500 in flight.
func flood(ctx context.Context, nc *nats.Conn, from, to int) error {
	const batch, workers = 500, 4
	p, err := publish.New("lean", nc, 8192)
	if err != nil {
		return err
	}
	defer p.Close()
	next := make(chan int)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	for range workers {
		wg.Go(func() {
			for start := range next {
				t := &publish.Txn{}
				for i := start; i < min(to, start+batch); i++ {
					t.Msgs = append(t.Msgs, floodMsg(i))
				}
				c, cancel := context.WithTimeout(ctx, 30*time.Second)
				_, err := p.Publish(c, t)
				cancel()
				if err != nil {
					mu.Lock()
					firstErr = err
					mu.Unlock()
				}
			}
		})
	}
	for start := from; start < to; start += batch {
		mu.Lock()
		failed := firstErr
		mu.Unlock()
		if failed != nil || ctx.Err() != nil {
			break
		}
		next <- start
	}
	close(next)
	wg.Wait()
	if firstErr == nil {
		firstErr = ctx.Err()
	}
	return firstErr
}

var floodPayload = []byte(`{"type":"m.room.message","content":{"msgtype":"m.text","body":"` + strings.Repeat("comment ", 120) + `"}}`)

func floodMsg(i int) *nats.Msg {
	var raw [32]byte
	binary.BigEndian.PutUint64(raw[:], uint64(i))
	copy(raw[8:], "dedup-window-measurement-ids....")
	id := "$" + base64.RawURLEncoding.EncodeToString(raw[:])
	room := "!room" + strconv.Itoa(i%64) + "AbCdEfGhIjKlMn:example.org"
	m := nats.NewMsg(bus.EventSubject(bus.ClassOther, room))
	m.Header.Set(bus.HeaderMsgID, id)
	m.Data = floodPayload
	return m
}

// saveProfile stores the profile at url in path, for go tool pprof.
func saveProfile(url, path string) error {
	resp, err := http.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// heapInuse reads HeapInuse from a Go program's heap profile page.
func heapInuse(url string) int64 {
	resp, err := http.Get(url)
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "# HeapInuse = "); ok {
			n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			return n
		}
	}
	return 0
}

// dupTable renders the duplicate-window results.
func dupTable(rs []dupResult) string {
	var b strings.Builder
	b.WriteString("| duplicate window | when | publish rate | nats-server RSS | nats-server Go heap in use | old id still a duplicate |\n")
	b.WriteString("|---|---|---|---|---|---|\n")
	for _, r := range rs {
		rate, dup := "", ""
		if r.Rate > 0 {
			rate = thousands(r.Rate) + " events/s"
		}
		if r.StillDuplicate != nil {
			dup = strconv.FormatBool(*r.StillDuplicate)
		}
		fmt.Fprintf(&b, "| %v | %s | %s | %.0f MiB | %.0f MiB | %s |\n",
			r.Window, r.When, rate, float64(r.RSS)/(1<<20), float64(r.Heap)/(1<<20), dup)
	}
	return strings.TrimRight(b.String(), "\n")
}
