// Package hssim is an in-memory Matrix homeserver simulator for tests, the
// dev runner and load tools. It implements the parts of the client-server
// API and the appservice API an appservice meets, and behaves like Synapse,
// Dendrite or continuwuity (Conduit) where they differ: the facts are in
// shared/spec/appservice-api.md, and where the simulator and a fact there
// disagree the simulator is wrong.
//
// All state sits behind one mutex; nothing that talks HTTP to an appservice
// holds it.
package hssim

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/go-json-experiment/json/jsontext"

	"github.com/cactus-comments/appservice/pkg/registration"
)

// Mode selects which homeserver the simulator imitates.
type Mode string

// The homeservers the simulator can imitate.
const (
	Synapse  Mode = "synapse"
	Dendrite Mode = "dendrite"
	Conduit  Mode = "conduit"
)

// ParseMode validates a mode name.
func ParseMode(s string) (Mode, error) {
	switch m := Mode(strings.ToLower(s)); m {
	case Synapse, Dendrite, Conduit:
		return m, nil
	case "continuwuity", "conduwuit":
		return Conduit, nil
	}
	return "", fmt.Errorf("unknown homeserver mode %q (want synapse, dendrite or conduit)", s)
}

// RateLimit configures request rate limiting of users and rate-limited
// appservices. A zero PerSecond disables it.
type RateLimit struct {
	PerSecond float64
	Burst     int
}

// Options configures a Server. Zero values take the documented defaults.
type Options struct {
	ServerName string // default "localhost"
	Mode       Mode   // default Synapse
	Addr       string // default "127.0.0.1:0"
	// TimeUnit is the pusher's backoff unit: Synapse waits 2^n units,
	// Dendrite 2^n capped at 64 units, Conduit 10×n units. Default 1s;
	// tests use about a millisecond.
	TimeUnit time.Duration
	// PushTimeout bounds a transaction push until response headers arrive.
	// Default per mode: 60s Synapse, 30s Dendrite, 35s Conduit.
	PushTimeout time.Duration
	// QueryTimeout bounds user and alias queries and pings. Default per
	// mode: 60s Synapse, 30s Dendrite, 35s Conduit.
	QueryTimeout time.Duration
	// TxnWindow is how long a client transaction id is remembered for send
	// deduplication. Default 30 minutes (Synapse keeps them 30 to 60).
	TxnWindow time.Duration
	// RoomVersion of rooms whose createRoom names none. Default per mode:
	// "10" for Synapse and Dendrite, "12" for Conduit (continuwuity). One
	// of SupportedRoomVersions.
	RoomVersion string
	// V12CreateCollisions imitates Synapse up to 1.157.1 (Synapse mode
	// only): a v12 room's id is the hash of its create event, so two
	// createRoom calls by the same user at once compute the same id, and
	// the one that commits second answers 500 having created nothing. Here
	// a v12 createRoom fails so while another by the same user has
	// committed but not yet been answered (see SetLatency).
	V12CreateCollisions bool
	Registrations       []*registration.Registration
	RateLimit           RateLimit
	Logger              *slog.Logger
}

// Server is a running simulator.
type Server struct {
	opts   Options
	log    *slog.Logger
	ln     net.Listener
	http   *http.Server
	client *http.Client // to appservices
	url    string
	routes []route

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu         sync.Mutex
	users      map[string]*user
	sessions   map[string]*session // by access token
	apps       []*appservice
	rooms      map[string]*room
	roomOrder  []string
	aliases    map[string]aliasEntry
	txnCache   map[txnKey]txnEntry
	txnOrder   []txnKey // keys of txnCache, oldest first
	calls      map[string]int
	latency    map[string]time.Duration
	faults     []*faultState
	buckets    map[string]*bucket
	rateLimit  RateLimit
	txnLog     []TxnRecord
	delivered  map[string]bool     // event id -> acknowledged by some appservice
	remoteKeys map[string][]topKey // event id -> top-level keys of a remote event (Synapse mode)
	sendTxns   map[string]string   // event id -> client transaction id of the /send that made it
	// remoteUnsigned: event id -> the unsigned data of a remote event that
	// Synapse keeps (Synapse mode).
	remoteUnsigned map[string]jsontext.Value
	changed        chan struct{} // closed and replaced whenever txnLog or delivered change
	notifyQ        []notifyItem  // events awaiting the notifier (interest + user queries)
	notifyWake     chan struct{}
	notifying      bool           // the notifier holds an item outside notifyQ
	creating       map[string]int // user -> v12 createRooms committed, not yet answered
	// roomVersion is the default of new rooms (Options.RoomVersion until
	// SetRoomVersion changes it).
	roomVersion string
	nextTxn     int64
	guestSeq    int
	rng         *mrand.Rand
	closed      bool
}

// Start listens on opts.Addr and serves until Close or ctx ends.
func Start(ctx context.Context, opts Options) (*Server, error) {
	if opts.ServerName == "" {
		opts.ServerName = "localhost"
	}
	if opts.Mode == "" {
		opts.Mode = Synapse
	}
	mode, err := ParseMode(string(opts.Mode))
	if err != nil {
		return nil, err
	}
	opts.Mode = mode
	if opts.Addr == "" {
		opts.Addr = "127.0.0.1:0"
	}
	if opts.TimeUnit <= 0 {
		opts.TimeUnit = time.Second
	}
	def := map[Mode]time.Duration{Synapse: 60 * time.Second, Dendrite: 30 * time.Second, Conduit: 35 * time.Second}[mode]
	if opts.PushTimeout <= 0 {
		opts.PushTimeout = def
	}
	if opts.QueryTimeout <= 0 {
		opts.QueryTimeout = def
	}
	if opts.TxnWindow <= 0 {
		opts.TxnWindow = 30 * time.Minute
	}
	if opts.RoomVersion == "" {
		opts.RoomVersion = DefaultRoomVersion(mode)
	}
	if err := CheckRoomVersion(opts.RoomVersion); err != nil {
		return nil, fmt.Errorf("hssim: %w", err)
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	s := &Server{
		opts:           opts,
		roomVersion:    opts.RoomVersion,
		log:            opts.Logger.With("component", "hssim", "mode", string(mode)),
		users:          map[string]*user{},
		sessions:       map[string]*session{},
		rooms:          map[string]*room{},
		aliases:        map[string]aliasEntry{},
		txnCache:       map[txnKey]txnEntry{},
		calls:          map[string]int{},
		latency:        map[string]time.Duration{},
		creating:       map[string]int{},
		buckets:        map[string]*bucket{},
		rateLimit:      opts.RateLimit,
		delivered:      map[string]bool{},
		remoteKeys:     map[string][]topKey{},
		sendTxns:       map[string]string{},
		remoteUnsigned: map[string]jsontext.Value{},
		changed:        make(chan struct{}),
		notifyWake:     make(chan struct{}, 1),
		rng:            mrand.New(mrand.NewPCG(uint64(time.Now().UnixNano()), 0x9e3779b97f4a7c15)),
		nextTxn:        int64(1 + time.Now().Unix()%1000),
	}
	if err := s.addAppservices(opts.Registrations); err != nil {
		return nil, err
	}
	s.routes = s.buildRoutes()
	ln, err := net.Listen("tcp", opts.Addr)
	if err != nil {
		return nil, fmt.Errorf("hssim listen %s: %w", opts.Addr, err)
	}
	s.ln = ln
	s.url = "http://" + ln.Addr().String()
	s.client = &http.Client{Transport: &http.Transport{
		// Timeouts come from each call's context: pushes and queries have
		// their own limits.
		Proxy:               nil,
		DisableKeepAlives:   mode == Dendrite, // Dendrite pushes without keep-alive
		MaxIdleConnsPerHost: 4,
	}}
	s.ctx, s.cancel = context.WithCancel(context.WithoutCancel(ctx))
	s.http = &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second, BaseContext: func(net.Listener) context.Context { return s.ctx }}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if err := s.http.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("serve", "err", err)
		}
	}()
	s.wg.Add(1)
	go func() { defer s.wg.Done(); s.notifier() }()
	for _, as := range s.apps {
		s.wg.Add(1)
		go func() { defer s.wg.Done(); s.pushLoop(as) }()
	}
	go func() {
		select {
		case <-ctx.Done():
			_ = s.Close()
		case <-s.ctx.Done():
		}
	}()
	s.log.Info("homeserver simulator listening", "url", s.url, "server_name", opts.ServerName)
	return s, nil
}

// URL is the base URL clients and appservices use, without trailing slash.
func (s *Server) URL() string { return s.url }

// ServerName is the Matrix server name of local users, rooms and aliases.
func (s *Server) ServerName() string { return s.opts.ServerName }

// Mode is the homeserver being imitated.
func (s *Server) Mode() Mode { return s.opts.Mode }

// RoomVersion is the version of new rooms whose createRoom names none.
func (s *Server) RoomVersion() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.roomVersion
}

// SetRoomVersion changes the version of new rooms whose createRoom names
// none, as an operator does by changing default_room_version and
// restarting the homeserver: existing rooms keep theirs, GET /capabilities
// announces the new default.
func (s *Server) SetRoomVersion(v string) error {
	if err := CheckRoomVersion(v); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.roomVersion = v
	return nil
}

// Close stops the pusher and the HTTP server and waits for both.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	s.cancel()
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := s.http.Shutdown(sctx)
	if err != nil {
		_ = s.http.Close()
	}
	s.wg.Wait()
	s.client.CloseIdleConnections()
	if err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("hssim shutdown: %w", err)
	}
	return nil
}

// signalLocked wakes everything waiting for a change (WaitDelivered).
func (s *Server) signalLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

func randomString(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)[:n]
}

func randomLetters(n int) string {
	const letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
	b := make([]byte, n)
	_, _ = rand.Read(b)
	for i := range b {
		b[i] = letters[int(b[i])%len(letters)]
	}
	return string(b)
}

func (s *Server) newEventID() string { return "$" + randomString(43) }
func (s *Server) newRoomID() string  { return "!" + randomLetters(18) + ":" + s.opts.ServerName }
func newToken() string               { return "syt_" + randomString(40) }
