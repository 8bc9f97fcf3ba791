package deploytest

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"go/parser"
	"go/token"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/moby/patternmatcher"
	"github.com/moby/patternmatcher/ignorefile"
	"golang.org/x/mod/semver"
)

// instruction is one Dockerfile instruction with continuation lines joined.
type instruction struct {
	cmd  string // upper case: FROM, RUN, COPY...
	args string
	line int
}

// stage is one FROM and the instructions under it.
type stage struct {
	from, name string
	instrs     []instruction
}

type dockerfile struct {
	globalArgs map[string]string // ARGs before the first FROM, with defaults
	stages     []stage
}

// parseDockerfile reads the subset of the Dockerfile grammar this
// repository uses: comments, line continuations, instructions.
func parseDockerfile(data []byte) (*dockerfile, error) {
	df := &dockerfile{globalArgs: map[string]string{}}
	sc := bufio.NewScanner(bytes.NewReader(data))
	var cur strings.Builder
	start, n := 0, 0
	flush := func() error {
		text := strings.TrimSpace(cur.String())
		cur.Reset()
		if text == "" {
			return nil
		}
		cmd, args, _ := strings.Cut(text, " ")
		in := instruction{cmd: strings.ToUpper(cmd), args: strings.TrimSpace(args), line: start}
		if in.cmd == "FROM" {
			f := strings.Fields(in.args)
			f = slices.DeleteFunc(f, func(s string) bool { return strings.HasPrefix(s, "--") })
			if len(f) == 0 {
				return fmt.Errorf("line %d: FROM without an image", start)
			}
			st := stage{from: f[0]}
			if len(f) == 3 && strings.EqualFold(f[1], "AS") {
				st.name = f[2]
			}
			df.stages = append(df.stages, st)
			return nil
		}
		if len(df.stages) == 0 {
			if in.cmd != "ARG" {
				return fmt.Errorf("line %d: %s before the first FROM", start, in.cmd)
			}
			k, v, _ := strings.Cut(in.args, "=")
			df.globalArgs[k] = v
			return nil
		}
		last := &df.stages[len(df.stages)-1]
		last.instrs = append(last.instrs, in)
		return nil
	}
	for sc.Scan() {
		n++
		line := sc.Text()
		trimmed := strings.TrimSpace(line)
		if strings.HasPrefix(trimmed, "#") {
			continue // comments, parser directives, comments inside continuations
		}
		if cur.Len() == 0 {
			if trimmed == "" {
				continue
			}
			start = n
		}
		if body, ok := strings.CutSuffix(strings.TrimRight(line, " \t"), `\`); ok {
			cur.WriteString(body)
			cur.WriteString(" ")
			continue
		}
		cur.WriteString(line)
		if err := flush(); err != nil {
			return nil, err
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if cur.Len() > 0 {
		return nil, fmt.Errorf("dangling line continuation at the end")
	}
	if len(df.stages) == 0 {
		return nil, fmt.Errorf("no FROM")
	}
	return df, nil
}

func (s stage) all(cmd string) []instruction {
	var out []instruction
	for _, in := range s.instrs {
		if in.cmd == cmd {
			out = append(out, in)
		}
	}
	return out
}

func (s stage) last(cmd string) (instruction, bool) {
	all := s.all(cmd)
	if len(all) == 0 {
		return instruction{}, false
	}
	return all[len(all)-1], true
}

// copyArgs splits a COPY's arguments into flags, sources and destination.
func copyArgs(in instruction) (flags map[string]string, srcs []string, dst string) {
	flags = map[string]string{}
	f := strings.Fields(in.args)
	for len(f) > 0 && strings.HasPrefix(f[0], "--") {
		k, v, _ := strings.Cut(strings.TrimPrefix(f[0], "--"), "=")
		flags[k] = v
		f = f[1:]
	}
	if len(f) < 2 {
		return flags, nil, ""
	}
	return flags, f[:len(f)-1], f[len(f)-1]
}

func loadDockerfile(t *testing.T) *dockerfile {
	t.Helper()
	df, err := parseDockerfile(readRepoFile(t, "Dockerfile"))
	if err != nil {
		t.Fatalf("Dockerfile: %v", err)
	}
	return df
}

// serviceArms maps each accepted SERVICE build argument to the package the
// Dockerfile builds for it, read from the build's `case "$SERVICE"`.
func serviceArms(t *testing.T, df *dockerfile) map[string]string {
	t.Helper()
	armRE := regexp.MustCompile(`([A-Za-z0-9_|-]+)\)\s*pkgpath=(\S+?)\s*;;`)
	arms := map[string]string{}
	for _, st := range df.stages {
		for _, in := range st.all("RUN") {
			if !strings.Contains(in.args, `case "$SERVICE"`) {
				continue
			}
			for _, m := range armRE.FindAllStringSubmatch(in.args, -1) {
				for _, svc := range strings.Split(m[1], "|") {
					arms[svc] = strings.ReplaceAll(m[2], "$SERVICE", svc)
				}
			}
		}
	}
	if len(arms) == 0 {
		t.Fatal(`Dockerfile: no RUN with case "$SERVICE" ... pkgpath=...;; arms`)
	}
	return arms
}

func TestDockerfileFinalImage(t *testing.T) {
	df := loadDockerfile(t)
	cf := loadConfigFacts(t)
	final := df.stages[len(df.stages)-1]

	if final.from != "scratch" && !strings.HasPrefix(final.from, "gcr.io/distroless/static") {
		t.Errorf("final stage FROM %s: want scratch or gcr.io/distroless/static (no shell, no libc)", final.from)
	}

	user, ok := final.last("USER")
	if !ok {
		t.Fatal("final stage has no USER: the image would run as root")
	}
	uid, _, _ := strings.Cut(user.args, ":")
	if n, err := strconv.Atoi(uid); err != nil || n == 0 {
		// Numeric, so that Kubernetes' runAsNonRoot can verify it.
		t.Errorf("USER %q: want a numeric non-zero uid", user.args)
	}

	ep, ok := final.last("ENTRYPOINT")
	if !ok {
		t.Fatal("final stage has no ENTRYPOINT")
	}
	var argv []string
	if err := json.Unmarshal([]byte(ep.args), &argv); err != nil || len(argv) == 0 {
		t.Fatalf("ENTRYPOINT %s: want exec form (a JSON array): there is no shell in the image", ep.args)
	}
	copied := false
	for _, in := range final.all("COPY") {
		flags, _, dst := copyArgs(in)
		if flags["from"] != "" && dst == argv[0] {
			copied = true
		}
	}
	if !copied {
		t.Errorf("ENTRYPOINT runs %s, which no COPY --from=<build stage> puts there", argv[0])
	}

	var exposed []int
	for _, in := range final.all("EXPOSE") {
		for _, p := range strings.Fields(in.args) {
			p, _, _ = strings.Cut(p, "/")
			n, err := strconv.Atoi(p)
			if err != nil {
				t.Fatalf("EXPOSE %s: %v", in.args, err)
			}
			exposed = append(exposed, n)
		}
	}
	for _, name := range []string{"CACTUS_LISTEN_ADDR", "CACTUS_ADMIN_ADDR"} {
		if p := cf.port(t, nil, name); !slices.Contains(exposed, p) {
			t.Errorf("EXPOSE %v lacks %d, the default of %s", exposed, p, name)
		}
	}
}

func TestDockerfileStaticBuild(t *testing.T) {
	df := loadDockerfile(t)
	final := df.stages[len(df.stages)-1]
	var buildName string
	for _, in := range final.all("COPY") {
		if flags, _, _ := copyArgs(in); flags["from"] != "" {
			buildName = flags["from"]
		}
	}
	idx := slices.IndexFunc(df.stages, func(s stage) bool { return s.name == buildName })
	if idx < 0 {
		t.Fatalf("the final stage copies from %q, which is no stage", buildName)
	}
	build := df.stages[idx]

	// The builder's Go is the workspace's Go.
	wantGo := semver.MajorMinor("v" + goWork(t).Go.Version)
	img, tag, _ := strings.Cut(build.from, ":")
	if img != "golang" {
		t.Errorf("build stage FROM %s: want the golang image", build.from)
	}
	if ref, ok := strings.CutPrefix(tag, "${"); ok {
		tag = df.globalArgs[strings.TrimSuffix(ref, "}")]
	}
	if got := semver.MajorMinor("v" + tag); got != wantGo {
		t.Errorf("builder Go %q, go.work says %s", tag, wantGo)
	}

	env := strings.Join(func() []string {
		var s []string
		for _, in := range build.all("ENV") {
			s = append(s, in.args)
		}
		return s
	}(), " ")
	var goBuild instruction
	for _, in := range build.all("RUN") {
		if strings.Contains(in.args, "go build") {
			goBuild = in
		}
	}
	if goBuild.cmd == "" {
		t.Fatal("build stage has no RUN ... go build")
	}
	if !strings.Contains(env, "CGO_ENABLED=0") && !strings.Contains(goBuild.args, "CGO_ENABLED=0") {
		t.Error("CGO_ENABLED=0 is not set for go build: the binary would need libc, which the final image lacks")
	}
	for _, want := range []string{"-trimpath", `-ldflags="-s -w `, "--mount=type=cache,target=/go/pkg/mod", "--mount=type=cache,target=/root/.cache/go-build"} {
		if !strings.Contains(goBuild.args, want) {
			t.Errorf("go build RUN lacks %s", want)
		}
	}
	// The image knows its version: the build has no .git (and
	// -buildvcs=false), so the version and revision come in as build
	// arguments and are stamped with -X, as `make build` does.
	const pkg = "github.com/cactus-comments/appservice/pkg/buildinfo"
	for _, v := range []string{"version", "revision"} {
		arg := strings.ToUpper(v)
		if !strings.Contains(goBuild.args, "-X "+pkg+"."+v+"=${"+arg+"}") {
			t.Errorf("go build does not stamp %s.%s from the build argument %s", pkg, v, arg)
		}
		if !slices.ContainsFunc(build.all("ARG"), func(in instruction) bool { return strings.HasPrefix(in.args, arg) }) {
			t.Errorf("build stage has no ARG %s", arg)
		}
		if mk := string(readRepoFile(t, "Makefile")); !strings.Contains(mk, "--build-arg "+arg+"=") || !strings.Contains(mk, "-X $(BUILDINFO)."+v+"=") {
			t.Errorf("Makefile does not pass %s to the image build and go build", arg)
		}
	}
}

// TestDockerfileWorkspace: every module of go.work reaches the build (go
// refuses a workspace with a missing module), and every SERVICE the
// Dockerfile accepts builds a package main that exists and is copied in.
func TestDockerfileWorkspace(t *testing.T) {
	root := repoRoot(t)
	df := loadDockerfile(t)
	build := df.stages[0]
	ign := dockerignore(t)

	type copied struct{ srcs []string }
	var copies []copied
	for _, in := range build.all("COPY") {
		flags, srcs, dst := copyArgs(in)
		if flags["from"] != "" {
			continue
		}
		// COPY a/go.* a/ and COPY a/ a/ both keep the relative path.
		for _, s := range srcs {
			if strings.HasSuffix(s, "/") && path.Clean(s) != path.Clean(dst) {
				t.Errorf("line %d: COPY %s %s changes the path; the workspace needs it kept", in.line, s, dst)
			}
		}
		copies = append(copies, copied{srcs})
	}
	isCopied := func(file string) bool {
		for _, c := range copies {
			for _, s := range c.srcs {
				if ok, _ := path.Match(s, file); ok {
					return true
				}
				if strings.HasSuffix(s, "/") && strings.HasPrefix(file, s) {
					return true
				}
			}
		}
		return false
	}

	for _, f := range []string{"go.work", "go.work.sum"} {
		if !isCopied(f) {
			t.Errorf("%s is not copied into the build stage", f)
		}
		if excluded(t, ign, f) {
			t.Errorf(".dockerignore excludes %s", f)
		}
	}
	for _, u := range goWork(t).Use {
		mod := path.Join(path.Clean(u.Path), "go.mod")
		if !isCopied(mod) {
			t.Errorf("go.work uses %s, but the Dockerfile does not copy %s: add `COPY %s/go.* %s/`", u.Path, mod, path.Clean(u.Path), path.Clean(u.Path))
		}
		if excluded(t, ign, mod) {
			t.Errorf(".dockerignore excludes %s, which the workspace needs", mod)
		}
	}

	arms := serviceArms(t, df)
	want := []string{"gateway", "provisioner", "botworker", "cactusctl"}
	want = append(want, makefileImages(t)...)
	for _, svc := range want {
		if _, ok := arms[svc]; !ok {
			t.Errorf("Dockerfile does not accept SERVICE=%s", svc)
		}
	}
	for svc, pkgPath := range arms {
		rel := path.Clean(pkgPath)
		dir := filepath.Join(root, filepath.FromSlash(rel))
		if !hasMainPackage(t, dir) {
			t.Errorf("SERVICE=%s builds %s, which is no package main in the repository", svc, pkgPath)
		}
		file := rel + "/main.go"
		if !isCopied(file) {
			t.Errorf("SERVICE=%s builds %s, but no COPY brings it into the build stage", svc, pkgPath)
		}
		if excluded(t, ign, file) {
			t.Errorf(".dockerignore excludes %s", file)
		}
	}
}

// makefileImages is the list `make images` builds: $(SERVICES) and
// cactusctl.
func makefileImages(t *testing.T) []string {
	t.Helper()
	mk := string(readRepoFile(t, "Makefile"))
	m := regexp.MustCompile(`(?m)^SERVICES\s*:?=\s*(.+)$`).FindStringSubmatch(mk)
	if m == nil {
		t.Fatal("Makefile: no SERVICES := line")
	}
	return strings.Fields(m[1])
}

func hasMainPackage(t *testing.T, dir string) bool {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "*.go"))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		af, err := parser.ParseFile(token.NewFileSet(), f, nil, parser.PackageClauseOnly)
		if err != nil {
			t.Fatal(err)
		}
		if af.Name.Name == "main" {
			return true
		}
	}
	return false
}

func dockerignore(t *testing.T) *patternmatcher.PatternMatcher {
	t.Helper()
	f, err := os.Open(filepath.Join(repoRoot(t), ".dockerignore"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	patterns, err := ignorefile.ReadAll(f)
	if err != nil {
		t.Fatal(err)
	}
	pm, err := patternmatcher.New(patterns)
	if err != nil {
		t.Fatal(err)
	}
	return pm
}

// excluded reports whether the docker build context leaves out file (a
// slash-separated path from the repository root).
func excluded(t *testing.T, pm *patternmatcher.PatternMatcher, file string) bool {
	t.Helper()
	// MatchesOrParentMatches is what the docker CLI applies to each path.
	ex, err := pm.MatchesOrParentMatches(filepath.FromSlash(file))
	if err != nil {
		t.Fatal(err)
	}
	return ex
}

func TestDockerignoreKeepsSecretsOut(t *testing.T) {
	pm := dockerignore(t)
	for _, tc := range []struct {
		file string
		out  bool
	}{
		{"deploy/compose/local/cactus.env", true},
		{"deploy/compose/local/cactus-registration.yaml", true},
		{"cactus.env", true},
		{".env", true},
		{"pkg/.env", true},
		{".git/config", true},
		{"bin/gateway", true},
		{"services/gateway/main.go", false},
		{"pkg/config/config.go", false},
		{"cmd/cactusctl/main.go", false},
	} {
		if got := excluded(t, pm, tc.file); got != tc.out {
			t.Errorf("%s excluded from the build context: %v, want %v", tc.file, got, tc.out)
		}
	}
}

func TestParseDockerfile(t *testing.T) {
	tests := []struct {
		name, in string
		stages   int
		wantErr  bool
	}{
		{"continuation and comment inside", "FROM a AS b\nRUN x \\\n# c\n  y\nFROM c\nUSER 1\n", 2, false},
		{"global arg", "ARG V=1\nFROM a:${V}\n", 1, false},
		{"instruction before FROM", "RUN x\nFROM a\n", 0, true},
		{"dangling continuation", "FROM a\nRUN x \\\n", 0, true},
		{"no FROM", "# only a comment\n", 0, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			df, err := parseDockerfile([]byte(tc.in))
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, want error %v", err, tc.wantErr)
			}
			if err == nil && len(df.stages) != tc.stages {
				t.Fatalf("%d stages, want %d", len(df.stages), tc.stages)
			}
		})
	}
	df, err := parseDockerfile([]byte("FROM a AS b\nRUN x \\\n# c\n  y\n"))
	if err != nil {
		t.Fatal(err)
	}
	if got := df.stages[0].instrs[0].args; strings.Join(strings.Fields(got), " ") != "x y" {
		t.Fatalf("continuation joined as %q", got)
	}
}

// TestDockerBuildContextResolves rebuilds, without Docker, the build
// stage's file tree: the files the build context keeps (.dockerignore)
// that the stage's COPY instructions bring in, at the same paths. In that
// tree, every SERVICE's package and all its dependencies must resolve in
// workspace mode with go.sum as it is (a missing module or checksum there
// is a failed image build). `go list -deps` does that without compiling.
func TestDockerBuildContextResolves(t *testing.T) {
	if testing.Short() {
		t.Skip("copies the sources and runs go list")
	}
	root := repoRoot(t)
	df := loadDockerfile(t)
	pm := dockerignore(t)
	var srcs []string
	for _, in := range df.stages[0].all("COPY") {
		flags, s, _ := copyArgs(in)
		if flags["from"] == "" {
			srcs = append(srcs, s...)
		}
	}
	copiedBy := func(rel string) bool {
		for _, s := range srcs {
			if ok, _ := path.Match(s, rel); ok {
				return true
			}
			if strings.HasSuffix(s, "/") && strings.HasPrefix(rel, s) {
				return true
			}
		}
		return false
	}
	ctx := t.TempDir()
	n := 0
	err := filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, p)
		if err != nil || rel == "." {
			return err
		}
		if d.IsDir() {
			if d.Name() == ".git" {
				return filepath.SkipDir
			}
			return nil
		}
		slashed := filepath.ToSlash(rel)
		if excluded(t, pm, slashed) || !copiedBy(slashed) {
			return nil
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		dst := filepath.Join(ctx, rel)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return err
		}
		n++
		return os.WriteFile(dst, data, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
	if n == 0 {
		t.Fatal("the build stage would receive no files")
	}

	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("go tool: %v", err)
	}
	arms := serviceArms(t, df)
	args := []string{"list", "-deps", "-e", "-f", "{{with .Error}}{{.}}{{end}}{{with .DepsErrors}}{{.}}{{end}}"}
	for _, p := range arms {
		args = append(args, p)
	}
	cmd := exec.Command(goTool, args...)
	cmd.Dir = ctx
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=-mod=readonly -buildvcs=false", "GOWORK=")
	out, err := cmd.CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Fatalf("in the build stage's tree, go list %v: %v\n%s", args[5:], err, out)
	}
}
