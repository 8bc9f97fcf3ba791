package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/cactus-comments/appservice/pkg/bus"
	"github.com/cactus-comments/appservice/pkg/dlq"
)

func cmdDLQ(ctx context.Context, e *env, args []string) error {
	verb, rest, err := subcommand(args, "list", "replay", "drop")
	if err != nil || verb == "help" {
		fmt.Fprintln(e.stderr, "usage: cactusctl dlq list [-json] [-consumer NAME]\n       cactusctl dlq replay [-all [-consumer NAME] | SEQ...]\n       cactusctl dlq drop SEQ...")
		if err != nil {
			return err
		}
		return nil
	}
	switch verb {
	case "list":
		return dlqList(ctx, e, rest)
	case "replay":
		return dlqReplay(ctx, e, rest)
	default:
		return dlqDrop(ctx, e, rest)
	}
}

// deadLetter is one stored dead letter as the CLI shows it.
type deadLetter struct {
	Seq       uint64          `json:"seq"`
	Time      time.Time       `json:"time"`
	Subject   string          `json:"subject"` // to replay to
	Consumer  string          `json:"consumer"`
	Stream    string          `json:"stream,omitempty"`
	Reason    string          `json:"reason"`
	Delivered int             `json:"deliveries"`
	EventType string          `json:"event_type,omitempty"`
	Data      json.RawMessage `json:"data,omitempty"`
	Raw       string          `json:"data_text,omitempty"` // when the payload is not JSON
	header    nats.Header
	payload   []byte
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
	if json.Valid(m.Data) {
		d.Data = m.Data
	} else {
		d.Raw = string(m.Data)
	}
	return d
}

// dlqStream binds to the dead-letter stream.
func dlqStream(ctx context.Context, js jetstream.JetStream) (jetstream.Stream, error) {
	s, err := js.Stream(ctx, bus.StreamDLQ)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, fmt.Errorf("stream %s does not exist (has a service created the topology yet?)", bus.StreamDLQ)
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

func dlqList(ctx context.Context, e *env, args []string) error {
	f := newFlags(e, "dlq list", "[flags]", "Lists dead letters: messages a worker gave up on, with the reason.")
	var cf cfgFlags
	cf.register(f)
	asJSON := f.Bool("json", false, "print JSON (with the payload) instead of a table")
	consumer := f.String("consumer", "", "only dead letters from this consumer (e.g. botworker)")
	if err := parse(f, args); err != nil {
		return err
	}
	if f.NArg() > 0 {
		return usagef("unexpected arguments %q", f.Args())
	}
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
	var dls []deadLetter
	for _, d := range all {
		if *consumer == "" || d.Consumer == *consumer {
			dls = append(dls, d)
		}
	}
	if *asJSON {
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

// replay sends one dead letter back through the path for its source (see
// package dlq) and deletes it only once that is acknowledged.
func replay(ctx context.Context, js jetstream.JetStream, s jetstream.Stream, d deadLetter) (string, error) {
	return dlq.Replay(ctx, js, s, dlq.Letter{Seq: d.Seq, Header: d.header, Data: d.payload})
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
			if consumer == "" || d.Consumer == consumer {
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

func parseSeqs(args []string) error {
	for _, a := range args {
		if n, err := strconv.ParseUint(a, 10, 64); err != nil || n == 0 {
			return usagef("%q is not a dead letter sequence number", a)
		}
	}
	return nil
}

func dlqReplay(ctx context.Context, e *env, args []string) error {
	f := newFlags(e, "dlq replay", "[-all [-consumer NAME] | SEQ...]",
		"Sends dead letters back through the path that would have handled them (a worker's: the subject\n"+
			"they failed on, as a forced full re-run), and deletes each one only after that is acknowledged.")
	var cf cfgFlags
	cf.register(f)
	all := f.Bool("all", false, "replay every dead letter")
	consumer := f.String("consumer", "", "with -all: only dead letters from this consumer")
	if err := parse(f, args); err != nil {
		return err
	}
	if *all == (f.NArg() > 0) {
		return usagef("give either -all or sequence numbers (see cactusctl dlq list)")
	}
	if *consumer != "" && !*all {
		return usagef("-consumer needs -all")
	}
	if err := parseSeqs(f.Args()); err != nil {
		return err
	}
	nc, js, err := cf.connectNATS(ctx, e)
	if err != nil {
		return err
	}
	defer nc.Close()
	s, err := dlqStream(ctx, js)
	if err != nil {
		return err
	}
	dls, missing, err := selectDeadLetters(ctx, s, *all, *consumer, f.Args())
	if err != nil {
		return err
	}
	failed, replayed := len(missing), 0
	for _, m := range missing {
		fmt.Fprintf(e.stderr, "%v\n", m)
	}
	for _, d := range dls {
		to, err := replay(ctx, js, s, d)
		if err != nil {
			failed++
			fmt.Fprintf(e.stderr, "dead letter %d: %v\n", d.Seq, err)
			continue
		}
		replayed++
		fmt.Fprintf(e.stdout, "replayed %d to %s\n", d.Seq, to)
	}
	fmt.Fprintf(e.stdout, "%d replayed, %d failed\n", replayed, failed)
	if failed > 0 {
		return errSilent
	}
	return nil
}

func dlqDrop(ctx context.Context, e *env, args []string) error {
	f := newFlags(e, "dlq drop", "SEQ...", "Deletes dead letters for good, without replaying them.")
	var cf cfgFlags
	cf.register(f)
	if err := parse(f, args); err != nil {
		return err
	}
	if f.NArg() == 0 {
		return usagef("give the sequence numbers to drop (see cactusctl dlq list)")
	}
	if err := parseSeqs(f.Args()); err != nil {
		return err
	}
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
	for _, a := range f.Args() {
		seq, _ := strconv.ParseUint(a, 10, 64)
		if err := s.DeleteMsg(ctx, seq); err != nil {
			failed++
			fmt.Fprintf(e.stderr, "dead letter %d: %v\n", seq, err)
			continue
		}
		fmt.Fprintf(e.stdout, "dropped %d\n", seq)
	}
	if failed > 0 {
		return errSilent
	}
	return nil
}
