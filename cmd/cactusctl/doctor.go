package main

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/cactus-comments/appservice/pkg/bus"
	"github.com/cactus-comments/appservice/pkg/config"
	"github.com/cactus-comments/appservice/pkg/matrix"
	"github.com/cactus-comments/appservice/pkg/registration"
	"github.com/cactus-comments/appservice/pkg/service"
)

// Check outcomes. Only fail changes the exit code.
const (
	statusOK   = "ok"
	statusFail = "FAIL"
	statusWarn = "WARN"
	statusSkip = "skip"
)

type report struct {
	w      io.Writer
	failed bool
}

func (r *report) line(status, name, format string, args ...any) {
	if status == statusFail {
		r.failed = true
	}
	fmt.Fprintf(r.w, "%-4s  %-26s %s\n", status, name, fmt.Sprintf(format, args...))
}

// doctor runs every check and reports each on a line of its own.
func doctor(ctx context.Context, e *env, cf *cfgFlags, maxLag uint64, regFile string) error {
	if _, err := cf.lookup(e); err != nil {
		return err
	}
	r := &report{w: e.stdout}
	cfg, cfgErr := cf.full(e)
	if cfgErr != nil {
		var ps config.Problems
		if !errors.As(cfgErr, &ps) {
			return cfgErr
		}
		for _, p := range ps {
			r.line(statusFail, "config", "%s", p)
		}
		// The NATS checks need only the NATS variables: run them anyway so
		// one invocation shows as much as it can.
		if partial, err := cf.natsOnly(e); err == nil {
			doctorNATS(ctx, cf, r, partial, maxLag)
		}
		return usageError{errors.New("configuration is invalid")}
	}
	r.line(statusOK, "config", "valid; bot %s, homeserver %s", cfg.UserID, cfg.HomeserverURL)
	if regFile != "" {
		checkRegistration(r, cfg, regFile)
	}
	doctorHomeserver(ctx, cf, r, cfg)
	doctorNATS(ctx, cf, r, cfg, maxLag)
	if r.failed {
		return errSilent
	}
	return nil
}

func checkRegistration(r *report, cfg *config.Config, path string) {
	reg, err := registration.Load(path)
	if err != nil {
		r.line(statusFail, "registration", "%v", err)
		return
	}
	var problems []string
	eq := func(a, b string) bool { return subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1 }
	if !eq(reg.ASToken, cfg.ASToken.Reveal()) {
		problems = append(problems, "as_token differs from CACTUS_AS_TOKEN")
	}
	if !eq(reg.HSToken, cfg.HSToken.Reveal()) {
		problems = append(problems, "hs_token differs from CACTUS_HS_TOKEN")
	}
	if reg.SenderLocalpart != cfg.Bot().Localpart() {
		problems = append(problems, fmt.Sprintf("sender_localpart %q is not the localpart of CACTUS_USER_ID", reg.SenderLocalpart))
	}
	if cfg.AppserviceID != "" && reg.ID != cfg.AppserviceID {
		problems = append(problems, fmt.Sprintf("id %q differs from CACTUS_APPSERVICE_ID", reg.ID))
	}
	m, err := reg.Compile(registration.AnchorStart)
	if err != nil {
		problems = append(problems, err.Error())
	} else {
		if ok, excl := m.User(cfg.UserID); !ok || !excl {
			problems = append(problems, "the users namespace does not claim the bot exclusively")
		}
		probe := "#" + cfg.NamespacePrefix + "site_section:" + cfg.ServerName()
		if ok, excl := m.Alias(probe); !ok || !excl {
			problems = append(problems, fmt.Sprintf("the aliases namespace does not claim %s exclusively", probe))
		}
	}
	if len(problems) > 0 {
		r.line(statusFail, "registration", "%s: %s", path, strings.Join(problems, "; "))
		return
	}
	if reg.RateLimitedOrDefault() {
		r.line(statusWarn, "registration", "%s matches, but is rate limited (set rate_limited: false)", path)
		return
	}
	r.line(statusOK, "registration", "%s matches the configuration", path)
}

func doctorHomeserver(ctx context.Context, cf *cfgFlags, r *report, cfg *config.Config) {
	hctx, cancel := context.WithTimeout(ctx, cf.timeout)
	defer cancel()
	versions, err := clientVersions(hctx, cfg.HomeserverURL)
	if err != nil {
		r.line(statusFail, "homeserver", "%s: %v", cfg.HomeserverURL, err)
		r.line(statusSkip, "as_token", "homeserver unreachable")
		r.line(statusSkip, "ping", "homeserver unreachable")
		return
	}
	r.line(statusOK, "homeserver", "%s answers (spec versions up to %s)", cfg.HomeserverURL, versions)

	mc, err := matrix.NewClient(matrix.Config{HomeserverURL: cfg.HomeserverURL, Token: cfg.ASToken.Reveal(), MaxAttempts: 2, RequestTimeout: cf.timeout})
	if err != nil {
		r.line(statusFail, "as_token", "%v", err)
		return
	}
	who, err := mc.Whoami(hctx)
	switch {
	case err != nil && matrix.Status(err) == http.StatusUnauthorized:
		r.line(statusFail, "as_token", "the homeserver does not know CACTUS_AS_TOKEN (%s): is the registration file loaded?", matrix.ErrCode(err))
	case err != nil:
		r.line(statusFail, "as_token", "whoami: %v", err)
	case who.String() != cfg.UserID:
		r.line(statusFail, "as_token", "accepted, but it belongs to %s, not CACTUS_USER_ID %s", who, cfg.UserID)
	default:
		r.line(statusOK, "as_token", "accepted: whoami is %s", who)
	}

	if cfg.AppserviceID == "" {
		r.line(statusSkip, "ping", "CACTUS_APPSERVICE_ID is not set")
		return
	}
	txn := make([]byte, 8)
	_, _ = rand.Read(txn)
	d, err := mc.AppservicePing(hctx, cfg.AppserviceID, "cactusctl-doctor-"+hex.EncodeToString(txn))
	switch {
	case err == nil:
		r.line(statusOK, "ping", "homeserver reached the gateway in %s", roundDuration(d))
	case matrix.ErrCode(err) == "M_UNRECOGNIZED" || matrix.Status(err) == http.StatusNotFound && matrix.ErrCode(err) == "":
		r.line(statusSkip, "ping", "the homeserver has no appservice ping endpoint (Dendrite and older servers)")
	default:
		r.line(statusFail, "ping", "homeserver to gateway: %v", err)
	}
}

// clientVersions fetches /_matrix/client/versions, which needs no token.
func clientVersions(ctx context.Context, base string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/_matrix/client/versions", nil)
	if err != nil {
		return "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET /_matrix/client/versions: HTTP %d", resp.StatusCode)
	}
	var v struct {
		Versions []string `json:"versions"`
	}
	if err := json.Unmarshal(body, &v); err != nil || len(v.Versions) == 0 {
		return "", errors.New("GET /_matrix/client/versions: not a Matrix homeserver answer")
	}
	return v.Versions[len(v.Versions)-1], nil
}

func doctorNATS(ctx context.Context, cf *cfgFlags, r *report, cfg *config.Config, maxLag uint64) {
	nc, js, err := cf.connect(ctx, cfg)
	if err != nil {
		r.line(statusFail, "nats", "%s", describe(err))
		r.line(statusSkip, "topology", "NATS unreachable")
		return
	}
	defer nc.Close()
	r.line(statusOK, "nats", "connected to %s (server %s)", nc.ConnectedUrlRedacted(), nc.ConnectedServerVersion())
	nctx, cancel := context.WithTimeout(ctx, cf.timeout)
	defer cancel()
	if _, err := js.AccountInfo(nctx); err != nil {
		r.line(statusFail, "jetstream", "%s", describe(err))
		return
	}
	topo := service.Topology(cfg)
	if err := topo.Check(nctx, js); err != nil {
		r.line(statusFail, "topology", "missing (cactusctl topology ensure, or a service with the right to, creates it): %s", describe(errors.New(strings.ReplaceAll(err.Error(), "\n", "; "))))
	} else {
		r.line(statusOK, "topology", "%d streams, %d consumers, %d buckets present", len(topo.Streams()), len(topo.Consumers()), len(topo.Buckets()))
	}
	if c, err := js.Consumer(nctx, bus.StreamEvents, bus.RetiredConsumerBot); err == nil {
		r.line(statusWarn, "retired consumer", "%s of an earlier version still holds %d bot events (%d in flight): scale the botworkers of that version to 0, then cactusctl topology migrate",
			bus.RetiredConsumerBot, c.CachedInfo().NumPending, c.CachedInfo().NumAckPending)
	}
	for _, cs := range topo.Consumers() {
		name := "lag " + cs.Config.Durable
		c, err := js.Consumer(nctx, cs.Stream, cs.Config.Durable)
		if err != nil {
			r.line(statusSkip, name, "consumer missing")
			continue
		}
		info, err := c.Info(nctx)
		if err != nil {
			r.line(statusFail, name, "%s", describe(err))
			continue
		}
		st := statusOK
		if info.NumPending > maxLag {
			st = statusFail
		}
		r.line(st, name, "%d pending, %d in flight, %d redelivered, %d waiting pulls", info.NumPending, info.NumAckPending, info.NumRedelivered, info.NumWaiting)
	}
	doctorWorkers(nctx, js, r)
	s, err := js.Stream(nctx, bus.StreamDLQ)
	if err != nil {
		if !errors.Is(err, jetstream.ErrStreamNotFound) {
			r.line(statusFail, "dead letters", "%s", describe(err))
		}
		return
	}
	n := s.CachedInfo().State.Msgs
	if n > 0 {
		r.line(statusWarn, "dead letters", "%d waiting (cactusctl dlq list)", n)
	} else {
		r.line(statusOK, "dead letters", "none")
	}
}

// doctorWorkers shows what the worker replicas report about themselves:
// above all a homeserver they cannot reach, while their work waits to be
// retried (they stay ready: restarting them would not help).
func doctorWorkers(ctx context.Context, js jetstream.JetStream, r *report) {
	statuses, err := workerStatuses(ctx, js)
	if err != nil {
		r.line(statusFail, "workers", "reading their reports: %v", err)
		return
	}
	if len(statuses) == 0 {
		r.line(statusSkip, "workers", "no worker has reported (each does every %s while it runs)", bus.StatusEvery)
		return
	}
	waiting, down := 0, 0
	now := time.Now()
	for _, s := range statuses {
		waiting += s.WaitingRetry
		if d := service.HomeserverDetail(s, now); d != "" {
			down++
			r.line(statusWarn, "homeserver from workers", "%s %s: %s", s.Service, s.Instance, d)
		}
	}
	if down == 0 {
		r.line(statusOK, "workers", "the homeserver answers, say %s; %s waiting to be retried", count(len(statuses), "replica"), count(waiting, "message"))
	}
}

// workerStatuses reads every replica's last report.
func workerStatuses(ctx context.Context, js jetstream.JetStream) ([]bus.Status, error) {
	kv, err := js.KeyValue(ctx, bus.BucketStatus)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	w, err := kv.WatchAll(ctx, jetstream.IgnoreDeletes())
	if err != nil {
		return nil, err
	}
	defer func() { _ = w.Stop() }()
	var out []bus.Status
	for e := range w.Updates() {
		if e == nil {
			break
		}
		var s bus.Status
		if json.Unmarshal(e.Value(), &s) == nil {
			out = append(out, s)
		}
	}
	return out, ctx.Err()
}

func roundDuration(d time.Duration) string {
	if d < time.Millisecond {
		return "under 1ms"
	}
	return d.Round(time.Millisecond).String()
}
