// Package embednats runs the real NATS server with JetStream inside the
// process, for the dev runner and tests.
package embednats

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Options for Start.
type Options struct {
	// Dir is the JetStream storage directory. Empty: a temporary directory
	// that Shutdown removes.
	Dir string
	// Host defaults to 127.0.0.1; Port 0 picks a free port (-1 in nats
	// terms).
	Host string
	Port int
	// MonitorPort > 0 enables the HTTP monitoring endpoint.
	MonitorPort int
	// Config is nats-server configuration text (accounts and users, as
	// natsconf renders them), applied first; the fields above win.
	Config string
}

// Server is a running embedded NATS server.
type Server struct {
	*server.Server
	tmp  string
	opts Options // as started, with the port actually bound
}

// Start starts a server and waits until it accepts connections.
func Start(o Options) (*Server, error) {
	s := &Server{}
	dir := o.Dir
	if dir == "" {
		tmp, err := os.MkdirTemp("", "cactus-nats-*")
		if err != nil {
			return nil, fmt.Errorf("embedded nats: %w", err)
		}
		dir, s.tmp = tmp, tmp
	}
	host := o.Host
	if host == "" {
		host = "127.0.0.1"
	}
	port := o.Port
	if port == 0 {
		port = server.RANDOM_PORT
	}
	opts := &server.Options{}
	if o.Config != "" {
		if err := opts.ProcessConfigString(o.Config); err != nil {
			s.cleanup()
			return nil, fmt.Errorf("embedded nats: configuration: %w", err)
		}
	}
	opts.ServerName = "cactus-embedded"
	opts.Host, opts.Port = host, port
	opts.JetStream, opts.StoreDir = true, dir
	opts.NoSigs, opts.NoLog = true, true
	// Matrix events are at most 64 KiB; dead letters carry one event and
	// headers.
	opts.MaxPayload = 4 << 20
	if o.MonitorPort > 0 {
		opts.HTTPHost = host
		opts.HTTPPort = o.MonitorPort
	}
	ns, err := server.NewServer(opts)
	if err != nil {
		s.cleanup()
		return nil, fmt.Errorf("embedded nats: %w", err)
	}
	ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		ns.Shutdown()
		s.cleanup()
		return nil, errors.New("embedded nats: not ready for connections after 10s")
	}
	s.Server = ns
	s.opts = Options{Dir: dir, Host: host, Port: ns.Addr().(*net.TCPAddr).Port, MonitorPort: o.MonitorPort, Config: o.Config}
	return s, nil
}

// Shutdown stops the server and removes a temporary store.
func (s *Server) Shutdown() {
	s.Server.Shutdown()
	s.Server.WaitForShutdown()
	s.cleanup()
}

func (s *Server) cleanup() {
	if s.tmp != "" {
		_ = os.RemoveAll(s.tmp)
	}
}

// StartTest starts a server for one test, in t's temp dir, stopped at the
// end of the test.
func StartTest(tb testing.TB) *Server {
	tb.Helper()
	s, err := Start(Options{Dir: tb.TempDir()})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(s.Shutdown)
	return s
}

// Stop stops the server but keeps its store, for outage tests; Restart
// brings it back.
func (s *Server) Stop() {
	s.Server.Shutdown()
	s.Server.WaitForShutdown()
}

// Restart stops s and starts a new server on the same port and store, as a
// NATS outage and recovery. The returned server replaces s.
// A temporary store passes to the new server, which removes it on
// Shutdown; s no longer does.
func (s *Server) Restart() (*Server, error) {
	s.Server.Shutdown()
	s.Server.WaitForShutdown()
	n, err := Start(s.opts)
	if err != nil {
		return nil, err
	}
	n.tmp, s.tmp = s.tmp, ""
	return n, nil
}

// JetStreamTest starts a server for one test and connects to it. The
// connection and the server are closed at the end of the test.
func JetStreamTest(tb testing.TB) (*Server, *nats.Conn, jetstream.JetStream) {
	tb.Helper()
	s := StartTest(tb)
	nc, err := nats.Connect(s.ClientURL())
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		tb.Fatal(err)
	}
	return s, nc, js
}

// Cluster is a JetStream cluster of embedded servers, for tests of what
// only replicated (R3) streams and buckets do: other error codes for a
// failed compare-and-set, followers answering direct gets.
type Cluster struct {
	Servers []*Server
}

// StartCluster starts n clustered servers (each with its own store under
// tb's temp dir), waits until JetStream has a meta leader, and stops them
// at the end of the test.
func StartCluster(tb testing.TB, n int) *Cluster {
	tb.Helper()
	ports := make([]int, n)
	for i := range ports {
		// The route ports must be known before any server starts, so that
		// each can name the others: outside the ephemeral range, where an
		// earlier node's client port (:0) could take a later node's.
		p, err := StablePort("127.0.0.1")
		if err != nil {
			tb.Fatal(err)
		}
		ports[i] = p
	}
	var routes []*url.URL
	for _, p := range ports {
		routes = append(routes, &url.URL{Scheme: "nats-route", Host: net.JoinHostPort("127.0.0.1", strconv.Itoa(p))})
	}
	c := &Cluster{}
	for i := range n {
		opts := &server.Options{
			ServerName: fmt.Sprintf("cactus-node-%d", i),
			Host:       "127.0.0.1",
			Port:       server.RANDOM_PORT,
			JetStream:  true,
			StoreDir:   tb.TempDir(),
			NoSigs:     true,
			NoLog:      true,
			MaxPayload: 4 << 20,
			Cluster:    server.ClusterOpts{Name: "cactus-test", Host: "127.0.0.1", Port: ports[i]},
			Routes:     routes,
		}
		ns, err := server.NewServer(opts)
		if err != nil {
			tb.Fatalf("embedded nats cluster node %d: %v", i, err)
		}
		ns.Start()
		s := &Server{Server: ns}
		tb.Cleanup(s.Shutdown)
		// Generous: a node of a forming cluster on a loaded machine
		// (race detector, other suites) can take well over 10 s.
		if !ns.ReadyForConnections(time.Minute) {
			tb.Fatalf("embedded nats cluster node %d: not ready for connections after a minute", i)
		}
		c.Servers = append(c.Servers, s)
	}
	nc, err := nats.Connect(c.ClientURLs())
	if err != nil {
		tb.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		tb.Fatal(err)
	}
	// JetStream answers only once the servers have found each other and
	// elected a meta leader.
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := js.AccountInfo(ctx)
		cancel()
		if err == nil {
			return c
		}
		if time.Now().After(deadline) {
			tb.Fatalf("embedded nats cluster: JetStream not ready after 30s: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// ClientURLs is every node's client URL, comma separated, as NATS clients
// take a cluster.
func (c *Cluster) ClientURLs() string {
	urls := make([]string, len(c.Servers))
	for i, s := range c.Servers {
		urls[i] = s.ClientURL()
	}
	return strings.Join(urls, ",")
}
