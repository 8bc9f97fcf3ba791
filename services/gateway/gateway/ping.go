package gateway

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"time"

	"github.com/cactus-comments/appservice/pkg/matrix"
)

// maxPingBody bounds a ping body, which is at most a transaction id.
const maxPingBody = 64 << 10

// ping handles POST /ping. The homeserver sends it when someone (our own
// startup check, or an operator) calls the client-server ping endpoint.
func (g *Gateway) ping(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, maxPingBody+1))
	switch {
	case err != nil:
		writeError(w, http.StatusBadRequest, codeNotJSON, "could not read the body")
		return
	case len(body) > maxPingBody:
		writeError(w, http.StatusRequestEntityTooLarge, codeTooLarge, "ping body too large")
		return
	}
	var txnID string
	if b := bytes.TrimSpace(body); len(b) > 0 {
		if !json.Valid(b) {
			writeError(w, http.StatusBadRequest, codeNotJSON, "ping body is not JSON")
			return
		}
		switch b[0] {
		case 'n': // null
		case '{':
			var p struct {
				TransactionID *string `json:"transaction_id"`
			}
			if err := json.Unmarshal(b, &p); err != nil {
				writeError(w, http.StatusBadRequest, codeBadJSON, "transaction_id must be a string")
				return
			}
			if p.TransactionID != nil {
				txnID = *p.TransactionID
			}
		default:
			writeError(w, http.StatusBadRequest, codeBadJSON, "ping body must be an object or null")
			return
		}
	}
	g.metrics.pings.Inc()
	g.log.Info("ping from the homeserver", "txn_id", logID(txnID))
	writeJSON(w, http.StatusOK, emptyObject)
}

// Startup ping results, label values of the startup_ping gauge. Exactly
// one is 1: the current state.
const (
	pingPending        = "pending"         // the first attempt has not finished
	pingOK             = "ok"              // the homeserver reached us
	pingUnsupported    = "unsupported"     // the homeserver has no ping endpoint (Dendrite, older servers)
	pingUnreachable    = "unreachable"     // the homeserver cannot reach us (url, network, hs_token)
	pingHomeserverDown = "homeserver_down" // we cannot reach the homeserver, or it failed
	pingFailed         = "failed"          // the homeserver refused: configuration
	pingSkipped        = "skipped"         // CACTUS_APPSERVICE_ID not set
)

var pingResults = []string{pingPending, pingOK, pingUnsupported, pingUnreachable, pingHomeserverDown, pingFailed, pingSkipped}

// pingRetry bounds the startup ping's retries: the gateway usually starts
// before the homeserver (compose starts it first, a homeserver restart
// takes minutes), so a failed ping is tried again, with capped backoff,
// until it succeeds or gets an answer retrying cannot change.
type pingRetry struct {
	first, max time.Duration // backoff between attempts
	giveUp     time.Duration // no new attempt after this long
	attempt    time.Duration // bound of one attempt
}

var defaultPingRetry = pingRetry{first: time.Second, max: 5 * time.Minute, giveUp: 24 * time.Hour, attempt: 2 * time.Minute}

// PingHomeserver asks the homeserver to ping us through the client-server
// appservice ping, which proves that it can reach this gateway with our
// hs_token, and logs the verdict. It retries in the background of the
// caller (run it in its own goroutine) until the homeserver reaches us,
// says it has no ping endpoint (Dendrite: a warning, not a failure),
// refuses our appservice id, or a day has passed; the startup_ping gauge
// always shows the current state. It needs CACTUS_APPSERVICE_ID and must
// run while the gateway listens: the homeserver calls us back.
func (g *Gateway) PingHomeserver(ctx context.Context) {
	g.setPingResult(pingPending)
	r := g.pingRetry
	start := time.Now()
	delay := r.first
	for attempt := 1; ; attempt++ {
		actx, cancel := context.WithTimeout(ctx, r.attempt)
		result, final := g.pingOnce(actx, attempt)
		cancel()
		if ctx.Err() != nil {
			return // shutting down: the attempt was cut short, not answered
		}
		g.setPingResult(result)
		if final {
			return
		}
		if time.Since(start)+delay > r.giveUp {
			g.log.Error("startup ping: giving up; restart the gateway once the cause above is fixed", "attempts", attempt, "result", result)
			return
		}
		g.log.Info("startup ping: trying again", "in", delay, "attempt", attempt+1)
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
		delay = min(delay*2, r.max)
	}
}

func (g *Gateway) setPingResult(result string) {
	for _, r := range pingResults {
		v := 0.0
		if r == result {
			v = 1
		}
		g.metrics.homeserverPinged.WithLabelValues(r).Set(v)
	}
}

// pingOnce makes one attempt and classifies the answer; final means that
// trying again cannot change it.
func (g *Gateway) pingOnce(ctx context.Context, attempt int) (result string, final bool) {
	id := g.cfg.AppserviceID
	if id == "" {
		g.log.Info("startup ping skipped: set CACTUS_APPSERVICE_ID to the registration id to check that the homeserver reaches the gateway")
		return pingSkipped, true
	}
	client, err := matrix.NewClient(matrix.Config{
		HomeserverURL: g.cfg.HomeserverURL,
		Token:         g.cfg.ASToken.Reveal(),
		Logger:        g.log,
		MaxAttempts:   1, // PingHomeserver retries, with its own backoff
	})
	if err != nil {
		g.log.Error("startup ping: cannot build a homeserver client", "err", err)
		return pingFailed, true
	}
	var nonce [8]byte
	_, _ = rand.Read(nonce[:])
	txnID := "cactus-gateway-startup-" + hex.EncodeToString(nonce[:])
	log := g.log.With("appservice_id", id, "txn_id", txnID, "attempt", attempt)
	rtt, err := client.AppservicePing(ctx, id, txnID)
	if err == nil {
		log.Info("startup ping: the homeserver reaches the gateway", "round_trip", rtt)
		return pingOK, true
	}
	switch code, status := matrix.ErrCode(err), matrix.Status(err); {
	case code == matrix.CodeUnrecognized || (code == "" && status == http.StatusNotFound):
		log.Warn("startup ping: the homeserver has no appservice ping endpoint (Dendrite and older servers), so whether it reaches the gateway is unchecked", "err", err)
		return pingUnsupported, true
	case code == matrix.CodeURLNotSet:
		log.Warn("startup ping: the registration has no url, so the homeserver will never send us events", "err", err)
		return pingUnreachable, false
	case code == matrix.CodeBadStatus || code == matrix.CodeConnectionFailed || code == matrix.CodeConnectionTimeout:
		log.Warn("startup ping: the homeserver CANNOT reach the gateway: check the registration url and the hs_token", "err", err)
		return pingUnreachable, false
	case code == matrix.CodeUnknown && status == http.StatusInternalServerError:
		// continuwuity's answer to every failure calling us.
		log.Warn("startup ping: the homeserver could not ping the gateway: check the registration url and the hs_token, and the homeserver's log", "err", err)
		return pingUnreachable, false
	case code == matrix.CodeForbidden:
		log.Error("startup ping: refused; CACTUS_APPSERVICE_ID must be the id of the registration whose as_token we use", "err", err)
		return pingFailed, true
	case code == "" && (status == 0 || status >= 500 || status == http.StatusTooManyRequests):
		log.Warn("startup ping: the homeserver is not reachable or not answering yet", "err", err)
		return pingHomeserverDown, false
	default:
		// An unknown token (the homeserver has not loaded the registration
		// yet) and the like: a homeserver restart can fix these.
		log.Warn("startup ping failed", "err", err)
		return pingFailed, false
	}
}
