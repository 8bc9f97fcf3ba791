package gateway

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/cactus-comments/appservice/pkg/bus"
	"github.com/cactus-comments/appservice/pkg/config"
	"github.com/cactus-comments/appservice/pkg/logging"
	"github.com/cactus-comments/appservice/pkg/mxid"
	"github.com/cactus-comments/appservice/pkg/namespace"
)

// answers is what the fake provisioner says per alias.
func answers(alias string) []byte {
	var a bus.AliasAnswer
	switch {
	case strings.Contains(alias, "silent"):
		return nil
	case strings.Contains(alias, "garbage"):
		return []byte("not json")
	case strings.HasPrefix(alias, "#comments_unknown"):
		a = bus.AliasAnswer{Exists: false, Error: "site unknown is not registered"}
	case strings.HasPrefix(alias, "#comments_broken"):
		a = bus.AliasAnswer{Exists: false}
	default:
		a = bus.AliasAnswer{Exists: true}
	}
	b, _ := json.Marshal(a)
	return b
}

func TestAliasQuery(t *testing.T) {
	p := &fakeProvisioner{}
	// A generous timeout: only the silent provisioner should reach it
	// (TestAliasQuerySilentProvisioner), not a slow machine.
	e := newEnv(t, withProvisioner(p, answers), withConfig(func(c *config.Config) { c.AliasQueryTimeout = 20 * time.Second }))
	tests := []struct {
		name   string
		path   string // escaped, after /rooms/
		status int
		asked  string // alias the provisioner must see, "" if none
		msg    string // part of the error message
	}{
		{"comment room", "%23comments_blog.example.org_post1%3Aexample.org", 200, "#comments_blog.example.org_post1:example.org", ""},
		{"encoded slashes in the section", "%23comments_blog.example.org_%2Fposts%2Fhello%3Aexample.org", 200, "#comments_blog.example.org_/posts/hello:example.org", ""},
		{"Dendrite escaping", "%23comments_blog.example.org_%2Fposts%2Fhello:example.org", 200, "#comments_blog.example.org_/posts/hello:example.org", ""},
		{"Synapse escaping: raw slashes", "%23comments_blog.example.org_/posts/hello%3Aexample.org", 200, "#comments_blog.example.org_/posts/hello:example.org", ""},
		{"raw and escaped slashes", "%23comments_blog_/a%2Fb//c/%3Aexample.org", 200, "#comments_blog_/a/b//c/:example.org", ""},
		{"a trailing segment is part of the alias", "%23comments_a_b%3Aexample.org/extra", 404, "", "not a room alias"},
		{"escaped percent decoded once", "%23comments_shop_50%2525off%3Aexample.org", 200, "#comments_shop_50%25off:example.org", ""},
		{"unicode section", "%23comments_blog_%C3%A9t%C3%A9%3Aexample.org", 200, "#comments_blog_été:example.org", ""},
		{"unregistered site", "%23comments_unknown_x%3Aexample.org", 404, "#comments_unknown_x:example.org", "not registered"},
		{"refused without reason", "%23comments_broken_x%3Aexample.org", 404, "#comments_broken_x:example.org", "no such"},
		{"garbage answer", "%23comments_garbage_x%3Aexample.org", 503, "#comments_garbage_x:example.org", ""},
		{"moderation room", "%23comments_blog.example.org%3Aexample.org", 404, "", "not a comment section"},
		{"two underscores", "%23comments_a_b_c%3Aexample.org", 404, "", "not a comment section"},
		{"other prefix", "%23general_a%3Aexample.org", 404, "", "not a comment section"},
		{"other server", "%23comments_blog_post%3Aother.org", 404, "", "not a comment section"},
		{"double encoded", "%2523comments_blog_post%253Aexample.org", 404, "", "not a room alias"},
		{"not an alias", "%40comments_blog_post%3Aexample.org", 404, "", "not a room alias"},
		{"no server", "%23comments_blog_post", 404, "", "not a room alias"},
		// Lookalike sections: refused before any NATS or homeserver call.
		{"right-to-left override in the section", "%23comments_blog_abc%E2%80%AEgpj.exe%3Aexample.org", 404, "", "invisible"},
		{"zero-width space in the section", "%23comments_blog_po%E2%80%8Bst%3Aexample.org", 404, "", "invisible"},
		{"no-break space in the section", "%23comments_blog_po%C2%A0st%3Aexample.org", 404, "", "invisible"},
		{"variation selector in the site", "%23comments_bl%EF%B8%8Fog_post%3Aexample.org", 404, "", "invisible"},
	}
	for _, tt := range tests {
		for _, prefix := range apiPrefixes {
			t.Run(tt.name+prefix, func(t *testing.T) {
				before := len(p.asked())
				status, body := e.do(http.MethodGet, prefix+"/rooms/"+tt.path, nil)
				if status != tt.status {
					t.Fatalf("status %d, want %d (%s)", status, tt.status, body)
				}
				if status == 200 {
					if string(body) != "{}" {
						t.Fatalf("body %s", body)
					}
				} else {
					var m matrixError
					_ = json.Unmarshal(body, &m)
					if code := errcode(t, body); status == 404 && code != "M_NOT_FOUND" {
						t.Fatalf("errcode %s", code)
					}
					if !strings.Contains(m.Error, tt.msg) {
						t.Fatalf("error %q does not say %q", m.Error, tt.msg)
					}
				}
				asked := p.asked()[before:]
				switch {
				case tt.asked == "" && len(asked) > 0:
					t.Fatalf("provisioner asked %q: local checks should have answered", asked)
				case tt.asked != "" && !slices.Equal(asked, []string{tt.asked}):
					t.Fatalf("provisioner asked %q, want %q", asked, tt.asked)
				}
			})
		}
	}
}

func TestAliasQuerySilentProvisioner(t *testing.T) {
	p := &fakeProvisioner{}
	e := newEnv(t, withProvisioner(p, answers), withConfig(func(c *config.Config) { c.AliasQueryTimeout = 300 * time.Millisecond }))
	status, body := e.do(http.MethodGet, "/_matrix/app/v1/rooms/%23comments_silent_x%3Aexample.org", nil)
	if status != http.StatusServiceUnavailable {
		t.Fatalf("status %d body %s", status, body)
	}
	errcode(t, body)
	if got := p.asked(); !slices.Equal(got, []string{"#comments_silent_x:example.org"}) {
		t.Fatalf("provisioner asked %q", got)
	}
	if logs := e.logs.String(); !strings.Contains(logs, "no provisioner answered within") {
		t.Errorf("no log line says a provisioner did not answer:\n%s", logs)
	}
	// The provisioner that took the query may have created the room: a
	// durable job looks the alias up.
	const alias = "#comments_silent_x:example.org"
	want := bus.ResolveJob("silent", "x", alias)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	jobs, err := e.rt.JS.Stream(ctx, bus.StreamJobs)
	if err != nil {
		t.Fatal(err)
	}
	m, err := jobs.GetLastMsgForSubject(ctx, bus.JobSubject(bus.JobResolve, "silent", alias))
	if err != nil {
		t.Fatalf("no resolve job queued for the unanswered query: %v", err)
	}
	var got bus.Job
	if err := json.Unmarshal(m.Data, &got); err != nil || got != want || m.Header.Get(bus.HeaderMsgID) != want.MsgID() {
		t.Fatalf("resolve job %+v (id %q), %v; want %+v", got, m.Header.Get(bus.HeaderMsgID), err, want)
	}
}

func TestAliasQueryNoProvisioner(t *testing.T) {
	e := newEnv(t)
	status, body := e.do(http.MethodGet, "/_matrix/app/v1/rooms/%23comments_blog_post%3Aexample.org", nil)
	if status != http.StatusServiceUnavailable {
		t.Fatalf("status %d body %s", status, body)
	}
	errcode(t, body)
	if logs := e.logs.String(); !strings.Contains(logs, "no provisioner is running") {
		t.Fatalf("no log line says no provisioner runs:\n%s", logs)
	}
	if got := counter(e.gw.metrics.aliasQueries.WithLabelValues(queryUnavailable)); got != 1 {
		t.Fatalf("unavailable alias queries = %v", got)
	}
	// Nobody took the query, so nobody created a room: no job.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	jobs, err := e.rt.JS.Stream(ctx, bus.StreamJobs)
	if err != nil {
		t.Fatal(err)
	}
	info, err := jobs.Info(ctx)
	if err != nil || info.State.Msgs != 0 {
		t.Fatalf("jobs queued without a provisioner: %+v, %v", info.State, err)
	}
}

// offlineGateway is a gateway without NATS whose provisioner is a function.
func offlineGateway(t testing.TB, ask func(ctx context.Context, alias string) (bus.AliasAnswer, error)) *Gateway {
	t.Helper()
	g, err := newGateway(testConfig(t), logging.Discard(), prometheus.NewRegistry(), nil, nil, options{})
	if err != nil {
		t.Fatal(err)
	}
	g.ask = ask
	return g
}

// escapeAll percent-encodes every byte, the most a client can escape.
func escapeAll(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		fmt.Fprintf(&b, "%%%02X", s[i])
	}
	return b.String()
}

// synapseEscape is Python's urllib.parse.quote: '/' stays raw.
func synapseEscape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("_.-~/", c) >= 0 {
			b.WriteByte(c)
			continue
		}
		fmt.Fprintf(&b, "%%%02X", c)
	}
	return b.String()
}

// FuzzAliasQuery checks the alias path end to end without NATS: however
// the client escapes an alias, the gateway decodes it exactly once, asks a
// provisioner about exactly the comment section aliases of our namespace,
// and answers everything else 404 by itself.
func FuzzAliasQuery(f *testing.F) {
	for _, s := range []string{
		"#comments_blog.example.org_/posts/hello:example.org",
		"#comments_blog_post:example.org", "#comments_blog:example.org", "#comments_a_b_c:example.org",
		"#comments_blog_50%off:example.org", "#comments_blog_%2F:example.org", "#comments_b_p:other.org",
		"#comments__x:example.org", "#comments_x_:example.org", "#general:example.org", "@u:example.org",
		"#comments_blog_post:example.org:8448", "#comments_é_ü:example.org", "#comments_a_b\x00:example.org",
		"", "#", "#:", "#comments_:example.org", "#comments_a_b:[::1]",
	} {
		f.Add(s)
	}
	cfg := testConfig(f)
	ns := cfg.Namespace()
	var (
		mu    sync.Mutex
		asked []string
	)
	g := offlineGateway(f, func(_ context.Context, a string) (bus.AliasAnswer, error) {
		mu.Lock()
		defer mu.Unlock()
		asked = append(asked, a)
		return bus.AliasAnswer{Exists: true}, nil
	})
	f.Fuzz(func(t *testing.T, alias string) {
		mu.Lock()
		defer mu.Unlock()
		a, err := mxid.ParseRoomAlias(alias)
		want := err == nil && cfg.InNamespace(alias) && ns.ParseAlias(a).Kind == namespace.Comments
		for _, escaped := range []string{url.PathEscape(alias), escapeAll(alias), synapseEscape(alias)} {
			asked = nil
			mu.Unlock()
			req := httptest.NewRequest(http.MethodGet, "/_matrix/app/v1/rooms/"+escaped, nil)
			req.Header.Set("Authorization", "Bearer "+testHSToken)
			rec := httptest.NewRecorder()
			g.Handler().ServeHTTP(rec, req)
			mu.Lock()
			switch {
			case want && (rec.Code != 200 || !slices.Equal(asked, []string{alias})):
				t.Fatalf("%q as %q: status %d, provisioner asked %q; want 200 after asking about it", alias, escaped, rec.Code, asked)
			case !want && (rec.Code != 404 || len(asked) > 0):
				t.Fatalf("%q as %q: status %d, provisioner asked %q; want 404 without asking", alias, escaped, rec.Code, asked)
			}
		}
	})
}
