package gateway

import (
	"net/http"
	"testing"
)

// TestMetrics: each kind of request moves the metrics an operator watches.
func TestMetrics(t *testing.T) {
	e := newEnv(t)
	waitFor(t, "the splitter", e.gw.split.active)
	e.do(http.MethodPut, "/_matrix/app/v1/transactions/1", txnBody(message("$m1", "!r:example.org"), `{"type":"x"}`))
	e.do(http.MethodPut, "/_matrix/app/v1/transactions/1", txnBody(message("$m1", "!r:example.org")))
	e.do(http.MethodPut, "/_matrix/app/v1/transactions/2", []byte("{"))
	e.do(http.MethodGet, "/_matrix/app/v1/users/%40cactusbot%3Aexample.org", nil)
	e.do(http.MethodGet, "/_matrix/app/v1/users/%40x%3Aexample.org", nil)
	e.do(http.MethodGet, "/_matrix/app/v1/rooms/%23general%3Aexample.org", nil)
	e.do(http.MethodGet, "/_matrix/app/v1/rooms/%23comments_a_b%3Aexample.org", nil) // no provisioner
	e.doAuth(http.MethodPost, "/_matrix/app/v1/ping", nil, authNone)
	e.do(http.MethodPost, "/_matrix/app/v1/ping", nil)
	e.splitDone()

	families, err := e.rt.Metrics.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{} // name{label=value} -> counter, histogram count or gauge
	for _, f := range families {
		for _, m := range f.GetMetric() {
			key := f.GetName()
			for _, l := range m.GetLabel() {
				key += "{" + l.GetName() + "=" + l.GetValue() + "}"
			}
			switch {
			case m.GetCounter() != nil:
				got[key] = m.GetCounter().GetValue()
			case m.GetHistogram() != nil:
				got[key] = float64(m.GetHistogram().GetSampleCount())
			case m.GetGauge() != nil:
				got[key] = m.GetGauge().GetValue()
			}
		}
	}
	want := map[string]float64{
		"cactus_gateway_transactions_total{outcome=ok}":                 2,
		"cactus_gateway_transactions_total{outcome=not_json}":           1,
		"cactus_gateway_transaction_duration_seconds":                   3,
		"cactus_gateway_events_published_total{class=bot}":              2,
		"cactus_gateway_split_unconfirmed_total":                        0,
		"cactus_gateway_events_dead_lettered_total":                     2, // {"type":"x"} and the body "{"
		"cactus_gateway_user_queries_total{outcome=exists}":             1,
		"cactus_gateway_user_queries_total{outcome=not_found}":          1,
		"cactus_gateway_user_query_duration_seconds":                    2,
		"cactus_gateway_alias_queries_total{outcome=not_ours}":          1,
		"cactus_gateway_alias_queries_total{outcome=unavailable}":       1,
		"cactus_gateway_alias_query_duration_seconds{outcome=not_ours}": 1,
		"cactus_gateway_auth_failures_total{reason=missing}":            1,
		"cactus_gateway_pings_total":                                    1,
		"cactus_gateway_transactions_in_flight":                         0,
		"cactus_gateway_transaction_messages_total{outcome=stored}":     2,
		"cactus_gateway_transaction_messages_total{outcome=duplicate}":  0,
		"cactus_gateway_transactions_split_total":                       2,
		"cactus_gateway_split_duration_seconds":                         2,
		"cactus_gateway_split_backlog_transactions":                     0,
		"cactus_gateway_split_failures_total":                           0,
		"cactus_gateway_splitter_state{state=active}":                   1,
		"cactus_gateway_splitter_state{state=standby}":                  0,
		"cactus_gateway_splitter_state{state=failing}":                  0,
		"cactus_partition_owned{group=gateway-splitter}":                1,
		// One replica: it splits what it stored from its own copy.
		"cactus_gateway_split_reads_total{from=handoff}": 2,
		"cactus_gateway_split_reads_total{from=stream}":  0,
	}
	for k, v := range want {
		if g, ok := got[k]; !ok || g != v {
			t.Errorf("%s = %v (present %v), want %v", k, g, ok, v)
		}
	}
}
