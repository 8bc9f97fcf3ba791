package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/cactus-comments/appservice/services/gateway/gateway"
)

// The alias floor: the same processes and hops as a first-visit alias
// query, doing nothing. The homeserver's GET goes to a relay standing in
// for the gateway, which checks the token and sends the alias as a NATS
// request through the same nats-server to a relay standing in for the
// provisioner, which POSTs a createRoom body of the real size to an
// endpoint that answers at once, and replies. No registry, no event
// ingest, no JSON decoding: what the alias benchmark measures over it is
// our work and what it sets off.

const (
	// floorSubject is the relays' request subject, apart from the
	// provisioners' so neither path answers the other's queries.
	floorSubject = "gatewaybench.floor.alias"
	floorAnswer  = `{"exists":true}`
	roomsPrefix  = "/_matrix/app/v1/rooms/"
)

// relayGateway serves alias queries on listen until ctx ends or stdin
// closes, as the gateway's HTTP server is configured.
func relayGateway(ctx context.Context, listen, natsURL string) error {
	gateway.TuneGC() // the gateway's runtime settings
	nc, err := nats.Connect(natsURL, nats.Name("gatewaybench-relay-gateway"))
	if err != nil {
		return err
	}
	defer nc.Close()
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		alias, ok := strings.CutPrefix(r.URL.Path, roomsPrefix)
		if r.Method != http.MethodGet || !ok || alias == "" {
			http.NotFound(w, r)
			return
		}
		if r.Header.Get("Authorization") != "Bearer "+hsToken {
			http.Error(w, `{"errcode":"M_FORBIDDEN"}`, http.StatusForbidden)
			return
		}
		rctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
		defer cancel()
		msg, err := nc.RequestWithContext(rctx, floorSubject, []byte(alias))
		if err != nil || string(msg.Data) != floorAnswer {
			http.Error(w, `{"errcode":"M_UNKNOWN"}`, http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte("{}"))
	})
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 120 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	fmt.Println("READY")
	err = untilStopped(ctx, errc)
	_ = srv.Close()
	return err
}

// relayProvisioner answers the relay gateway's requests, one goroutine per
// request as the provisioner does: it POSTs body to createURL and replies
// once the answer is in.
func relayProvisioner(ctx context.Context, natsURL, createURL, bodyFile string) error {
	body, err := os.ReadFile(bodyFile)
	if err != nil {
		return err
	}
	nc, err := nats.Connect(natsURL, nats.Name("gatewaybench-relay-provisioner"))
	if err != nil {
		return err
	}
	defer nc.Close()
	// The homeserver client's transport settings (pkg/matrix): keep-alive,
	// many idle connections to the one host.
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConns, t.MaxIdleConnsPerHost, t.IdleConnTimeout = 256, 128, 90*time.Second
	hc := &http.Client{Transport: t}
	create := func(m *nats.Msg) error {
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		req, err := http.NewRequestWithContext(rctx, http.MethodPost, createURL, bytes.NewReader(body))
		if err != nil {
			return err
		}
		req.Header.Set("Authorization", "Bearer "+asToken)
		req.Header.Set("Content-Type", "application/json")
		resp, err := hc.Do(req)
		if err != nil {
			return err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("createRoom: HTTP %d", resp.StatusCode)
		}
		return m.Respond([]byte(floorAnswer))
	}
	sub, err := nc.QueueSubscribe(floorSubject, "gatewaybench-floor", func(m *nats.Msg) {
		go func() {
			if err := create(m); err != nil {
				// Unanswered: the relay gateway answers 503 and the run stops.
				fmt.Fprintln(os.Stderr, "gatewaybench relay-provisioner:", err)
			}
		}()
	})
	if err != nil {
		return err
	}
	defer sub.Unsubscribe()
	if err := nc.Flush(); err != nil {
		return err
	}
	fmt.Println("READY")
	return untilStopped(ctx, nil)
}

// untilStopped waits until ctx ends or the parent closes our stdin, or
// for an error on errc.
func untilStopped(ctx context.Context, errc <-chan error) error {
	closed := make(chan struct{})
	go func() {
		_, _ = bufio.NewReader(os.Stdin).ReadString('\n')
		close(closed)
	}()
	select {
	case <-ctx.Done():
	case <-closed:
	case err := <-errc:
		if !errors.Is(err, http.ErrServerClosed) {
			return err
		}
	}
	return nil
}

// startRelays starts the floor's relays: the provisioner's, which sends
// body to createURL, and the gateway's, whose URL it returns.
func startRelays(b *binaries, natsURL, createURL string, body []byte) (url string, gw, pr *proc, err error) {
	bodyFile := filepath.Join(b.dir, "createroom.json")
	if err := os.WriteFile(bodyFile, body, 0o600); err != nil {
		return "", nil, nil, err
	}
	port, err := freePort()
	if err != nil {
		return "", nil, nil, err
	}
	listen := "127.0.0.1:" + strconv.Itoa(port)
	if pr, err = startRelay(b, "relay-provisioner", "-nats", natsURL, "-url", createURL, "-body", bodyFile); err != nil {
		return "", nil, nil, err
	}
	gw, err = startRelay(b, "relay-gateway", "-listen", listen, "-nats", natsURL)
	return "http://" + listen, gw, pr, err
}

// startRelay runs this binary as the named relay and waits for its READY.
func startRelay(b *binaries, name string, args ...string) (*proc, error) {
	p, err := start(name, b.self, append([]string{"-child", name}, args...), nil, true)
	if err != nil {
		return nil, err
	}
	if _, err := p.readLine("READY"); err != nil {
		p.stop()
		return nil, err
	}
	return p, nil
}
