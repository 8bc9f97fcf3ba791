package service

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"time"

	"github.com/cactus-comments/appservice/pkg/bus"
	"github.com/cactus-comments/appservice/pkg/matrix"
	"github.com/cactus-comments/appservice/pkg/worker"
)

// WorkerHealth is what a worker service knows about its own progress:
// whether the homeserver answers, and how much work waits to be retried.
type WorkerHealth struct {
	Homeserver *matrix.Metrics
	Worker     *worker.Metrics
}

// Status fills a status report.
func (h WorkerHealth) Status(s *bus.Status) {
	if since, status, down := h.Homeserver.Unreachable(); down {
		s.HomeserverUnreachableSince = &since
		s.HomeserverLastStatus = status
	}
	if h.Worker != nil {
		s.WaitingRetry = h.Worker.Waiting()
	}
}

// Detail is the /readyz line while the homeserver is unreachable, "" when
// it answers.
func (h WorkerHealth) Detail() string {
	var s bus.Status
	h.Status(&s)
	return HomeserverDetail(s, time.Now())
}

// HomeserverDetail says, for a status report, that the homeserver does
// not answer and since when; "" if it does.
func HomeserverDetail(s bus.Status, now time.Time) string {
	if s.HomeserverUnreachableSince == nil {
		return ""
	}
	last := "no response"
	if s.HomeserverLastStatus != 0 {
		last = fmt.Sprintf("HTTP %d %s", s.HomeserverLastStatus, http.StatusText(s.HomeserverLastStatus))
	}
	since := *s.HomeserverUnreachableSince
	return fmt.Sprintf("homeserver unreachable since %s (%s; last attempt: %s); %d messages waiting here to be retried",
		since.UTC().Format(time.RFC3339), now.Sub(since).Round(time.Second), last, s.WaitingRetry)
}

// ReportWorker makes the runtime tell operators about a worker service's
// health: a /readyz detail while the homeserver is unreachable (readiness
// itself stays: restarting a worker does not fix a homeserver), and a
// status report in bus.BucketStatus every bus.StatusEvery for cactusctl
// doctor, until ctx ends; the report is deleted then.
func (r *Runtime) ReportWorker(ctx context.Context, h WorkerHealth) {
	r.AddReadyDetail(h.Detail)
	kv, err := r.JS.KeyValue(ctx, bus.BucketStatus)
	if err != nil {
		r.Log.Warn("status reports disabled: no status bucket", "err", err)
		return
	}
	id := r.Instance()
	key := bus.StatusKey(r.Name, id)
	report := func() {
		s := bus.Status{Service: r.Name, Instance: id, At: time.Now().UTC()}
		h.Status(&s)
		b, err := json.Marshal(s)
		if err != nil {
			return
		}
		if _, err := kv.Put(ctx, key, b); err != nil && ctx.Err() == nil {
			r.Log.Debug("status report not stored", "err", err)
		}
	}
	go func() {
		t := time.NewTicker(bus.StatusEvery)
		defer t.Stop()
		for {
			report()
			select {
			case <-ctx.Done():
				dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
				defer cancel()
				_ = kv.Delete(dctx, key)
				return
			case <-t.C:
			}
		}
	}()
}

// Instance names this replica among the service's replicas: the host
// name (a pod's name in Kubernetes) and a suffix unique to the runtime.
func (r *Runtime) Instance() string {
	r.instanceOnce.Do(func() {
		host, _ := os.Hostname()
		if host == "" {
			host = "host"
		}
		b := make([]byte, 3)
		_, _ = rand.Read(b)
		r.instance = host + "-" + hex.EncodeToString(b)
	})
	return r.instance
}
