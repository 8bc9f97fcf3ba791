package bus

import (
	"context"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
)

// ConnOptions says how to reach and authenticate to NATS.
type ConnOptions struct {
	URL      string
	Name     string // client name shown in NATS monitoring
	Creds    string // credentials file (JWT + nkey)
	NKeySeed string // nkey seed file
	User     string
	Password string
	Token    string
	CA       string
	Cert     string
	Key      string
	// InboxPrefix replaces _INBOX for the connection's reply subjects (see
	// Identity.InboxPrefix).
	InboxPrefix string
	// Once makes Connect fail at the first failed attempt instead of
	// retrying until its context ends: for tools at a terminal.
	Once bool
}

// Connect dials NATS and keeps reconnecting forever, logging every
// disconnect and reconnect. It fails only if the first connection cannot be
// made before ctx ends.
func Connect(ctx context.Context, o ConnOptions, log *slog.Logger) (*nats.Conn, error) {
	opts := []nats.Option{
		nats.Name(o.Name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.ReconnectJitter(100*time.Millisecond, time.Second),
		nats.RetryOnFailedConnect(false),
		// Publishes while disconnected fail at once instead of waiting in
		// a buffer: the gateway has then already answered 503 and the
		// homeserver will resend, and workers' acks are redelivered
		// anyway. Nothing is lost; nothing is sent behind a caller's back.
		nats.ReconnectBufSize(-1),
		nats.Timeout(5 * time.Second),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				log.Warn("nats disconnected", "err", err)
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			log.Info("nats reconnected", "url", nc.ConnectedUrlRedacted())
		}),
		nats.ErrorHandler(func(_ *nats.Conn, s *nats.Subscription, err error) {
			subj := ""
			if s != nil {
				subj = s.Subject
			}
			log.Error("nats async error", "subject", subj, "err", err)
		}),
	}
	if o.InboxPrefix != "" {
		opts = append(opts, nats.CustomInboxPrefix(o.InboxPrefix))
	}
	if o.Creds != "" {
		opts = append(opts, nats.UserCredentials(o.Creds))
	}
	if o.NKeySeed != "" {
		opt, err := nats.NkeyOptionFromSeed(o.NKeySeed)
		if err != nil {
			return nil, fmt.Errorf("nats nkey seed file: %w", err)
		}
		opts = append(opts, opt)
	}
	if o.User != "" {
		opts = append(opts, nats.UserInfo(o.User, o.Password))
	}
	if o.Token != "" {
		opts = append(opts, nats.Token(o.Token))
	}
	if o.CA != "" {
		opts = append(opts, nats.RootCAs(o.CA))
	}
	if o.Cert != "" {
		opts = append(opts, nats.ClientCert(o.Cert, o.Key))
	}
	// Retry the first connection until ctx ends: in Kubernetes NATS may
	// start after us.
	delay := 100 * time.Millisecond
	for {
		nc, err := nats.Connect(o.URL, opts...)
		if err == nil {
			log.Info("nats connected", "url", nc.ConnectedUrlRedacted())
			return nc, nil
		}
		if o.Once {
			return nil, fmt.Errorf("cannot reach NATS at %s: %w", redactURLs(o.URL), err)
		}
		log.Warn("nats connect failed, retrying", "err", err, "in", delay)
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("connect to nats: %w (last error: %v)", ctx.Err(), err)
		case <-time.After(delay):
		}
		delay = min(delay*2, 5*time.Second)
	}
}

// redactURLs is a comma-separated list of NATS URLs with any password or
// token in them masked.
func redactURLs(list string) string {
	parts := strings.Split(list, ",")
	for i, p := range parts {
		p = strings.TrimSpace(p)
		if u, err := url.Parse(p); err == nil && u.User != nil {
			if _, hasPW := u.User.Password(); !hasPW {
				u.User = url.User("xxxxx") // a token alone
			}
			p = u.Redacted()
		}
		parts[i] = p
	}
	return strings.Join(parts, ",")
}
