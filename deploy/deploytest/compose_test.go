package deploytest

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/compose-spec/compose-go/v2/loader"
	"github.com/compose-spec/compose-go/v2/types"
	"github.com/nats-io/nats-server/v2/server"
	"gopkg.in/yaml.v3"

	"github.com/cactus-comments/appservice/pkg/bus"
	"github.com/cactus-comments/appservice/pkg/natsconf"
	"github.com/cactus-comments/appservice/pkg/registration"
)

// The compose file, as far as this repository uses it. Decoding is strict:
// a misspelt key (depend_on, healtcheck) fails instead of being ignored by
// the test and silently by compose.
type composeFile struct {
	Name       string                    `yaml:"name"`
	Services   map[string]composeService `yaml:"services"`
	Volumes    map[string]*struct{}      `yaml:"volumes"`
	Extensions map[string]any            `yaml:",inline"` // x-* anchors
}

type composeService struct {
	Image           string                       `yaml:"image"`
	Build           *composeBuild                `yaml:"build"`
	Command         []string                     `yaml:"command"`
	Entrypoint      []string                     `yaml:"entrypoint"`
	EnvFile         []string                     `yaml:"env_file"`
	Environment     map[string]string            `yaml:"environment"`
	ReadOnly        bool                         `yaml:"read_only"`
	User            string                       `yaml:"user"`
	CapDrop         []string                     `yaml:"cap_drop"`
	SecurityOpt     []string                     `yaml:"security_opt"`
	Restart         string                       `yaml:"restart"`
	StopGracePeriod string                       `yaml:"stop_grace_period"`
	Volumes         []composeMount               `yaml:"volumes"`
	Expose          []string                     `yaml:"expose"`
	Ports           []string                     `yaml:"ports"`
	Healthcheck     *composeHealthcheck          `yaml:"healthcheck"`
	DependsOn       map[string]composeDependency `yaml:"depends_on"`
	Deploy          *composeDeploy               `yaml:"deploy"`
	ContainerName   string                       `yaml:"container_name"`
}

type composeBuild struct {
	Context    string            `yaml:"context"`
	Dockerfile string            `yaml:"dockerfile"`
	Args       map[string]string `yaml:"args"`
}

type composeHealthcheck struct {
	Test        []string `yaml:"test"`
	Interval    string   `yaml:"interval"`
	Timeout     string   `yaml:"timeout"`
	Retries     int      `yaml:"retries"`
	StartPeriod string   `yaml:"start_period"`
}

type composeDependency struct {
	Condition string `yaml:"condition"`
}

type composeDeploy struct {
	Replicas *int `yaml:"replicas"`
}

// composeMount is a volumes entry, short ("src:dst[:ro]") or long syntax.
type composeMount struct {
	Type     string `yaml:"type"`
	Source   string `yaml:"source"`
	Target   string `yaml:"target"`
	ReadOnly bool   `yaml:"read_only"`
	Bind     *struct {
		CreateHostPath *bool `yaml:"create_host_path"`
	} `yaml:"bind"`
}

func (m *composeMount) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode {
		parts := strings.Split(n.Value, ":")
		if len(parts) < 2 || len(parts) > 3 {
			return fmt.Errorf("line %d: volume %q: want source:target[:mode]", n.Line, n.Value)
		}
		m.Source, m.Target = parts[0], parts[1]
		m.ReadOnly = len(parts) == 3 && parts[2] == "ro"
		m.Type = "volume"
		if strings.HasPrefix(m.Source, ".") || strings.HasPrefix(m.Source, "/") {
			m.Type = "bind"
		}
		return nil
	}
	// Node.Decode would not be strict; go through a strict decoder.
	b, err := yaml.Marshal(n)
	if err != nil {
		return err
	}
	type plain composeMount
	if err := decodeYAMLStrict(b, (*plain)(m)); err != nil {
		return fmt.Errorf("line %d: volume: %w", n.Line, err)
	}
	return nil
}

// Where things are, as the compose README's registration command writes
// them and docker-compose.yml reads them.
const (
	composeEnvFile      = "deploy/compose/local/cactus.env"
	composeRegistration = "deploy/compose/local/cactus-registration.yaml"
	composeReadme       = "deploy/compose/README.md"
	synapseConfigDir    = "deploy/compose/synapse"
)

var ourServices = []string{"gateway", "provisioner", "botworker"}

func loadCompose(t *testing.T) *composeFile {
	t.Helper()
	var c composeFile
	if err := decodeYAMLStrict(readRepoFile(t, "docker-compose.yml"), &c); err != nil {
		t.Fatalf("docker-compose.yml: %v", err)
	}
	for k := range c.Extensions {
		if !strings.HasPrefix(k, "x-") {
			t.Fatalf("docker-compose.yml: unknown top-level key %q", k)
		}
	}
	return &c
}

// homeserverConfig is the part of Synapse's homeserver.yaml the wiring
// depends on.
type homeserverConfig struct {
	ServerName string `yaml:"server_name"`
	Listeners  []struct {
		Port      int    `yaml:"port"`
		Type      string `yaml:"type"`
		Resources []struct {
			Names []string `yaml:"names"`
		} `yaml:"resources"`
	} `yaml:"listeners"`
	AppServiceConfigFiles []string `yaml:"app_service_config_files"`
	SigningKeyPath        string   `yaml:"signing_key_path"`
}

func loadHomeserverConfig(t *testing.T) homeserverConfig {
	t.Helper()
	var hs homeserverConfig
	if err := yaml.Unmarshal(readRepoFile(t, synapseConfigDir+"/homeserver.yaml"), &hs); err != nil {
		t.Fatalf("homeserver.yaml: %v", err)
	}
	return hs
}

// clientPort is the port of the homeserver's client API listener.
func (hs homeserverConfig) clientPort(t *testing.T) int {
	t.Helper()
	for _, l := range hs.Listeners {
		for _, r := range l.Resources {
			if l.Type == "http" && slices.Contains(r.Names, "client") {
				return l.Port
			}
		}
	}
	t.Fatal("homeserver.yaml: no http listener with the client resource")
	return 0
}

// hostPort splits a URL's host and port (default port by scheme).
func hostPort(t *testing.T, raw string) (string, int) {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatalf("URL %q: %v", raw, err)
	}
	p := u.Port()
	if p == "" {
		p = map[string]string{"http": "80", "https": "443", "nats": "4222", "tls": "4222"}[u.Scheme]
	}
	n, err := strconv.Atoi(p)
	if err != nil {
		t.Fatalf("URL %q: port %q", raw, p)
	}
	return u.Hostname(), n
}

// flagValue is the argument after flag in argv.
func flagValue(argv []string, flag string) (string, bool) {
	i := slices.Index(argv, flag)
	if i < 0 || i+1 >= len(argv) {
		return "", false
	}
	return argv[i+1], true
}

// publishedContainerPorts are the container ports a service publishes on
// the host ("127.0.0.1:9090:9090" publishes 9090).
func publishedContainerPorts(t *testing.T, ports []string) []int {
	t.Helper()
	var out []int
	for _, p := range ports {
		p, _, _ = strings.Cut(p, "/")
		i := strings.LastIndex(p, ":")
		n, err := strconv.Atoi(p[i+1:])
		if err != nil {
			t.Fatalf("ports entry %q: %v", p, err)
		}
		out = append(out, n)
	}
	return out
}

func TestComposeServices(t *testing.T) {
	c := loadCompose(t)
	var names []string
	for name := range c.Services {
		names = append(names, name)
	}
	slices.Sort(names)
	want := []string{"botworker", "gateway", "nats", "provisioner", "synapse", "topology"}
	if !slices.Equal(names, want) {
		t.Fatalf("services %v, want %v", names, want)
	}
}

func TestComposeOurServices(t *testing.T) {
	c := loadCompose(t)
	cf := loadConfigFacts(t)
	arms := serviceArms(t, loadDockerfile(t))
	for _, name := range ourServices {
		t.Run(name, func(t *testing.T) {
			s := c.Services[name]
			if s.Build == nil || s.Build.Args["SERVICE"] != name {
				t.Fatalf("build.args.SERVICE must be %q", name)
			}
			if _, ok := arms[name]; !ok {
				t.Errorf("the Dockerfile does not accept SERVICE=%s", name)
			}
			if path.Clean(s.Build.Context) != "." || s.Build.Dockerfile != "Dockerfile" {
				t.Errorf("build %+v: want context . and the root Dockerfile", *s.Build)
			}
			if want := "cactus-" + name + ":dev"; s.Image != want {
				t.Errorf("image %q, want %q (the tag `make images` builds)", s.Image, want)
			}
			if !s.ReadOnly {
				t.Error("read_only is not set")
			}
			uid, _, _ := strings.Cut(s.User, ":")
			if n, err := strconv.Atoi(uid); err != nil || n == 0 {
				t.Errorf("user %q: want a numeric non-root uid", s.User)
			}
			if !slices.Contains(s.CapDrop, "ALL") {
				t.Error("cap_drop lacks ALL")
			}
			if !slices.Contains(s.SecurityOpt, "no-new-privileges:true") {
				t.Error("security_opt lacks no-new-privileges:true")
			}
			if s.Restart == "" || s.Restart == "no" {
				t.Errorf("restart %q: a service that exits (NATS unreachable for two minutes) should come back", s.Restart)
			}
			if want := []string{composeEnvFile, natsClientEnvFile(name)}; !slices.Equal(s.EnvFile, want) {
				t.Errorf("env_file %v, want %v (written by cactusctl registration and nats-credentials)", s.EnvFile, want)
			}
			if cf.value(s.Environment, "CACTUS_NATS_TOPOLOGY") != "check" {
				t.Error("CACTUS_NATS_TOPOLOGY is not check: its NATS user may not create the topology")
			}
			if d := s.DependsOn["topology"]; d.Condition != "service_completed_successfully" {
				t.Errorf("depends_on topology %+v: want service_completed_successfully (the topology must exist first)", d)
			}
			// The image has no shell and no HTTP client: a healthcheck
			// command could never run and would mark it unhealthy.
			if s.Healthcheck != nil && !slices.Equal(s.Healthcheck.Test, []string{"NONE"}) {
				t.Errorf("healthcheck %v cannot run in a distroless image", s.Healthcheck.Test)
			}
			if err := cf.checkKnown(s.Environment); err != nil {
				t.Error(err)
			}
			grace, err := time.ParseDuration(s.StopGracePeriod)
			if err != nil {
				t.Fatalf("stop_grace_period %q: %v", s.StopGracePeriod, err)
			}
			if drain := cf.duration(t, s.Environment, "CACTUS_SHUTDOWN_TIMEOUT"); grace <= drain {
				t.Errorf("stop_grace_period %v must exceed CACTUS_SHUTDOWN_TIMEOUT %v, or the drain is cut by SIGKILL", grace, drain)
			}

			// Addresses: NATS and the homeserver by compose service name.
			natsHost, natsPort := hostPort(t, cf.value(s.Environment, "CACTUS_NATS_URL"))
			if natsHost != "nats" || natsPort != 4222 {
				t.Errorf("CACTUS_NATS_URL points at %s:%d, want the nats service on 4222", natsHost, natsPort)
			}
			hs := loadHomeserverConfig(t)
			hsHost, hsPort := hostPort(t, cf.value(s.Environment, "CACTUS_HOMESERVER_URL"))
			if hsHost != "synapse" || hsPort != hs.clientPort(t) {
				t.Errorf("CACTUS_HOMESERVER_URL points at %s:%d, want synapse:%d", hsHost, hsPort, hs.clientPort(t))
			}
			admin := cf.port(t, s.Environment, "CACTUS_ADMIN_ADDR")
			if !slices.Contains(s.Expose, strconv.Itoa(admin)) {
				t.Errorf("expose %v lacks the admin port %d", s.Expose, admin)
			}

			if d, ok := s.DependsOn["nats"]; !ok || d.Condition != "service_healthy" {
				t.Errorf("depends_on nats %+v: want condition service_healthy (the services need JetStream up)", d)
			}
		})
	}

	gw := c.Services["gateway"]
	listen := cf.port(t, gw.Environment, "CACTUS_LISTEN_ADDR")
	if !slices.Contains(gw.Expose, strconv.Itoa(listen)) {
		t.Errorf("gateway expose %v lacks CACTUS_LISTEN_ADDR port %d", gw.Expose, listen)
	}
	if slices.Contains(publishedContainerPorts(t, gw.Ports), listen) {
		t.Errorf("gateway publishes %d on the host; only synapse should reach it", listen)
	}

	p := c.Services["provisioner"]
	if p.Deploy == nil || p.Deploy.Replicas == nil || *p.Deploy.Replicas != 2 {
		t.Error("provisioner: want deploy.replicas: 2")
	}
	if p.ContainerName != "" || len(p.Ports) > 0 {
		t.Error("provisioner: container_name or published ports would stop a second replica from starting")
	}
	for _, w := range []string{"provisioner", "botworker"} {
		if d := c.Services[w].DependsOn["synapse"]; d.Condition != "service_healthy" {
			t.Errorf("%s: want depends_on synapse service_healthy (it calls the homeserver at startup)", w)
		}
	}
}

func TestComposeStartOrder(t *testing.T) {
	c := loadCompose(t)
	conditions := []string{"service_started", "service_healthy", "service_completed_successfully"}
	for name, s := range c.Services {
		for dep, d := range s.DependsOn {
			target, ok := c.Services[dep]
			if !ok {
				t.Errorf("%s depends on %s, which is no service", name, dep)
				continue
			}
			if !slices.Contains(conditions, d.Condition) {
				t.Errorf("%s depends_on %s: condition %q", name, dep, d.Condition)
			}
			if d.Condition == "service_healthy" && target.Healthcheck == nil {
				t.Errorf("%s waits for %s to be healthy, which has no healthcheck", name, dep)
			}
		}
	}
	// A cycle would keep compose from starting anything.
	state := map[string]int{} // 0 new, 1 visiting, 2 done
	var visit func(string, []string)
	visit = func(n string, trail []string) {
		switch state[n] {
		case 1:
			t.Fatalf("depends_on cycle: %v", append(trail, n))
		case 2:
			return
		}
		state[n] = 1
		for dep := range c.Services[n].DependsOn {
			visit(dep, append(trail, n))
		}
		state[n] = 2
	}
	for n := range c.Services {
		visit(n, nil)
	}
}

// natsClientEnvFile is where `cactusctl nats-credentials --dir
// deploy/compose/local` writes an identity's NATS user and password.
func natsClientEnvFile(identity string) string { return "deploy/compose/local/" + identity + ".env" }

const natsServerEnvFile = "deploy/compose/local/nats.env"

// loadNATSConf reads the compose NATS configuration with the server's own
// parser, the passwords taken from made-up values.
func loadNATSConf(t *testing.T, c *composeFile) *server.Options {
	t.Helper()
	n := c.Services["nats"]
	conf, ok := flagValue(n.Command, "-c")
	if !ok {
		t.Fatalf("nats command %v names no configuration file (-c)", n.Command)
	}
	var mount *composeMount
	for i, m := range n.Volumes {
		if strings.HasPrefix(conf, m.Target+"/") && m.Type == "bind" {
			mount = &n.Volumes[i]
		}
	}
	if mount == nil || !mount.ReadOnly {
		t.Fatalf("nats reads %s, which no read-only bind mount provides", conf)
	}
	for _, id := range bus.Identities() {
		t.Setenv(natsconf.PasswordVar(id), "password-of-"+string(id))
	}
	local := filepath.Join(repoRoot(t), filepath.FromSlash(path.Clean(mount.Source)), strings.TrimPrefix(conf, mount.Target+"/"))
	o, err := server.ProcessConfigFile(local)
	if err != nil {
		t.Fatalf("nats-server refuses %s: %v", local, err)
	}
	return o
}

func TestComposeNATS(t *testing.T) {
	c := loadCompose(t)
	n := c.Services["nats"]
	img, tag, _ := strings.Cut(n.Image, ":")
	if img != "nats" {
		t.Errorf("nats image %q: want the official nats image", n.Image)
	}
	if got, want := imageMinor(tag), natsServerMinor(t); got != want {
		t.Errorf("nats image %s is %s; the tests embed nats-server %s (pkg/go.mod)", n.Image, got, want)
	}
	o := loadNATSConf(t, c)
	if !o.JetStream || o.StoreDir == "" {
		t.Fatalf("the nats configuration does not enable JetStream with a store directory")
	}
	persisted := false
	for _, m := range n.Volumes {
		if m.Target == o.StoreDir && m.Type == "volume" {
			if _, declared := c.Volumes[m.Source]; !declared {
				t.Errorf("nats mounts volume %q, which is not declared under volumes:", m.Source)
			}
			persisted = true
		}
	}
	if !persisted {
		t.Errorf("the JetStream store %s is not on a named volume: a restart would lose every stream", o.StoreDir)
	}
	if o.HTTPPort <= 0 {
		t.Fatal("the nats configuration does not enable monitoring (http_port)")
	}
	if n.Healthcheck == nil || !strings.Contains(strings.Join(n.Healthcheck.Test, " "), fmt.Sprintf(":%d/healthz", o.HTTPPort)) {
		t.Errorf("nats healthcheck should ask /healthz on the monitoring port %d", o.HTTPPort)
	}
	// Every identity is a user with its password from nats.env, and no
	// client gets in without one.
	if o.NoAuthUser != "" {
		t.Errorf("no_auth_user %q lets clients in without credentials", o.NoAuthUser)
	}
	users := map[string]string{}
	for _, u := range o.Users {
		users[u.Username] = u.Password
	}
	for _, id := range bus.Identities() {
		if users[string(id)] != "password-of-"+string(id) {
			t.Errorf("NATS user %s missing or not with the password from %s", id, natsconf.PasswordVar(id))
		}
	}
	if !slices.Equal(n.EnvFile, []string{natsServerEnvFile}) {
		t.Errorf("nats env_file %v, want [%s] (cactusctl nats-credentials)", n.EnvFile, natsServerEnvFile)
	}

	top := c.Services["topology"]
	if top.Build == nil || top.Build.Args["SERVICE"] != "cactusctl" || !slices.Equal(top.Command, []string{"topology", "ensure"}) {
		t.Errorf("topology service: want the cactusctl image running topology ensure, got %+v %v", top.Build, top.Command)
	}
	if !slices.Equal(top.EnvFile, []string{composeEnvFile, natsClientEnvFile(string(bus.Operator))}) {
		t.Errorf("topology env_file %v: want the operator's NATS user", top.EnvFile)
	}
}

// TestGeneratedNATSConfig: the committed NATS users are exactly what
// `cactusctl nats-config` derives from the topology today.
func TestGeneratedNATSConfig(t *testing.T) {
	for file, want := range map[string]string{
		"deploy/compose/nats/accounts.conf": natsconf.ServerConfig(bus.Topology{}),
		"deploy/k8s/nats-auth-values.yaml":  natsconf.HelmValues(bus.Topology{}, natsconf.UsersSecret),
	} {
		if got := string(readRepoFile(t, file)); got != want {
			format := map[bool]string{true: "server", false: "helm"}[strings.HasSuffix(file, ".conf")]
			t.Errorf("%s differs from the topology's permissions; regenerate it: go run ./cmd/cactusctl nats-config --format %s > %s", file, format, file)
		}
	}
}

// readmeCommand is the `cactusctl <command>` invocation the compose README
// tells you to run, as arguments after "cactusctl".
func readmeCommand(t *testing.T, command string) []string {
	t.Helper()
	sc := bufio.NewScanner(bytes.NewReader(readRepoFile(t, composeReadme)))
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "go run ./cmd/cactusctl "); ok {
			argv := strings.Fields(rest)
			if len(argv) > 0 && argv[0] == command {
				return argv
			}
		}
	}
	t.Fatalf("%s shows no `go run ./cmd/cactusctl %s ...` line", composeReadme, command)
	return nil
}

func registrationCommand(t *testing.T) []string { return readmeCommand(t, "registration") }

func TestComposeSynapse(t *testing.T) {
	c := loadCompose(t)
	hs := loadHomeserverConfig(t)
	s := c.Services["synapse"]
	argv := registrationCommand(t)

	if v, _ := flagValue(argv, "--server-name"); v != hs.ServerName {
		t.Errorf("README registers for server %q, homeserver.yaml says %q", v, hs.ServerName)
	}
	if out, _ := flagValue(argv, "-o"); out != composeRegistration {
		t.Errorf("README writes the registration to %q, compose mounts %q", out, composeRegistration)
	}
	if env, _ := flagValue(argv, "--env-out"); env != composeEnvFile {
		t.Errorf("README writes the env file to %q, compose reads %q", env, composeEnvFile)
	}

	var regMount *composeMount
	for i, m := range s.Volumes {
		if path.Clean(m.Source) == composeRegistration {
			regMount = &s.Volumes[i]
		}
	}
	if regMount == nil {
		t.Fatalf("synapse does not mount %s", composeRegistration)
	}
	if regMount.Type != "bind" || !regMount.ReadOnly || regMount.Bind == nil || regMount.Bind.CreateHostPath == nil || *regMount.Bind.CreateHostPath {
		t.Errorf("registration mount %+v: want a read-only bind with create_host_path: false (else a missing file becomes a directory)", *regMount)
	}
	const asFile = "/data/cactus-registration.yaml"
	if !slices.Contains(hs.AppServiceConfigFiles, asFile) {
		t.Errorf("homeserver.yaml app_service_config_files %v lacks %s", hs.AppServiceConfigFiles, asFile)
	}

	// The entry point installs the mounted registration where Synapse
	// reads it, and starts from the mounted homeserver.yaml.
	var cfgMount *composeMount
	for i, m := range s.Volumes {
		if path.Clean(m.Source) == synapseConfigDir {
			cfgMount = &s.Volumes[i]
		}
	}
	if cfgMount == nil {
		t.Fatalf("synapse does not mount %s", synapseConfigDir)
	}
	if len(s.Entrypoint) != 2 || s.Entrypoint[1] != cfgMount.Target+"/start.sh" {
		t.Fatalf("synapse entrypoint %v: want [/bin/sh %s/start.sh]", s.Entrypoint, cfgMount.Target)
	}
	start := string(readRepoFile(t, synapseConfigDir+"/start.sh"))
	install := regexp.MustCompile(`(?m)^install .*\s` + regexp.QuoteMeta(regMount.Target) + `\s+` + regexp.QuoteMeta(asFile) + `\s*$`)
	if !install.MatchString(start) {
		t.Errorf("start.sh does not install %s as %s", regMount.Target, asFile)
	}
	if !strings.Contains(start, "--config-path \"$config\"") || !strings.Contains(start, "config="+cfgMount.Target+"/homeserver.yaml") {
		t.Errorf("start.sh does not run Synapse with %s/homeserver.yaml", cfgMount.Target)
	}
	if hs.SigningKeyPath == "" || !strings.Contains(start, hs.SigningKeyPath) {
		t.Errorf("start.sh does not create signing_key_path %q", hs.SigningKeyPath)
	}

	if s.Healthcheck == nil || !strings.Contains(strings.Join(s.Healthcheck.Test, " "), fmt.Sprintf(":%d/health", hs.clientPort(t))) {
		t.Errorf("synapse healthcheck should ask /health on port %d", hs.clientPort(t))
	}
	if d := s.DependsOn["gateway"]; d.Condition != "service_started" {
		t.Error("synapse should start after the gateway it pushes to")
	}
}

// TestComposeRegistration runs the README's `cactusctl registration`
// command into a scratch directory and checks that what it writes fits
// the compose wiring: the registration's url is the gateway's service and
// port, its tokens and namespaces match the environment file, and each of
// our services accepts its resulting configuration.
func TestComposeRegistration(t *testing.T) {
	if testing.Short() {
		t.Skip("builds cactusctl")
	}
	root := repoRoot(t)
	c := loadCompose(t)
	cf := loadConfigFacts(t)
	hs := loadHomeserverConfig(t)

	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("go tool: %v", err)
	}
	tmp := t.TempDir()
	bin := filepath.Join(tmp, "cactusctl")
	build := exec.Command(goTool, "build", "-o", bin, "./cmd/cactusctl")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/cactusctl: %v\n%s", err, out)
	}
	work := filepath.Join(tmp, "work")
	if err := os.MkdirAll(filepath.Join(work, filepath.FromSlash(path.Dir(composeRegistration))), 0o700); err != nil {
		t.Fatal(err)
	}
	creds := readmeCommand(t, "nats-credentials")
	if dir, _ := flagValue(creds, "--dir"); path.Clean(dir) != path.Dir(composeEnvFile) {
		t.Errorf("README writes the NATS credentials to %q, compose reads them from %s", dir, path.Dir(composeEnvFile))
	}
	for _, argv := range [][]string{registrationCommand(t), creds} {
		run := exec.Command(bin, argv...)
		run.Dir = work
		run.Env = []string{"PATH=" + os.Getenv("PATH")}
		if out, err := run.CombinedOutput(); err != nil {
			t.Fatalf("cactusctl %v: %v\n%s", argv, err, out)
		}
	}

	reg, err := registration.Load(filepath.Join(work, filepath.FromSlash(composeRegistration)))
	if err != nil {
		t.Fatal(err)
	}
	gw := c.Services["gateway"]
	wantURL := "http://gateway:" + strconv.Itoa(cf.port(t, gw.Environment, "CACTUS_LISTEN_ADDR"))
	if reg.URL == nil {
		t.Errorf("registration url is null, want %s", wantURL)
	} else if got := strings.TrimRight(*reg.URL, "/"); got != wantURL {
		t.Errorf("registration url %s, want %s (the gateway service and its CACTUS_LISTEN_ADDR port)", got, wantURL)
	}
	m, err := reg.Compile(registration.AnchorStart)
	if err != nil {
		t.Fatal(err)
	}

	envData, err := os.ReadFile(filepath.Join(work, filepath.FromSlash(composeEnvFile)))
	if err != nil {
		t.Fatal(err)
	}
	fileEnv, err := parseComposeEnvFile(envData)
	if err != nil {
		t.Fatalf("%s: %v", composeEnvFile, err)
	}
	if fileEnv["CACTUS_AS_TOKEN"] != reg.ASToken || fileEnv["CACTUS_HS_TOKEN"] != reg.HSToken {
		t.Error("the env file's tokens differ from the registration's")
	}

	for _, name := range ourServices {
		t.Run(name, func(t *testing.T) {
			s := c.Services[name]
			env := map[string]string{}
			for _, file := range s.EnvFile { // later files win, as in compose
				data, err := os.ReadFile(filepath.Join(work, filepath.FromSlash(file)))
				if err != nil {
					t.Fatalf("env_file %s is not written by the README's commands: %v", file, err)
				}
				m, err := parseComposeEnvFile(data)
				if err != nil {
					t.Fatalf("%s: %v", file, err)
				}
				for k, v := range m {
					env[k] = v
				}
			}
			if env["CACTUS_NATS_USER"] != name || env["CACTUS_NATS_PASSWORD"] == "" {
				t.Errorf("%s connects to NATS as %q, want its own user", name, env["CACTUS_NATS_USER"])
			}
			for k, v := range s.Environment { // compose: environment wins over env_file
				env[k] = v
			}
			for _, req := range cf.required() {
				if _, ok := env[req]; !ok {
					t.Errorf("required %s is neither in the env file nor in environment", req)
				}
			}
			if err := cf.checkKnown(env); err != nil {
				t.Error(err)
			}
			cfg, err := cf.loadConfig(t, env)
			if err != nil {
				t.Fatalf("the service would refuse this configuration: %v", err)
			}
			if cfg.ServerName() != hs.ServerName {
				t.Errorf("bot %s is not on the homeserver %s", cfg.UserID, hs.ServerName)
			}
			if _, excl := m.User(cfg.UserID); !excl {
				t.Errorf("bot %s is not in the registration's exclusive users namespace", cfg.UserID)
			}
			alias := "#" + cfg.NamespacePrefix + "example.org_x:" + hs.ServerName
			if _, excl := m.Alias(alias); !excl || !cfg.InNamespace(alias) {
				t.Errorf("comment alias %s: registration exclusive %v, CACTUS_NAMESPACE_REGEX %v; want both", alias, excl, cfg.InNamespace(alias))
			}
		})
	}
}

// parseComposeEnvFile reads KEY=VALUE lines and refuses values that docker
// compose would not pass through verbatim: compose interpolates $ in
// env_file values, cuts " #" comments and strips quotes.
func parseComposeEnvFile(data []byte) (map[string]string, error) {
	out := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if strings.TrimSpace(line) == "" || strings.HasPrefix(strings.TrimSpace(line), "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok || k == "" || strings.ContainsAny(k, " \t") {
			return nil, fmt.Errorf("line %d: want KEY=VALUE", n)
		}
		if strings.Contains(v, "$") || strings.Contains(v, " #") || strings.TrimSpace(v) != v ||
			strings.HasPrefix(v, `"`) || strings.HasPrefix(v, "'") {
			return nil, fmt.Errorf("line %d: %s: compose would not read %q verbatim", n, k, v)
		}
		out[k] = v
	}
	return out, sc.Err()
}

func TestParseComposeEnvFile(t *testing.T) {
	tests := []struct {
		in      string
		want    map[string]string
		wantErr bool
	}{
		{"# c\n\nA=1\nB=#comments_.*:x\n", map[string]string{"A": "1", "B": "#comments_.*:x"}, false},
		{"A=x$y\n", nil, true},
		{"A=x #c\n", nil, true},
		{"A='x'\n", nil, true},
		{"NOEQUALS\n", nil, true},
	}
	for _, tc := range tests {
		got, err := parseComposeEnvFile([]byte(tc.in))
		if (err != nil) != tc.wantErr {
			t.Fatalf("%q: err %v, want error %v", tc.in, err, tc.wantErr)
		}
		if err == nil && fmt.Sprint(got) != fmt.Sprint(tc.want) {
			t.Fatalf("%q: %v, want %v", tc.in, got, tc.want)
		}
	}
}

func TestHostPort(t *testing.T) {
	for _, tc := range []struct {
		in   string
		host string
		port int
	}{
		{"nats://nats:4222", "nats", 4222},
		{"nats://nats", "nats", 4222},
		{"http://synapse:8008", "synapse", 8008},
		{"https://matrix.example.org", "matrix.example.org", 443},
	} {
		h, p := hostPort(t, tc.in)
		if h != tc.host || p != tc.port {
			t.Errorf("%s: %s %d", tc.in, h, p)
		}
	}
}

// TestComposeSpecLoads loads docker-compose.yml with compose-go, the
// loader docker compose itself uses: the compose specification's schema,
// interpolation, anchors and merge keys. The environment each service ends
// up with must be what the tests above read.
func TestComposeSpecLoads(t *testing.T) {
	root := repoRoot(t)
	data := readRepoFile(t, "docker-compose.yml")
	p, err := loader.LoadWithContext(context.Background(), types.ConfigDetails{
		WorkingDir:  root,
		ConfigFiles: []types.ConfigFile{{Filename: filepath.Join(root, "docker-compose.yml"), Content: data}},
		Environment: types.Mapping{},
	}, func(o *loader.Options) {
		// The env file holds tokens and exists only on a machine that ran
		// cactusctl registration; TestComposeRegistration covers it.
		o.SkipResolveEnvironment = true
		o.SetProjectName("cactus", true)
	})
	if err != nil {
		t.Fatalf("docker compose would refuse docker-compose.yml: %v", err)
	}
	c := loadCompose(t)
	for name, mine := range c.Services {
		svc, ok := p.Services[name]
		if !ok {
			t.Errorf("compose-go does not see service %s", name)
			continue
		}
		got := map[string]string{}
		for k, v := range svc.Environment {
			if v != nil {
				got[k] = *v
			}
		}
		if fmt.Sprint(got) != fmt.Sprint(mine.Environment) && !(len(got) == 0 && len(mine.Environment) == 0) {
			t.Errorf("%s: compose sees environment %v, the tests read %v", name, got, mine.Environment)
		}
		for dep, d := range mine.DependsOn {
			if svc.DependsOn[dep].Condition != d.Condition {
				t.Errorf("%s depends_on %s: compose sees %q, the tests read %q", name, dep, svc.DependsOn[dep].Condition, d.Condition)
			}
		}
		if mine.Deploy != nil && mine.Deploy.Replicas != nil && (svc.Deploy == nil || svc.Deploy.Replicas == nil || *svc.Deploy.Replicas != *mine.Deploy.Replicas) {
			t.Errorf("%s: compose does not see replicas %d", name, *mine.Deploy.Replicas)
		}
	}
}
