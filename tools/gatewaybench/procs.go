package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/cactus-comments/appservice/tools/gatewaybench/procstat"
)

// binaries are the production programs the benchmark runs, built once per
// run from this workspace: nats-server at the version go.mod requires, and
// our services.
type binaries struct {
	dir                                    string
	natsServer, gateway, provisioner, self string
}

// build compiles the binaries into a temporary directory.
func build(ctx context.Context) (*binaries, error) {
	root, err := workspaceRoot()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "gatewaybench-bin-*")
	if err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, "go", "build", "-o", dir+"/",
		"github.com/nats-io/nats-server/v2", "./services/gateway", "./services/provisioner")
	cmd.Dir = root
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		_ = os.RemoveAll(dir)
		return nil, fmt.Errorf("build: %w", err)
	}
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	return &binaries{
		dir:         dir,
		natsServer:  filepath.Join(dir, "nats-server"),
		gateway:     filepath.Join(dir, "gateway"),
		provisioner: filepath.Join(dir, "provisioner"),
		self:        self,
	}, nil
}

func (b *binaries) remove() { _ = os.RemoveAll(b.dir) }

// version asks a binary for its version line.
func version(bin string) string {
	out, err := exec.Command(bin, "--version").Output()
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(out))
}

func workspaceRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOWORK").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOWORK: %w", err)
	}
	w := strings.TrimSpace(string(out))
	if w == "" || w == "off" {
		return "", errors.New("run from inside the repository (no go.work found)")
	}
	return filepath.Dir(w), nil
}

// proc is a process of the benchmark.
type proc struct {
	name string
	cmd  *exec.Cmd
	out  *bufio.Reader // stdout, for processes that talk to us
	in   io.WriteCloser
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) sample() procstat.Sample {
	s, err := procstat.Read(p.pid())
	if err != nil {
		return procstat.Sample{}
	}
	return s
}

// start runs bin with args and env (added to ours). Its stderr goes to
// ours prefixed by nothing: our processes log only warnings.
func start(name, bin string, args, env []string, talk bool) (*proc, error) {
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stderr = os.Stderr
	p := &proc{name: name, cmd: cmd}
	if talk {
		out, err := cmd.StdoutPipe()
		if err != nil {
			return nil, err
		}
		in, err := cmd.StdinPipe()
		if err != nil {
			return nil, err
		}
		p.out, p.in = bufio.NewReaderSize(out, 1<<20), in
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	return p, nil
}

// stop ends the process with SIGTERM, then SIGKILL after 30 s.
func (p *proc) stop() {
	if p == nil {
		return
	}
	if p.in != nil {
		_ = p.in.Close()
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = p.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		_ = p.cmd.Process.Kill()
		<-done
	}
}

// readLine reads the next line the process prints that starts with
// prefix, skipping others.
func (p *proc) readLine(prefix string) (string, error) {
	for {
		line, err := p.out.ReadString('\n')
		if rest, ok := strings.CutPrefix(line, prefix); ok {
			return strings.TrimSpace(rest), nil
		}
		if err != nil {
			return "", fmt.Errorf("%s ended before saying %q: %w", p.name, prefix, err)
		}
	}
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// natsServer is nats-server in a process of its own, with file storage
// in a temporary directory, in its default configuration otherwise.
type natsServer struct {
	*proc
	url   string
	store string
}

func startNATS(b *binaries, extra ...string) (*natsServer, error) {
	return startNATSNamed(b, "nats-server", extra...)
}

func startNATSNamed(b *binaries, name string, extra ...string) (*natsServer, error) {
	store, err := os.MkdirTemp("", "gatewaybench-nats-*")
	if err != nil {
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	args := append([]string{"-a", "127.0.0.1", "-p", strconv.Itoa(port), "-js", "-sd", store, "-l", os.DevNull}, extra...)
	p, err := start(name, b.natsServer, args, nil, false)
	if err != nil {
		_ = os.RemoveAll(store)
		return nil, err
	}
	ns := &natsServer{proc: p, url: fmt.Sprintf("nats://127.0.0.1:%d", port), store: store}
	deadline := time.Now().Add(20 * time.Second)
	for {
		nc, err := nats.Connect(ns.url, nats.Timeout(time.Second))
		if err == nil {
			nc.Close()
			return ns, nil
		}
		if time.Now().After(deadline) {
			ns.stop()
			return nil, fmt.Errorf("nats-server not accepting connections: %w", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (ns *natsServer) stop() {
	if ns == nil {
		return
	}
	ns.proc.stop()
	_ = os.RemoveAll(ns.store)
}

// cluster is one nats-server, or several forming a JetStream cluster over
// loopback routes (production runs three).
type cluster struct {
	servers []*natsServer
	url     string // every server's client URL, comma separated
}

func startCluster(b *binaries, n int) (*cluster, error) {
	if n <= 1 {
		ns, err := startNATS(b)
		if err != nil {
			return nil, err
		}
		return &cluster{servers: []*natsServer{ns}, url: ns.url}, nil
	}
	ports := make([]int, n)
	var routes []string
	for i := range ports {
		p, err := freePort()
		if err != nil {
			return nil, err
		}
		ports[i] = p
		routes = append(routes, fmt.Sprintf("nats://127.0.0.1:%d", p))
	}
	c := &cluster{}
	var urls []string
	for i := range n {
		ns, err := startNATSNamed(b, fmt.Sprintf("nats-server-%d", i+1),
			"-n", fmt.Sprintf("bench-%d", i+1), "--cluster_name", "bench",
			"--cluster", fmt.Sprintf("nats://127.0.0.1:%d", ports[i]), "--routes", strings.Join(routes, ","))
		if err != nil {
			c.stop()
			return nil, err
		}
		c.servers = append(c.servers, ns)
		urls = append(urls, ns.url)
	}
	c.url = strings.Join(urls, ",")
	return c, nil
}

func (c *cluster) stop() {
	for _, ns := range c.servers {
		ns.stop()
	}
}

// sample adds up the servers' CPU and memory.
func (c *cluster) sample() procstat.Sample {
	var sum procstat.Sample
	for _, ns := range c.servers {
		s := ns.sample()
		sum.CPU += s.CPU
		sum.RSS += s.RSS
		sum.PeakRSS += s.PeakRSS
	}
	return sum
}

// connectJS connects to url with a JetStream context, for the benchmark's
// own set-up and measurements.
func connectJS(url, name string) (*nats.Conn, jetstream.JetStream, error) {
	nc, err := nats.Connect(url, nats.Name(name), nats.ReconnectBufSize(-1))
	if err != nil {
		return nil, nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, nil, err
	}
	return nc, js, nil
}
