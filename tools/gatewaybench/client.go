package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/cactus-comments/appservice/tools/gatewaybench/publish"
)

// clientResult is what a client process reports on its RESULT line.
type clientResult struct {
	WallNS int64
	Events int
	// LatNS are the measured transactions' latencies (sender 0's only in
	// the ban scenario).
	LatNS []int64
	// StartNS is when the measured phase started (Unix ns); PushNS when
	// each measured transaction was sent, by sender and number from the
	// first measured one (Unix ns: the stream's stored times are compared
	// with them).
	StartNS int64
	PushNS  [][]int64
	// Sent and SentTxns are the events and transactions sent, warm-up
	// included: what the event stream holds once everything is stored.
	Sent, SentTxns int
	// Duplicates and Fallbacks count what the publishers reported.
	Duplicates, Fallbacks int
}

// sendFunc sends transaction n of sender s and returns its event count.
type sendFunc func(ctx context.Context, s, n int) (events int, err error)

// runClient is a client process: it prepares, warms up, says READY, waits
// for a line on stdin, runs the measured transactions and prints RESULT.
func runClient(ctx context.Context, sp spec, prepare func([][][]byte) (sendFunc, func(), error)) error {
	bodies := sp.bodies()
	send, done, err := prepare(bodies)
	if err != nil {
		return err
	}
	defer done()
	for s := range sp.Senders {
		for n := range sp.Warmup {
			if _, err := send(ctx, s, n); err != nil {
				return fmt.Errorf("warmup: %w", err)
			}
		}
	}
	fmt.Println("READY")
	stdin := bufio.NewReader(os.Stdin)
	if _, err := stdin.ReadString('\n'); err != nil {
		return fmt.Errorf("waiting for the start: %w", err)
	}
	var (
		wg       sync.WaitGroup
		events   atomic.Int64
		sentTxns atomic.Int64
		bulkLeft atomic.Int64
		errOnce  sync.Once
		firstErr error
		lat      = make([][]int64, sp.Senders)
		pushed   = make([][]int64, sp.Senders)
	)
	warmEvents := 0
	for s := range sp.Senders {
		for n := range sp.Warmup {
			warmEvents += eventsOf(bodies[s][n])
		}
	}
	bulkLeft.Store(int64(sp.Senders))
	if sp.Ban {
		bulkLeft.Store(int64(sp.Senders - 1))
	}
	start := time.Now()
	sentTxns.Store(int64(sp.Senders * sp.Warmup))
	for s := range sp.Senders {
		wg.Go(func() {
			ban := sp.Ban && s == 0
			if !ban {
				defer bulkLeft.Add(-1)
			}
			for n := sp.Warmup; n < len(bodies[s]); n++ {
				if ban && bulkLeft.Load() == 0 {
					return
				}
				t0 := time.Now()
				pushed[s] = append(pushed[s], t0.UnixNano())
				k, err := send(ctx, s, n)
				if err != nil {
					errOnce.Do(func() { firstErr = err })
					return
				}
				d := time.Since(t0)
				events.Add(int64(k))
				sentTxns.Add(1)
				if ban || !sp.Ban {
					lat[s] = append(lat[s], int64(d))
				}
			}
		})
	}
	wg.Wait()
	wall := time.Since(start)
	if firstErr != nil {
		return firstErr
	}
	r := clientResult{WallNS: int64(wall), Events: int(events.Load()), StartNS: start.UnixNano(), PushNS: pushed,
		Sent: warmEvents + int(events.Load()), SentTxns: int(sentTxns.Load())}
	for _, l := range lat {
		r.LatNS = append(r.LatNS, l...)
	}
	if st, ok := stats.Load().(*pubStats); ok {
		r.Duplicates, r.Fallbacks = int(st.dups.Load()), int(st.fallbacks.Load())
	}
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	fmt.Printf("RESULT %s\n", b)
	// Stay until the parent has read our memory and closes stdin.
	_, _ = stdin.ReadString('\n')
	return nil
}

// eventsOf counts the events of a transaction body.
func eventsOf(body []byte) int {
	var txn struct{ Events []json.RawMessage }
	_ = json.Unmarshal(body, &txn)
	return len(txn.Events)
}

type pubStats struct{ dups, fallbacks atomic.Int64 }

// stats holds the publisher client's counters (one client per process).
var stats atomic.Value

// publisherClient publishes the workload straight to JetStream with one
// of the publish designs, on one connection, the messages built inside
// the timed loop as the gateway builds them.
func publisherClient(natsURL, design, bot string) func([][][]byte) (sendFunc, func(), error) {
	return func(bodies [][][]byte) (sendFunc, func(), error) {
		nc, err := nats.Connect(natsURL, nats.Name("gatewaybench-"+design), nats.ReconnectBufSize(-1))
		if err != nil {
			return nil, nil, err
		}
		p, err := publish.New(design, nc, 8192)
		if err != nil {
			nc.Close()
			return nil, nil, err
		}
		evs := make([][][]decoded, len(bodies))
		for s := range bodies {
			for n, body := range bodies[s] {
				d, err := decode(body, txnID(s*1_000_000+n), bot)
				if err != nil {
					nc.Close()
					return nil, nil, err
				}
				evs[s] = append(evs[s], d)
			}
		}
		st := &pubStats{}
		stats.Store(st)
		builders := make([]builder, len(bodies))
		send := func(ctx context.Context, s, n int) (int, error) {
			ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			r, err := p.Publish(ctx, builders[s].txn(evs[s][n], bodies[s][n]))
			st.dups.Add(int64(r.Duplicates))
			if r.Fallback {
				st.fallbacks.Add(1)
			}
			return len(evs[s][n]), err
		}
		return send, func() { p.Close(); nc.Close() }, nil
	}
}

// loadClient is the homeserver: HTTP clients with one connection and one
// transaction in flight each, as Synapse sends.
func loadClient(url, hsToken string) func([][][]byte) (sendFunc, func(), error) {
	return func(bodies [][][]byte) (sendFunc, func(), error) {
		clients := make([]*http.Client, len(bodies))
		for i := range clients {
			clients[i] = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1, DisableCompression: true}}
		}
		counts := make([][]int, len(bodies))
		for s := range bodies {
			for _, b := range bodies[s] {
				counts[s] = append(counts[s], eventsOf(b))
			}
		}
		send := func(ctx context.Context, s, n int) (int, error) {
			req, err := http.NewRequestWithContext(ctx, http.MethodPut,
				url+"/_matrix/app/v1/transactions/"+strconv.Itoa(s*1_000_000+n), bytes.NewReader(bodies[s][n]))
			if err != nil {
				return 0, err
			}
			req.Header.Set("Authorization", "Bearer "+hsToken)
			req.Header.Set("Content-Type", "application/json")
			resp, err := clients[s].Do(req)
			if err != nil {
				return 0, err
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK || string(body) != "{}" {
				return 0, fmt.Errorf("transaction %d: status %d: %s", n, resp.StatusCode, body)
			}
			return counts[s][n], nil
		}
		return send, func() {}, nil
	}
}
