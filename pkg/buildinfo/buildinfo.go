// Package buildinfo says which build of the software is running: the
// version and revision stamped at build time, the Go version, and a
// cactus_build_info metric carrying them.
//
// Release builds stamp the version and revision with
//
//	-ldflags "-X github.com/cactus-comments/appservice/pkg/buildinfo.version=v1.2.3
//	          -X github.com/cactus-comments/appservice/pkg/buildinfo.revision=<git sha>"
//
// as the Makefile and the Dockerfile do. A plain `go build` in a git
// checkout still knows its revision from the Go toolchain's VCS stamp.
package buildinfo

import (
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/prometheus/client_golang/prometheus"
)

// Set by the linker (-X); see the package doc. Strings, because -X can
// only set string variables.
var (
	version  string
	revision string
)

// Info is one build's identity.
type Info struct {
	Version   string // release version, or "dev"
	Revision  string // VCS revision, with "-dirty" for uncommitted changes, or "unknown"
	GoVersion string
}

// Get returns this binary's build information: what the linker stamped,
// else what the Go toolchain recorded, else "dev" and "unknown".
func Get() Info {
	bi, _ := debug.ReadBuildInfo()
	return resolve(version, revision, bi)
}

func resolve(stampedVersion, stampedRevision string, bi *debug.BuildInfo) Info {
	info := Info{Version: stampedVersion, Revision: stampedRevision, GoVersion: runtime.Version()}
	if bi != nil {
		if info.Version == "" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			info.Version = bi.Main.Version // go install module@version
		}
		if info.Revision == "" {
			var rev, modified string
			for _, s := range bi.Settings {
				switch s.Key {
				case "vcs.revision":
					rev = s.Value
				case "vcs.modified":
					modified = s.Value
				}
			}
			if rev != "" && modified == "true" {
				rev += "-dirty"
			}
			info.Revision = rev
		}
	}
	if info.Version == "" {
		info.Version = "dev"
	}
	if info.Revision == "" {
		info.Revision = "unknown"
	}
	return info
}

// String is the line `--version` prints, after the program name.
func (i Info) String() string {
	return fmt.Sprintf("%s (revision %s, %s)", i.Version, i.Revision, i.GoVersion)
}

// Collector is the cactus_build_info gauge: always 1, with the build in
// its labels, so dashboards can show which version each replica runs and
// alerts can join on it.
func (i Info) Collector() prometheus.Collector {
	g := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "cactus_build_info",
		Help: "Build of the running binary: always 1, with its version, VCS revision and Go version as labels.",
	}, []string{"version", "revision", "goversion"})
	g.WithLabelValues(i.Version, i.Revision, i.GoVersion).Set(1)
	return g
}
