package deploytest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"

	"github.com/cactus-comments/appservice/pkg/config"
	"github.com/cactus-comments/appservice/pkg/embednats"
	"github.com/cactus-comments/appservice/pkg/hssim"
	"github.com/cactus-comments/appservice/pkg/registration"
	"github.com/cactus-comments/appservice/services/botworker/botworker"
	"github.com/cactus-comments/appservice/services/gateway/gateway"
	"github.com/cactus-comments/appservice/services/provisioner/provisioner"
)

const (
	alertsFile    = "deploy/monitoring/alerts.yaml"
	dashboardFile = "deploy/monitoring/dashboard.json"
)

// series is one exported time series: its metric name and labels.
type series struct {
	name   string
	labels labels.Labels
	typ    dto.MetricType
	value  float64
}

// startupSeries runs the three services, as production does, against an
// embedded NATS and the homeserver simulator, and scrapes each one's
// /metrics as soon as it is ready: what Prometheus sees right after a
// restart, before any traffic.
func startupSeries(t *testing.T) map[string][]series {
	t.Helper()
	ns := embednats.StartTest(t)
	const (
		hsToken = "hs-token-for-the-monitoring-test-0123456789"
		asToken = "as-token-for-the-monitoring-test-0123456789"
	)
	ctx, cancel := context.WithCancel(context.Background())
	gwAddr := freeAddr(t)
	url := "http://" + gwAddr
	reg := &registration.Registration{
		ID: "cactus", URL: &url, ASToken: asToken, HSToken: hsToken, SenderLocalpart: "cactusbot",
		Namespaces: registration.Namespaces{
			Users:   []registration.Namespace{{Exclusive: true, Regex: `@cactusbot:example\.org`}},
			Aliases: []registration.Namespace{{Exclusive: true, Regex: `#comments_.*:example\.org`}},
		},
	}
	hs, err := hssim.Start(ctx, hssim.Options{ServerName: "example.org", Registrations: []*registration.Registration{reg}})
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{
		"CACTUS_HS_TOKEN": hsToken, "CACTUS_AS_TOKEN": asToken, "CACTUS_HOMESERVER_URL": hs.URL(),
		"CACTUS_USER_ID": "@cactusbot:example.org", "CACTUS_APPSERVICE_ID": "cactus", "CACTUS_NATS_URL": ns.ClientURL(),
		"CACTUS_LISTEN_ADDR": gwAddr, "CACTUS_LOG_LEVEL": "error", "CACTUS_SHUTDOWN_TIMEOUT": "5s",
	}
	runs := map[string]func(context.Context, *config.Config) error{
		"gateway": gateway.Run, "provisioner": provisioner.Run, "botworker": botworker.Run,
	}
	admin := map[string]string{}
	var wg sync.WaitGroup
	errs := make(chan error, len(runs))
	for name, run := range runs {
		admin[name] = freeAddr(t)
		e := map[string]string{"CACTUS_ADMIN_ADDR": admin[name]}
		for k, v := range env {
			e[k] = v
		}
		cfg, err := config.LoadFrom(func(k string) (string, bool) { v, ok := e[k]; return v, ok })
		if err != nil {
			t.Fatal(err)
		}
		wg.Go(func() {
			if err := run(ctx, cfg); err != nil {
				errs <- fmt.Errorf("%s: %w", name, err)
			}
		})
	}
	t.Cleanup(func() {
		cancel()
		wg.Wait()
		_ = hs.Close()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
	})

	out := map[string][]series{}
	for name, addr := range admin {
		waitReady(t, "http://"+addr+"/readyz")
		out[name] = scrape(t, "http://"+addr+"/metrics")
	}
	return out
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// waitReady polls /readyz: readiness is only visible over HTTP.
func waitReady(t *testing.T, url string) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never became ready", url)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func scrape(t *testing.T, url string) []series {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("%s: %v", url, err)
	}
	var out []series
	for name, f := range fams {
		for _, m := range f.GetMetric() {
			b := labels.NewScratchBuilder(len(m.GetLabel()))
			for _, l := range m.GetLabel() {
				b.Add(l.GetName(), l.GetValue())
			}
			b.Sort()
			s := series{name: name, labels: b.Labels(), typ: f.GetType()}
			switch f.GetType() {
			case dto.MetricType_COUNTER:
				s.value = m.GetCounter().GetValue()
			case dto.MetricType_GAUGE:
				s.value = m.GetGauge().GetValue()
			}
			out = append(out, s)
		}
	}
	return out
}

// names of every series a selector can match: histograms export _bucket,
// _sum and _count.
func selectable(all map[string][]series) []series {
	var out []series
	for _, ss := range all {
		for _, s := range ss {
			if s.typ == dto.MetricType_HISTOGRAM {
				for _, suffix := range []string{"_bucket", "_sum", "_count"} {
					c := s
					c.name += suffix
					out = append(out, c)
				}
				continue
			}
			out = append(out, s)
		}
	}
	return out
}

// selectors are the vector selectors of a PromQL expression.
func selectors(t *testing.T, expr string) []*parser.VectorSelector {
	t.Helper()
	e, err := parser.NewParser(parser.Options{}).ParseExpr(expr)
	if err != nil {
		t.Fatalf("%q: %v", expr, err)
	}
	var out []*parser.VectorSelector
	parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
		if vs, ok := n.(*parser.VectorSelector); ok {
			out = append(out, vs)
		}
		return nil
	})
	return out
}

// matches counts the series a selector matches.
func matches(vs *parser.VectorSelector, all []series) int {
	n := 0
	for _, s := range all {
		ok := true
		for _, m := range vs.LabelMatchers {
			v := s.labels.Get(m.Name)
			if m.Name == labels.MetricName {
				v = s.name
			}
			if !m.Matches(v) {
				ok = false
				break
			}
		}
		if ok {
			n++
		}
	}
	return n
}

// TestMonitoring checks the shipped alert rules and dashboard against what
// the services really export, and the services' metrics against the
// naming scheme:
//   - the rules parse as Prometheus parses them (rulefmt), each alert has
//     a severity, a summary and a description, and docs/operations.md
//     names it;
//   - every selector of every alert matches at least one series right
//     after startup, so increase() sees the first event after a restart;
//   - every metric a dashboard panel queries exists;
//   - counters end in _total, durations are histograms named
//     _duration_seconds, no gauge is negative (no -1 for "unknown").
func TestMonitoring(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the three services")
	}
	exported := startupSeries(t)
	all := selectable(exported)

	groups, errs := rulefmt.ParseFile(repoRoot(t)+"/"+alertsFile, false, model.UTF8Validation, parser.NewParser(parser.Options{}), slog.New(slog.DiscardHandler))
	if len(errs) > 0 {
		t.Fatalf("%s: %v", alertsFile, errors.Join(errs...))
	}
	ops := string(readRepoFile(t, "docs/operations.md"))
	alerts := 0
	for _, g := range groups.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" {
				continue
			}
			alerts++
			if r.Labels["severity"] == "" || r.Annotations["summary"] == "" || r.Annotations["description"] == "" {
				t.Errorf("alert %s: want a severity label, a summary and a description", r.Alert)
			}
			if !strings.Contains(ops, "`"+r.Alert+"`") {
				t.Errorf("alert %s is not documented in docs/operations.md", r.Alert)
			}
			for _, vs := range selectors(t, r.Expr) {
				if matches(vs, all) == 0 {
					t.Errorf("alert %s: %s matches no series the services export at startup", r.Alert, vs)
				}
			}
		}
	}
	if alerts == 0 {
		t.Fatalf("%s holds no alerts", alertsFile)
	}

	var dash struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(readRepoFile(t, dashboardFile), &dash); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	names := map[string]bool{}
	for _, s := range all {
		names[s.name] = true
	}
	queries := 0
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			queries++
			expr := strings.ReplaceAll(tg.Expr, "$__rate_interval", "5m")
			for _, vs := range selectors(t, expr) {
				if !names[vs.Name] {
					t.Errorf("dashboard panel %q queries %s, which no service exports", p.Title, vs.Name)
				}
			}
		}
	}
	if queries == 0 {
		t.Fatalf("%s has no queries", dashboardFile)
	}

	component := regexp.MustCompile(`^cactus_[a-z]+_[a-z0-9_]+$`)
	for svc, ss := range exported {
		for _, s := range ss {
			if !strings.HasPrefix(s.name, "cactus_") {
				continue
			}
			switch {
			case !component.MatchString(s.name):
				t.Errorf("%s: %s is not cactus_<component>_<what>", svc, s.name)
			case s.typ == dto.MetricType_COUNTER && !strings.HasSuffix(s.name, "_total"):
				t.Errorf("%s: counter %s does not end in _total", svc, s.name)
			case strings.HasSuffix(s.name, "_seconds") && (s.typ != dto.MetricType_HISTOGRAM || !strings.HasSuffix(s.name, "_duration_seconds")):
				t.Errorf("%s: %s: durations are histograms named ..._duration_seconds", svc, s.name)
			case s.typ == dto.MetricType_GAUGE && s.value < 0:
				t.Errorf("%s: gauge %s%s is %v: a gauge is never negative (no sentinel for unknown)", svc, s.name, s.labels, s.value)
			}
		}
		if !slices.ContainsFunc(ss, func(s series) bool { return s.name == "cactus_build_info" }) {
			t.Errorf("%s exports no cactus_build_info", svc)
		}
	}
}
