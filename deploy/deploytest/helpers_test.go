package deploytest

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/mod/modfile"
	"golang.org/x/mod/semver"
	"gopkg.in/yaml.v3"

	"github.com/cactus-comments/appservice/pkg/config"
)

// repoRoot is the repository root: two levels above this package, where
// go.work lives.
func repoRoot(t *testing.T) string {
	t.Helper()
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	root := filepath.Clean(filepath.Join(wd, "..", ".."))
	if _, err := os.Stat(filepath.Join(root, "go.work")); err != nil {
		t.Fatalf("repository root %s has no go.work: %v", root, err)
	}
	return root
}

// readRepoFile reads a file given by its slash-separated path from the
// repository root.
func readRepoFile(t *testing.T, rel string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot(t), filepath.FromSlash(rel)))
	if err != nil {
		t.Fatalf("read %s: %v", rel, err)
	}
	return b
}

// decodeYAMLStrict decodes one YAML document into v, failing on keys v has
// no field for.
func decodeYAMLStrict(data []byte, v any) error {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	return dec.Decode(v)
}

// configFacts is what the services read from the environment, taken from
// pkg/config itself so that the manifests cannot drift from it unnoticed.
type configFacts struct {
	vars    map[string]config.Variable
	secrets map[string]bool // variables of type config.Secret
}

func loadConfigFacts(t *testing.T) configFacts {
	t.Helper()
	vars, err := config.Variables()
	if err != nil {
		t.Fatal(err)
	}
	f := configFacts{vars: map[string]config.Variable{}, secrets: map[string]bool{}}
	for _, v := range vars {
		f.vars[v.Name] = v
	}
	ct := reflect.TypeFor[config.Config]()
	st := reflect.TypeFor[config.Secret]()
	for i := range ct.NumField() {
		fld := ct.Field(i)
		if name := fld.Tag.Get("envconfig"); name != "" && fld.Type == st {
			f.secrets[config.Prefix+"_"+name] = true
		}
	}
	if len(f.secrets) == 0 {
		t.Fatal("pkg/config declares no Secret variables; the token checks below would prove nothing")
	}
	for _, name := range []string{"CACTUS_LISTEN_ADDR", "CACTUS_ADMIN_ADDR", "CACTUS_SHUTDOWN_TIMEOUT", "CACTUS_NATS_URL", "CACTUS_NATS_REPLICAS"} {
		if _, ok := f.vars[name]; !ok {
			t.Fatalf("pkg/config no longer reads %s; update deploy/ and these tests", name)
		}
	}
	return f
}

func (f configFacts) required() []string {
	var out []string
	for name, v := range f.vars {
		if v.Required {
			out = append(out, name)
		}
	}
	return out
}

// value is env[name] if set, else the variable's default.
func (f configFacts) value(env map[string]string, name string) string {
	if v, ok := env[name]; ok {
		return v
	}
	return f.vars[name].Default
}

// port of a listen address such as ":8080" or "0.0.0.0:9090".
func port(t *testing.T, addr string) int {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("listen address %q: %v", addr, err)
	}
	n, err := strconv.Atoi(p)
	if err != nil || n <= 0 || n > 65535 {
		t.Fatalf("listen address %q: bad port", addr)
	}
	return n
}

func (f configFacts) port(t *testing.T, env map[string]string, name string) int {
	t.Helper()
	return port(t, f.value(env, name))
}

func (f configFacts) duration(t *testing.T, env map[string]string, name string) time.Duration {
	t.Helper()
	d, err := time.ParseDuration(f.value(env, name))
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return d
}

// checkKnown reports CACTUS_* names in env that no service reads: a typo
// there silently leaves the default in force.
func (f configFacts) checkKnown(env map[string]string) error {
	var unknown []string
	for name := range env {
		if strings.HasPrefix(name, config.Prefix+"_") {
			if _, ok := f.vars[name]; !ok {
				unknown = append(unknown, name)
			}
		}
	}
	if len(unknown) > 0 {
		return fmt.Errorf("variables no service reads (typo?): %v", unknown)
	}
	return nil
}

// loadConfig runs the services' own configuration loading on exactly env
// (every other CACTUS_* variable unset), so a value the services would
// refuse at startup fails here. Not for parallel tests: it changes the
// process environment.
func (f configFacts) loadConfig(t *testing.T, env map[string]string) (*config.Config, error) {
	t.Helper()
	for name := range f.vars {
		t.Setenv(name, "") // restores the original value after the test
		if err := os.Unsetenv(name); err != nil {
			t.Fatal(err)
		}
	}
	for k, v := range env {
		t.Setenv(k, v)
	}
	return config.Load()
}

// natsServerMinor is the major.minor ("v2.15") of the nats-server the tests
// embed, from pkg/go.mod: the images we deploy run the same server.
func natsServerMinor(t *testing.T) string {
	t.Helper()
	mf, err := modfile.ParseLax("pkg/go.mod", readRepoFile(t, "pkg/go.mod"), nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range mf.Require {
		if r.Mod.Path == "github.com/nats-io/nats-server/v2" {
			return semver.MajorMinor(r.Mod.Version)
		}
	}
	t.Fatal("pkg/go.mod does not require github.com/nats-io/nats-server/v2")
	return ""
}

// imageMinor is the "vX.Y" of an image tag such as "2.15-alpine" or
// "2.15.2-alpine".
func imageMinor(tag string) string {
	v, _, _ := strings.Cut(tag, "-")
	return semver.MajorMinor("v" + v)
}

// goWork is the parsed workspace file.
func goWork(t *testing.T) *modfile.WorkFile {
	t.Helper()
	wf, err := modfile.ParseWork("go.work", readRepoFile(t, "go.work"), nil)
	if err != nil {
		t.Fatal(err)
	}
	return wf
}
