package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"
)

// progress prints "k/N <verb>" while a long operation runs: at most about
// twenty lines however long it is, at least one a second while it moves,
// and always the last.
type progress struct {
	w          io.Writer
	verb       string
	done, tot  int
	every      int
	lastPrintd time.Time
}

func newProgress(w io.Writer, verb string, total int) *progress {
	return &progress{w: w, verb: verb, tot: total, every: max(1, total/20), lastPrintd: time.Now()}
}

func (p *progress) step() {
	p.done++
	if p.done == p.tot || p.done%p.every == 0 || time.Since(p.lastPrintd) >= time.Second {
		fmt.Fprintf(p.w, "%d/%d %s\n", p.done, p.tot, p.verb)
		p.lastPrintd = time.Now()
	}
}

// progressLogger turns the progress a library logs at info level into
// plain lines for a person at a terminal: "message key=value ...", without
// time or level.
func progressLogger(w io.Writer) *slog.Logger {
	return slog.New(&lineHandler{w: w})
}

type lineHandler struct {
	w     io.Writer
	attrs []slog.Attr
}

func (h *lineHandler) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelInfo }

func (h *lineHandler) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	b.WriteString(r.Message)
	add := func(a slog.Attr) bool {
		fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
		return true
	}
	for _, a := range h.attrs {
		add(a)
	}
	r.Attrs(add)
	b.WriteByte('\n')
	_, err := io.WriteString(h.w, b.String())
	return err
}

func (h *lineHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &lineHandler{w: h.w, attrs: append(append([]slog.Attr{}, h.attrs...), as...)}
}

func (h *lineHandler) WithGroup(string) slog.Handler { return h }

// count is n with noun, in the plural unless n is 1 ("1 replica", "2
// replicas"); nouns here take an s.
func count[N int | uint64](n N, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}
