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

// Startup ping results, label values of the startup_ping gauge.
const (
	pingOK          = "ok"
	pingUnsupported = "unsupported"
	pingUnreachable = "unreachable"
	pingFailed      = "failed"
	pingSkipped     = "skipped"
)

// PingHomeserver asks the homeserver to ping us through the client-server
// appservice ping, which proves that it can reach this gateway with our
// hs_token, and logs the verdict. A homeserver without the endpoint
// (Dendrite) gets a warning, not a failure. It needs CACTUS_APPSERVICE_ID
// and must run while the gateway listens: the homeserver calls us back.
func (g *Gateway) PingHomeserver(ctx context.Context) {
	result := g.pingHomeserver(ctx)
	for _, r := range []string{pingOK, pingUnsupported, pingUnreachable, pingFailed, pingSkipped} {
		v := 0.0
		if r == result {
			v = 1
		}
		g.metrics.homeserverPinged.WithLabelValues(r).Set(v)
	}
}

func (g *Gateway) pingHomeserver(ctx context.Context) string {
	id := g.cfg.AppserviceID
	if id == "" {
		g.log.Info("startup ping skipped: set CACTUS_APPSERVICE_ID to the registration id to check that the homeserver reaches the gateway")
		return pingSkipped
	}
	client, err := matrix.NewClient(matrix.Config{
		HomeserverURL: g.cfg.HomeserverURL,
		Token:         g.cfg.ASToken.Reveal(),
		Logger:        g.log,
	})
	if err != nil {
		g.log.Error("startup ping: cannot build a homeserver client", "err", err)
		return pingFailed
	}
	var nonce [8]byte
	_, _ = rand.Read(nonce[:])
	txnID := "cactus-gateway-startup-" + hex.EncodeToString(nonce[:])
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	log := g.log.With("appservice_id", id, "txn_id", txnID)
	rtt, err := client.AppservicePing(ctx, id, txnID)
	if err == nil {
		log.Info("startup ping: the homeserver reaches the gateway", "round_trip", rtt)
		return pingOK
	}
	switch code := matrix.ErrCode(err); {
	case code == matrix.CodeUnrecognized || (code == "" && matrix.Status(err) == http.StatusNotFound):
		log.Warn("startup ping: the homeserver has no appservice ping endpoint (Dendrite has none), so whether it reaches the gateway is unchecked", "err", err)
		return pingUnsupported
	case code == matrix.CodeURLNotSet:
		log.Error("startup ping: the registration has no url, so the homeserver will never send us events", "err", err)
		return pingUnreachable
	case code == matrix.CodeBadStatus || code == matrix.CodeConnectionFailed || code == matrix.CodeConnectionTimeout:
		log.Error("startup ping: the homeserver CANNOT reach the gateway: check the registration url and the hs_token", "err", err)
		return pingUnreachable
	case code == matrix.CodeForbidden:
		log.Error("startup ping: refused; CACTUS_APPSERVICE_ID must be the id of the registration whose as_token we use", "err", err)
		return pingFailed
	default:
		log.Error("startup ping failed", "err", err)
		return pingFailed
	}
}
