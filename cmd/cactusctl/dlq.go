package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode/utf8"

	"github.com/go-json-experiment/json/jsontext"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/cactus-comments/appservice/pkg/bus"
	"github.com/cactus-comments/appservice/pkg/dlq"
	"github.com/cactus-comments/appservice/services/gateway/gateway"
)

// deadLetter is one stored dead letter as the CLI shows it.
type deadLetter struct {
	Seq       uint64    `json:"seq"`
	Time      time.Time `json:"time"`
	Subject   string    `json:"subject"` // to replay to
	Consumer  string    `json:"consumer"`
	Stream    string    `json:"stream,omitempty"`
	Reason    string    `json:"reason"`
	Delivered int       `json:"deliveries"`
	EventType string    `json:"event_type,omitempty"`
	// The payload is in exactly one of: Data when it is JSON (valid UTF-8,
	// no lone surrogate escapes), Raw when it is other valid UTF-8 text,
	// Bytes (base64 in JSON) otherwise, so the listing is always valid
	// JSON and loses nothing.
	Data    json.RawMessage `json:"data,omitempty"`
	Raw     string          `json:"data_text,omitempty"`
	Bytes   []byte          `json:"data_base64,omitempty"`
	header  nats.Header
	payload []byte
}

func toDeadLetter(m *jetstream.RawStreamMsg) deadLetter {
	h := m.Header
	d := deadLetter{
		Seq: m.Sequence, Time: m.Time.UTC(), Subject: h.Get(bus.HeaderSource), Consumer: h.Get(bus.HeaderConsumer),
		Stream: h.Get(bus.HeaderStream), Reason: h.Get(bus.HeaderReason), EventType: h.Get(bus.HeaderEventType),
		header: h, payload: m.Data,
	}
	d.Delivered, _ = strconv.Atoi(h.Get(bus.HeaderDelivered))
	if t, err := time.Parse(time.RFC3339Nano, h.Get(bus.HeaderFailedAt)); err == nil {
		d.Time = t.UTC()
	}
	switch {
	// Duplicate names are still JSON, and show what the sender sent.
	case jsontext.Value(m.Data).IsValid(jsontext.AllowDuplicateNames(true)) && !deeperThan(m.Data, maxListedDepth):
		d.Data = m.Data
	case utf8.Valid(m.Data):
		d.Raw = string(m.Data)
	default:
		d.Bytes = m.Data
	}
	return d
}

// maxListedDepth is the deepest nesting dlq list --json embeds as JSON:
// common readers give up far below the gateway's own limit (jq 1.6 at 256,
// Python's json module near 1000), so a deeper letter is listed as text.
const maxListedDepth = 64

// deeperThan reports whether the valid JSON v nests deeper than n.
func deeperThan(v []byte, n int) bool {
	dec := jsontext.NewDecoder(bytes.NewReader(v), jsontext.AllowDuplicateNames(true))
	for {
		if _, err := dec.ReadToken(); err != nil {
			return false
		}
		if dec.StackDepth() > n {
			return true
		}
	}
}

// dlqStream binds to the dead-letter stream.
func dlqStream(ctx context.Context, js jetstream.JetStream) (jetstream.Stream, error) {
	s, err := js.Stream(ctx, bus.StreamDLQ)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, fmt.Errorf("stream %s does not exist yet (cactusctl topology ensure, or a service with the right to, creates it)", bus.StreamDLQ)
	}
	return s, err
}

// readAll reads every stored dead letter in sequence order, in batches
// through an ordered (ephemeral, server-cleaned) consumer, so that a large
// backlog after an outage lists quickly.
func readAll(ctx context.Context, s jetstream.Stream) ([]deadLetter, error) {
	info, err := s.Info(ctx)
	if err != nil {
		return nil, err
	}
	if info.State.Msgs == 0 {
		return nil, nil
	}
	last := info.State.LastSeq
	cons, err := s.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverAllPolicy})
	if err != nil {
		return nil, fmt.Errorf("read dead letters: %w", err)
	}
	var out []deadLetter
	for {
		// Asking for exactly what is left lets the batch end as soon as it
		// is complete instead of at the wait limit.
		want := int(min(512, info.State.Msgs-uint64(len(out))))
		if want <= 0 {
			return out, nil
		}
		batch, err := cons.Fetch(want, jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			return nil, fmt.Errorf("read dead letters: %w", err)
		}
		n, done := 0, false
		for m := range batch.Messages() {
			md, err := m.Metadata()
			if err != nil {
				return nil, fmt.Errorf("read dead letters: %w", err)
			}
			n++
			if md.Sequence.Stream > last {
				done = true // stored after the listing began
				break
			}
			out = append(out, toDeadLetter(&jetstream.RawStreamMsg{
				Subject: m.Subject(), Sequence: md.Sequence.Stream, Header: m.Headers(), Data: m.Data(), Time: md.Timestamp,
			}))
			if md.Sequence.Stream == last || md.NumPending == 0 {
				done = true
			}
		}
		if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) {
			return nil, fmt.Errorf("read dead letters: %w", err)
		}
		if done || n == 0 {
			return out, nil
		}
	}
}

// fromConsumer reports whether a dead letter of consumer got matches the
// --consumer filter want: empty (all), the consumer's name, or the name of
// a partitioned group (botworker: every botworker-pNN).
func fromConsumer(got, want string) bool {
	if want == "" || got == want {
		return true
	}
	p, ok := strings.CutPrefix(got, want+"-p")
	if !ok || p == "" {
		return false
	}
	_, err := strconv.Atoi(p)
	return err == nil
}

// knownConsumer refuses a --consumer filter that names no consumer of the
// topology, no partitioned group and no consumer of a dead letter (an
// earlier version's): a typo would otherwise read as "no dead letters".
func knownConsumer(want string, dls []deadLetter) error {
	if want == "" {
		return nil
	}
	group := bus.Topology{}.BotGroup().Name
	known := []string{group}
	for _, cs := range (bus.Topology{}).Consumers() {
		if !fromConsumer(cs.Config.Durable, group) {
			known = append(known, cs.Config.Durable)
		}
	}
	for _, d := range dls {
		if d.Consumer != "" && !fromConsumer(d.Consumer, group) {
			known = append(known, d.Consumer)
		}
	}
	slices.Sort(known)
	known = slices.Compact(known)
	if slices.Contains(known, want) || fromConsumer(want, group) {
		return nil
	}
	return usagef("unknown consumer %q (known: %s; %s is every %s-pNN)", want, strings.Join(known, ", "), group, group)
}

// dlqList prints the dead letters, all or one consumer's.
func dlqList(ctx context.Context, e *env, cf *cfgFlags, asJSON bool, consumer string) error {
	nc, js, err := cf.connectNATS(ctx, e)
	if err != nil {
		return err
	}
	defer nc.Close()
	s, err := dlqStream(ctx, js)
	if err != nil {
		return err
	}
	all, err := readAll(ctx, s)
	if err != nil {
		return err
	}
	if err := knownConsumer(consumer, all); err != nil {
		return err
	}
	var dls []deadLetter
	for _, d := range all {
		if fromConsumer(d.Consumer, consumer) {
			dls = append(dls, d)
		}
	}
	if asJSON {
		if dls == nil {
			dls = []deadLetter{}
		}
		enc := json.NewEncoder(e.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(dls)
	}
	if len(dls) == 0 {
		fmt.Fprintln(e.stdout, "no dead letters")
		return nil
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SEQ\tTIME\tCONSUMER\tDELIVERIES\tSUBJECT\tREASON")
	for _, d := range dls {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%d\t%s\t%s\n", d.Seq, d.Time.Format(time.DateTime), orDash(d.Consumer), d.Delivered, orDash(d.Subject), oneLine(d.Reason, 120))
	}
	return tw.Flush()
}

func oneLine(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

// replayers are the ways back of the dead letters that do not go back to
// a worker's subject: the gateway's go through its own checks again
// (gateway.ReplayDeadLetter), which route by the bot's user id.
func replayers(bot string) dlq.Replayers {
	return dlq.Replayers{"gateway": func(ctx context.Context, js jetstream.JetStream, l dlq.Letter) (string, error) {
		if bot == "" {
			return "", fmt.Errorf("%w: CACTUS_USER_ID is needed to route the gateway's dead letters", dlq.ErrNotReplayable)
		}
		d := bus.DeadLetter{Source: l.Source(), Data: l.Data, Header: l.Header}
		d.Truncated, _ = strconv.Atoi(l.Header.Get(bus.HeaderTruncated))
		route, err := gateway.ReplayDeadLetter(ctx, js, bot, d)
		return route.Subject, err
	}}
}

// replay sends one dead letter back through the path for its source (see
// package dlq) and deletes it only once that is acknowledged.
func replay(ctx context.Context, js jetstream.JetStream, s jetstream.Stream, d deadLetter, rs dlq.Replayers) (string, error) {
	return rs.Replay(ctx, js, s, dlq.Letter{Seq: d.Seq, Header: d.header, Data: d.payload})
}

// selectDeadLetters resolves the -all flag or the sequence arguments.
func selectDeadLetters(ctx context.Context, s jetstream.Stream, all bool, consumer string, args []string) ([]deadLetter, []error, error) {
	if all {
		dls, err := readAll(ctx, s)
		if err != nil {
			return nil, nil, err
		}
		var out []deadLetter
		for _, d := range dls {
			if fromConsumer(d.Consumer, consumer) {
				out = append(out, d)
			}
		}
		return out, nil, nil
	}
	var out []deadLetter
	var missing []error
	for _, a := range args {
		seq, _ := strconv.ParseUint(a, 10, 64)
		m, err := s.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			missing = append(missing, fmt.Errorf("dead letter %d: not found (already replayed or dropped?)", seq))
			continue
		}
		if err != nil {
			return nil, nil, fmt.Errorf("read dead letter %d: %w", seq, err)
		}
		out = append(out, toDeadLetter(m))
	}
	return out, missing, nil
}

// dlqReplay replays every dead letter (all, optionally of one consumer)
// or the given sequence numbers, saying how far it is on stderr.
func dlqReplay(ctx context.Context, e *env, cf *cfgFlags, all bool, consumer string, args []string) error {
	cfg, err := cf.natsOnly(e)
	if err != nil {
		return err
	}
	nc, js, err := cf.connect(ctx, cfg)
	if err != nil {
		return err
	}
	defer nc.Close()
	s, err := dlqStream(ctx, js)
	if err != nil {
		return err
	}
	if all {
		fmt.Fprintf(e.stderr, "reading dead letters from %s\n", bus.StreamDLQ)
	}
	dls, missing, err := selectDeadLetters(ctx, s, all, consumer, args)
	if err != nil {
		return err
	}
	rs := replayers(cfg.UserID)
	failed, replayed := len(missing), 0
	for _, m := range missing {
		fmt.Fprintf(e.stderr, "%s\n", describe(m))
	}
	progress := newProgress(e.stderr, "replayed", len(dls))
	if all {
		fmt.Fprintf(e.stderr, "read %s; replaying %d\n", count(len(dls), "dead letter"), len(dls))
	}
	for _, d := range dls {
		subject, err := replay(ctx, js, s, d, rs)
		if err != nil {
			failed++
			fmt.Fprintf(e.stderr, "dead letter %d: %s\n", d.Seq, describe(err))
		} else {
			replayed++
			fmt.Fprintf(e.stdout, "replayed %d to %s\n", d.Seq, subject)
		}
		if all {
			progress.step()
		}
	}
	fmt.Fprintf(e.stdout, "%d replayed, %d failed\n", replayed, failed)
	if failed > 0 {
		return errSilent
	}
	return nil
}

// dlqDrop deletes dead letters without replaying them.
func dlqDrop(ctx context.Context, e *env, cf *cfgFlags, seqs []uint64) error {
	nc, js, err := cf.connectNATS(ctx, e)
	if err != nil {
		return err
	}
	defer nc.Close()
	s, err := dlqStream(ctx, js)
	if err != nil {
		return err
	}
	failed := 0
	for _, seq := range seqs {
		// Deleting a sequence the stream does not hold fails with a bare
		// store error: ask first, so the operator hears "not found".
		_, err := s.GetMsg(ctx, seq)
		if err == nil {
			err = s.DeleteMsg(ctx, seq)
		}
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			err = errors.New("not found (already replayed or dropped?)")
		}
		if err != nil {
			failed++
			fmt.Fprintf(e.stderr, "dead letter %d: %s\n", seq, describe(err))
			continue
		}
		fmt.Fprintf(e.stdout, "dropped %d\n", seq)
	}
	if failed > 0 {
		return errSilent
	}
	return nil
}
