package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/cactus-comments/appservice/pkg/bus"
	"github.com/cactus-comments/appservice/pkg/config"
	"github.com/cactus-comments/appservice/pkg/embednats"
	"github.com/cactus-comments/appservice/pkg/logging"
	"github.com/cactus-comments/appservice/pkg/service"
)

const (
	testHSToken = "hs-token-3f9a1c0d8e7b6a5f4e3d2c1b0a998877"
	testASToken = "as-token-0badc0ffee1234567890abcdef123456"
	testBot     = "@cactusbot:example.org"
)

// testConfig is a validated configuration with test timeouts.
func testConfig(t testing.TB) *config.Config {
	t.Helper()
	cfg := &config.Config{
		HSToken:           testHSToken,
		ASToken:           testASToken,
		HomeserverURL:     "http://127.0.0.1:9",
		UserID:            testBot,
		NamespaceRegex:    "#comments_.*",
		NamespacePrefix:   "comments_",
		RegistrationRegex: "@.*:.*",
		NATSURL:           "nats://127.0.0.1:4222",
		NATSReplicas:      1,
		ListenAddr:        "127.0.0.1:0",
		AdminAddr:         "127.0.0.1:0",
		LogFormat:         "json",
		LogLevel:          "debug",
		PublishTimeout:    20 * time.Second, // generous: tests that need a timeout set their own
		AliasQueryTimeout: 20 * time.Second,
		MaxBodyBytes:      1 << 20,
		BodyBytesInFlight: 8 << 20,
		BodyReadTimeout:   20 * time.Second,
		MinBodyRate:       1024,
		ShutdownTimeout:   10 * time.Second,
		RegistrationLimit: 10,
		HomeserverTimeout: 5 * time.Second,
		Concurrency:       4,
		RetryHorizon:      time.Hour,
		RetryMaxBackoff:   time.Second,
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	return cfg
}

// syncBuffer collects log output from concurrent handlers.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func testLogger(cfg *config.Config, w io.Writer) *slog.Logger {
	return logging.New(w, logging.Options{Format: "json", Level: cfg.LogLevel, Secrets: cfg.Secrets(), Service: Name})
}

// env is a gateway on an embedded NATS server behind an httptest server,
// with its splitter running unless the test starts it itself.
type env struct {
	t       testing.TB
	ns      *embednats.Server
	cfg     *config.Config
	rt      *service.Runtime
	gw      *Gateway
	srv     *httptest.Server
	logs    *syncBuffer
	noSplit bool
}

type envOption func(*env, *[]Option)

func newEnv(t testing.TB, opts ...envOption) *env {
	t.Helper()
	e := &env{t: t, ns: embednats.StartTest(t), cfg: testConfig(t), logs: &syncBuffer{}}
	e.cfg.NATSURL = e.ns.ClientURL()
	var gwOpts []Option
	for _, o := range opts {
		o(e, &gwOpts)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rt, err := service.Start(ctx, Name, e.cfg, testLogger(e.cfg, e.logs))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rt.NC.Close() })
	e.rt = rt
	if e.gw, err = New(rt, gwOpts...); err != nil {
		t.Fatal(err)
	}
	e.srv = httptest.NewServer(e.gw.Handler())
	t.Cleanup(e.srv.Close)
	if !e.noSplit {
		e.startSplit(e.gw)
	}
	return e
}

// withoutSplitter leaves the splitter to the test (startSplit).
func withoutSplitter() envOption {
	return func(e *env, _ *[]Option) { e.noSplit = true }
}

// startSplit runs gw's splitter until the test ends.
func (e *env) startSplit(gw *Gateway) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- gw.Split(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				e.t.Errorf("Split: %v", err)
			}
		})
	}
	e.t.Cleanup(stop)
	return stop
}

// splitDone waits until the splitter has split every transaction stored:
// the transaction stream, a work queue, is empty.
func (e *env) splitDone() {
	e.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		n := e.streamLen(bus.StreamTxns)
		if n == 0 {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("%d transactions still not split after a minute", n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// stream binds to a stream and reads its state.
func (e *env) stream(ctx context.Context, name string) (jetstream.Stream, *jetstream.StreamInfo) {
	e.t.Helper()
	s, err := e.rt.JS.Stream(ctx, name)
	if err != nil {
		e.t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	return s, info
}

// streamLen is the number of messages in a stream.
func (e *env) streamLen(stream string) uint64 {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, info := e.stream(ctx, stream)
	return info.State.Msgs
}

// do sends a request with the token in the header.
func (e *env) do(method, path string, body []byte) (int, []byte) {
	e.t.Helper()
	return e.doAuth(method, path, body, authHeader)
}

// putTxn sends a transaction body, without a Content-Length (chunked) if
// chunked.
func (e *env) putTxn(txnID string, body []byte, chunked bool) (int, []byte) {
	e.t.Helper()
	var rd io.Reader = bytes.NewReader(body)
	if chunked {
		rd = io.MultiReader(rd) // hides the length: sent chunked
	}
	req, err := http.NewRequest(http.MethodPut, e.srv.URL+"/_matrix/app/v1/transactions/"+txnID, rd)
	if err != nil {
		e.t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+testHSToken)
	resp, err := e.srv.Client().Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, out
}

type authForm int

const (
	authHeader authForm = iota
	authQuery
	authBoth
	authNone
	authWrongHeader
	authWrongQuery
	authHeaderOKQueryWrong
	authHeaderWrongQueryOK
)

func (a authForm) String() string {
	return [...]string{"header", "query", "both", "none", "wrong header", "wrong query", "header ok, query wrong", "header wrong, query ok"}[a]
}

const wrongToken = "wrong-token-7777777777777777777777777777"

func (e *env) doAuth(method, path string, body []byte, a authForm) (int, []byte) {
	e.t.Helper()
	return doRequest(e.t, e.srv.Client(), method, e.srv.URL+path, body, a)
}

func doRequest(t testing.TB, c *http.Client, method, url string, body []byte, a authForm) (int, []byte) {
	t.Helper()
	header, query := "", ""
	switch a {
	case authHeader:
		header = testHSToken
	case authQuery:
		query = testHSToken
	case authBoth:
		header, query = testHSToken, testHSToken
	case authWrongHeader:
		header = wrongToken
	case authWrongQuery:
		query = wrongToken
	case authHeaderOKQueryWrong:
		header, query = testHSToken, wrongToken
	case authHeaderWrongQueryOK:
		header, query = wrongToken, testHSToken
	}
	if query != "" {
		sep := "?"
		if strings.Contains(url, "?") {
			sep = "&"
		}
		url += sep + "access_token=" + query
	}
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	if header != "" {
		req.Header.Set("Authorization", "Bearer "+header)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("%s %s: Content-Type %q", method, url, ct)
	}
	return resp.StatusCode, out
}

// errcode returns the errcode of an error body, failing the test if the
// body is not a spec error (both keys present).
func errcode(t testing.TB, body []byte) string {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(body, &m); err != nil {
		t.Fatalf("error body %q is not JSON: %v", body, err)
	}
	code, ok1 := m["errcode"].(string)
	_, ok2 := m["error"].(string)
	if !ok1 || !ok2 {
		t.Fatalf("error body %s lacks errcode or error", body)
	}
	return code
}

// txnBody builds a transaction body from events.
func txnBody(events ...string) []byte {
	return []byte(`{"events":[` + strings.Join(events, ",") + `]}`)
}

// message is an m.room.message event.
func message(id, room string) string {
	return fmt.Sprintf(`{"event_id":%q,"type":"m.room.message","room_id":%q,"sender":"@alice:example.org","content":{"msgtype":"m.text","body":"hello"},"origin_server_ts":1700000000000,"unsigned":{"age":1}}`, id, room)
}

// member is an m.room.member event.
func member(id, room, sender, target, membership string) string {
	return fmt.Sprintf(`{"event_id":%q,"type":"m.room.member","room_id":%q,"sender":%q,"state_key":%q,"content":{"membership":%q},"origin_server_ts":1700000000000}`, id, room, sender, target, membership)
}

// stored returns the messages of a stream in order, once every
// transaction is split.
func (e *env) stored(stream string) []jetstream.RawStreamMsg {
	e.t.Helper()
	e.splitDone()
	return e.streamMsgs(stream)
}

// streamMsgs returns the messages of a stream in order, now.
func (e *env) streamMsgs(stream string) []jetstream.RawStreamMsg {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, info := e.stream(ctx, stream)
	var out []jetstream.RawStreamMsg
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		gctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		m, err := s.GetMsg(gctx, seq)
		cancel()
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			e.t.Fatal(err)
		}
		out = append(out, *m)
	}
	return out
}

// eventIDs lists the event ids (Cactus-Event-Id) of the event stream's messages in order.
func (e *env) eventIDs() []string {
	e.t.Helper()
	var ids []string
	for _, m := range e.stored(bus.StreamEvents) {
		ids = append(ids, m.Header.Get(bus.HeaderEventID))
	}
	return ids
}

func counter(c prometheus.Collector) float64 { return testutil.ToFloat64(c) }

// fakeProvisioner answers alias queries on NATS like a provisioner would.
type fakeProvisioner struct {
	mu      sync.Mutex
	aliases []string
}

func (p *fakeProvisioner) asked() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.aliases...)
}

// withProvisioner subscribes a provisioner that answers with answer(alias)
// or, if it returns nil, does not answer at all.
func withProvisioner(p *fakeProvisioner, answer func(alias string) []byte) envOption {
	return func(e *env, _ *[]Option) {
		nc, err := nats.Connect(e.ns.ClientURL())
		if err != nil {
			e.t.Fatal(err)
		}
		e.t.Cleanup(nc.Close)
		_, err = nc.QueueSubscribe(bus.SubjectAliasQuery, bus.QueueProvisioners, func(m *nats.Msg) {
			var q bus.AliasQuery
			if err := json.Unmarshal(m.Data, &q); err != nil {
				e.t.Errorf("provisioner got a bad query %q: %v", m.Data, err)
				return
			}
			p.mu.Lock()
			p.aliases = append(p.aliases, q.Alias)
			p.mu.Unlock()
			if b := answer(q.Alias); b != nil {
				_ = m.Respond(b)
			}
		})
		if err != nil {
			e.t.Fatal(err)
		}
		if err := nc.Flush(); err != nil {
			e.t.Fatal(err)
		}
	}
}

func withConfig(f func(*config.Config)) envOption {
	return func(e *env, _ *[]Option) { f(e.cfg) }
}

func withGatewayOption(o Option) envOption {
	return func(_ *env, opts *[]Option) { *opts = append(*opts, o) }
}

// limitEvents lowers the event stream's message size limit to max under
// the running gateway, which read the limit at startup and so lets larger
// events through for JetStream to refuse. restore puts the limit back.
func (e *env) limitEvents(ctx context.Context, max int32) (restore func()) {
	e.t.Helper()
	s, err := e.rt.JS.Stream(ctx, bus.StreamEvents)
	if err != nil {
		e.t.Fatal(err)
	}
	cfg := s.CachedInfo().Config
	small := cfg
	small.MaxMsgSize = max
	if _, err := e.rt.JS.UpdateStream(ctx, small); err != nil {
		e.t.Fatal(err)
	}
	return func() {
		e.t.Helper()
		if _, err := e.rt.JS.UpdateStream(ctx, cfg); err != nil {
			e.t.Fatal(err)
		}
	}
}
