package buildinfo

import (
	"runtime"
	"runtime/debug"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestResolve(t *testing.T) {
	vcs := func(rev, modified string) *debug.BuildInfo {
		return &debug.BuildInfo{Main: debug.Module{Version: "(devel)"}, Settings: []debug.BuildSetting{
			{Key: "vcs.revision", Value: rev}, {Key: "vcs.modified", Value: modified},
		}}
	}
	tests := []struct {
		name         string
		ver, rev     string
		bi           *debug.BuildInfo
		wantV, wantR string
	}{
		{"stamped", "v1.2.3", "abc123", vcs("fff", "true"), "v1.2.3", "abc123"},
		{"vcs fallback", "", "", vcs("0123abcd", "false"), "dev", "0123abcd"},
		{"dirty tree", "", "", vcs("0123abcd", "true"), "dev", "0123abcd-dirty"},
		{"go install", "", "", &debug.BuildInfo{Main: debug.Module{Version: "v0.3.0"}}, "v0.3.0", "unknown"},
		{"nothing known", "", "", nil, "dev", "unknown"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := resolve(tt.ver, tt.rev, tt.bi)
			if got.Version != tt.wantV || got.Revision != tt.wantR || got.GoVersion != runtime.Version() {
				t.Fatalf("resolve = %+v, want version %s revision %s", got, tt.wantV, tt.wantR)
			}
		})
	}
}

func TestCollector(t *testing.T) {
	i := Info{Version: "v1.2.3", Revision: "abc", GoVersion: "go1.26.8"}
	reg := prometheus.NewRegistry()
	reg.MustRegister(i.Collector())
	want := `
# HELP cactus_build_info Build of the running binary: always 1, with its version, VCS revision and Go version as labels.
# TYPE cactus_build_info gauge
cactus_build_info{goversion="go1.26.8",revision="abc",version="v1.2.3"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "cactus_build_info"); err != nil {
		t.Fatal(err)
	}
	if s := i.String(); s != "v1.2.3 (revision abc, go1.26.8)" {
		t.Fatalf("String = %q", s)
	}
}
