// Package logging builds the slog loggers every service uses: colored text
// on a terminal, JSON otherwise, and a redacting layer in front of both so
// that tokens can never reach the output.
package logging

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strings"

	"github.com/lmittmann/tint"
)

// Options selects the output.
type Options struct {
	Format  string // auto, text or json
	Level   string // debug, info, warn, error
	Secrets []string
	// Service is added to every line as "service".
	Service string
}

// TimeFormat is the timestamp of text lines: the date too, so that a log
// read a week later, or kept across midnight, says which day it is.
const TimeFormat = "2006-01-02 15:04:05.000"

// New returns a logger writing to w. Durations appear as seconds (JSON
// numbers) in JSON and as Go duration strings ("1.5s") in text. Text is
// colored only on a terminal, and never when NO_COLOR is set
// (https://no-color.org).
func New(w io.Writer, o Options) *slog.Logger {
	level := ParseLevel(o.Level)
	tty := isTerminal(w)
	var h slog.Handler
	format := o.Format
	if format == "" || format == "auto" {
		format = "json"
		if tty {
			format = "text"
		}
	}
	if format == "text" {
		h = tint.NewHandler(w, &tint.Options{Level: level, TimeFormat: TimeFormat, NoColor: !colored(tty, os.Getenv)})
	} else {
		h = slog.NewJSONHandler(w, &slog.HandlerOptions{Level: level, ReplaceAttr: durationSeconds})
	}
	l := slog.New(NewRedactor(h, o.Secrets))
	if o.Service != "" {
		l = l.With("service", o.Service)
	}
	return l
}

// colored decides on colors: a terminal, and no NO_COLOR with a value.
func colored(terminal bool, getenv func(string) string) bool {
	return terminal && getenv("NO_COLOR") == ""
}

// durationSeconds writes durations as seconds: slog's JSON handler would
// write nanoseconds, which log pipelines misread as seconds or milliseconds.
func durationSeconds(_ []string, a slog.Attr) slog.Attr {
	if a.Value.Kind() == slog.KindDuration {
		return slog.Float64(a.Key, a.Value.Duration().Seconds())
	}
	return a
}

// ParseLevel maps a level name to a slog level; unknown names mean info.
func ParseLevel(s string) slog.Level {
	switch strings.ToLower(s) {
	case "debug":
		return slog.LevelDebug
	case "warn", "warning":
		return slog.LevelWarn
	case "error":
		return slog.LevelError
	default:
		return slog.LevelInfo
	}
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

const redacted = "[REDACTED]"

// Patterns that carry credentials whatever their value: query tokens in
// URLs, Authorization header values however they are rendered (header
// lines, Go maps of headers, JSON), bearer tokens, and JSON token fields.
var credentialPatterns = []*regexp.Regexp{
	regexp.MustCompile(`(?i)((?:access_token|as_token|hs_token)=)[^&\s"']+`),
	regexp.MustCompile(`(?i)(authorization["']?\s*[:=]\s*\[?\s*["']?\s*(?:(?:bearer|basic|token)\s+)?)[^\s"'\]&,;}]+`),
	regexp.MustCompile(`(?i)(\bbearer\s+)[A-Za-z0-9._~+/=-]{8,}`),
	regexp.MustCompile(`(?i)("(?:as_token|hs_token|access_token|refresh_token|password|token|secret)"\s*:\s*")(?:[^"\\]|\\.)*`),
	// Passwords in URLs: scheme://user:password@host.
	regexp.MustCompile(`(?i)(\b[a-z][a-z0-9+.-]*://[^/\s:@"']*:)[^@\s/"']+(@)`),
}

// sensitiveKeys are attribute keys whose values are always withheld, as are
// keys ending in "token".
var sensitiveKeys = map[string]bool{
	"authorization": true, "password": true, "secret": true, "passwd": true,
}

func sensitiveKey(k string) bool {
	k = strings.ToLower(k)
	return sensitiveKeys[k] || strings.HasSuffix(k, "token")
}

// Redactor is a slog.Handler that scrubs secrets from the message and every
// attribute before passing the record on.
type Redactor struct {
	next    slog.Handler
	secrets []string
}

// NewRedactor wraps next. Secrets shorter than 4 bytes are ignored: they
// would redact ordinary words. Each secret is also withheld in its
// URL-escaped forms, and longer secrets are replaced first so that a secret
// containing another is not left half visible.
func NewRedactor(next slog.Handler, secrets []string) *Redactor {
	var keep []string
	for _, s := range secrets {
		if len(s) < 4 {
			continue
		}
		keep = append(keep, s, url.QueryEscape(s), url.PathEscape(s))
	}
	slices.SortFunc(keep, func(a, b string) int { return cmp.Compare(len(b), len(a)) })
	return &Redactor{next: next, secrets: slices.Compact(keep)}
}

// Enabled implements slog.Handler.
func (r *Redactor) Enabled(ctx context.Context, l slog.Level) bool { return r.next.Enabled(ctx, l) }

// Handle implements slog.Handler.
func (r *Redactor) Handle(ctx context.Context, rec slog.Record) error {
	out := slog.NewRecord(rec.Time, rec.Level, r.Scrub(rec.Message), rec.PC)
	rec.Attrs(func(a slog.Attr) bool {
		out.AddAttrs(r.attr(a))
		return true
	})
	return r.next.Handle(ctx, out)
}

// WithAttrs implements slog.Handler.
func (r *Redactor) WithAttrs(as []slog.Attr) slog.Handler {
	clean := make([]slog.Attr, len(as))
	for i, a := range as {
		clean[i] = r.attr(a)
	}
	return &Redactor{next: r.next.WithAttrs(clean), secrets: r.secrets}
}

// WithGroup implements slog.Handler.
func (r *Redactor) WithGroup(name string) slog.Handler {
	return &Redactor{next: r.next.WithGroup(name), secrets: r.secrets}
}

func (r *Redactor) attr(a slog.Attr) slog.Attr {
	if sensitiveKey(a.Key) {
		return slog.String(a.Key, redacted)
	}
	v := a.Value.Resolve()
	switch v.Kind() {
	case slog.KindString:
		return slog.String(a.Key, r.Scrub(v.String()))
	case slog.KindGroup:
		g := v.Group()
		clean := make([]any, len(g))
		for i, ga := range g {
			clean[i] = r.attr(ga)
		}
		return slog.Group(a.Key, clean...)
	case slog.KindAny:
		// Errors, structs and maps are rendered as text and scrubbed: a
		// JSON handler would otherwise marshal fields we cannot see.
		switch x := v.Any().(type) {
		case []byte:
			return slog.String(a.Key, r.Scrub(string(x)))
		case *url.URL:
			if x == nil {
				return slog.String(a.Key, "<nil>")
			}
			return slog.String(a.Key, r.Scrub(x.Redacted()))
		case error:
			return slog.String(a.Key, r.Scrub(x.Error()))
		case fmt.Stringer:
			return slog.String(a.Key, r.Scrub(x.String()))
		default:
			return slog.String(a.Key, r.Scrub(fmt.Sprintf("%+v", x)))
		}
	default:
		return slog.Attr{Key: a.Key, Value: v}
	}
}

// Scrub removes every configured secret and every credential-looking
// pattern from s.
func (r *Redactor) Scrub(s string) string {
	for _, sec := range r.secrets {
		if strings.Contains(s, sec) {
			s = strings.ReplaceAll(s, sec, redacted)
		}
	}
	for _, p := range credentialPatterns {
		if p.NumSubexp() == 2 {
			s = p.ReplaceAllString(s, "${1}"+redacted+"${2}")
			continue
		}
		s = p.ReplaceAllString(s, "${1}"+redacted)
	}
	return s
}

// Discard is a logger for tests that do not look at logs.
func Discard() *slog.Logger { return slog.New(slog.DiscardHandler) }
