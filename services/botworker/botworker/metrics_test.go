package botworker

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestIgnoredReasonsStartAtZero: every reason a message is ignored for is
// a series from the start, so that rate() and increase() see the first one
// after a restart.
func TestIgnoredReasonsStartAtZero(t *testing.T) {
	m := newMetrics(prometheus.NewRegistry())
	if got, want := testutil.CollectAndCount(m.ignored), len(ignoreReasons); got != want {
		t.Errorf("cactus_bot_ignored_total has %d series at start, want %d (one per reason)", got, want)
	}
}
