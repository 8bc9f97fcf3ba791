package logging

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"
)

const (
	asToken = "as_0123456789abcdefTOKEN"
	hsToken = "hs+/=fedcba9876543210TOKEN" // URL-escapes differently
	// A token nobody configured: only the patterns can catch it.
	unknownToken = "syt_dW5rbm93bg_UnknownTokenValue_42"
)

type creds struct {
	User  string
	Token string
	Inner struct{ Header http.Header }
}

type stringer struct{ s string }

func (s stringer) String() string { return "stringer(" + s.s + ")" }

type valuer struct{ s string }

func (v valuer) LogValue() slog.Value { return slog.StringValue("valuer " + v.s) }

// logEverything logs the secrets in every place a careless caller might put
// them.
func logEverything(l *slog.Logger) {
	h := http.Header{}
	h.Set("Authorization", "Bearer "+unknownToken)
	var c creds
	c.User, c.Token, c.Inner.Header = "u", asToken, h
	u, _ := url.Parse("https://hs.example.org/_matrix/app/v1/transactions/1?access_token=" + unknownToken + "&x=1")

	l.Info("tabular message with " + asToken + " and " + hsToken + " inline")
	l.Info("request", "url", "https://hs/_matrix/client/v3/sync?access_token="+unknownToken)
	l.Info("request url", "url", u)
	l.Info("raw header line", "line", "Authorization: Bearer "+unknownToken)
	l.Info("headers", "headers", h)
	l.Info("json body", "body", `{"as_token":"`+unknownToken+`","hs_token":"x`+unknownToken+`"}`)
	l.Info("json header", "body", `{"Authorization":"Bearer `+unknownToken+`"}`)
	l.Info("bearer in prose: got Bearer " + unknownToken + " back")
	l.Info("string attrs", "as", asToken, "hs", "prefix-"+hsToken+"-suffix")
	l.Info("escaped", "q", url.QueryEscape(hsToken), "p", "/path/"+url.PathEscape(hsToken))
	l.Error("error attr", "err", fmt.Errorf("call failed: token %s rejected", asToken))
	l.Error("joined", "err", errors.Join(errors.New("a "+hsToken), errors.New("b")))
	l.Info("struct", "creds", c)
	l.Info("struct ptr", "creds", &c)
	l.Info("map", "m", map[string]any{"t": asToken, "n": 1})
	l.Info("bytes", "b", []byte("body "+hsToken))
	l.Info("stringer", "s", stringer{asToken})
	l.Info("valuer", "v", valuer{hsToken})
	l.Info("sensitive keys", "as_token", unknownToken, "Authorization", unknownToken, "access_token", unknownToken, "password", unknownToken, "refresh_token", unknownToken)
	l.Info("group", slog.Group("req", "auth", "Bearer "+unknownToken, slog.Group("inner", "tok", asToken, "hs_token", 12345678)))
	l.WithGroup("g").Info("with group", "v", hsToken)
	l.With("as", asToken, slog.Group("w", "hs", hsToken)).Info("with attrs")
	l.With("err", errors.New(hsToken)).WithGroup("x").With("y", asToken).Warn("nested with")
	pw, _ := url.Parse("nats://natsuser:" + unknownToken + "@nats:4222")
	l.Info("url password", "u", pw, "s", "dial nats://natsuser:"+unknownToken+"@nats:4222 failed")
}

func TestSecretsNeverReachTheOutput(t *testing.T) {
	for _, format := range []string{"json", "text"} {
		t.Run(format, func(t *testing.T) {
			var buf bytes.Buffer
			l := New(&buf, Options{Format: format, Level: "debug", Secrets: []string{asToken, hsToken, "ab"}, Service: "test"})
			logEverything(l)
			out := buf.String()
			if n := strings.Count(out, "\n"); n != 24 {
				t.Fatalf("expected 24 log lines, got %d:\n%s", n, out)
			}
			for _, secret := range []string{
				asToken, hsToken, unknownToken, url.QueryEscape(hsToken), url.PathEscape(hsToken),
				"0123456789abcdef", "fedcba9876543210", "UnknownTokenValue",
			} {
				if strings.Contains(out, secret) {
					t.Errorf("output contains %q:\n%s", secret, out)
				}
			}
			// The rest of the lines survive, and a 2-byte "secret" is
			// ignored rather than redacting words.
			for _, keep := range []string{"message with", "call failed", "inline", "x=1", "test", "tabular", "natsuser", "@nats:4222"} {
				if !strings.Contains(out, keep) {
					t.Errorf("output lost %q:\n%s", keep, out)
				}
			}
			if !strings.Contains(out, redacted) {
				t.Error("nothing was marked as redacted")
			}
		})
	}
}

func TestJSONOutputIsValid(t *testing.T) {
	var buf bytes.Buffer
	l := New(&buf, Options{Format: "json", Secrets: []string{asToken}, Service: "svc"})
	l.Info("hello", "event_id", "$e", "creds", creds{User: "u", Token: asToken})
	var m map[string]any
	if err := json.Unmarshal(buf.Bytes(), &m); err != nil {
		t.Fatalf("not JSON: %v: %s", err, buf.String())
	}
	if m["msg"] != "hello" || m["service"] != "svc" || m["event_id"] != "$e" {
		t.Fatalf("fields = %v", m)
	}
}

func TestLongerSecretRedactedWhole(t *testing.T) {
	var buf bytes.Buffer
	l := New(&buf, Options{Format: "json", Secrets: []string{"abcd", "abcdSECRETTAIL"}})
	l.Info("x abcdSECRETTAIL y")
	if strings.Contains(buf.String(), "SECRETTAIL") {
		t.Fatalf("a secret containing another was half redacted: %s", buf.String())
	}
}

func TestScrubKeepsOrdinaryText(t *testing.T) {
	r := NewRedactor(slog.DiscardHandler, []string{asToken})
	for _, s := range []string{
		"authorization failed for user @a:b",
		"the bearer of good news",
		"GET /_matrix/client/v3/rooms/!r:x/state?user_id=@a:b",
		"token count 3",
		"https://example.org:8448/_matrix/client/v3/rooms/!r:x/ban?user_id=@a:b",
		"see https://matrix.to/#/@alice:example.org",
		"nats://nats:4222",
	} {
		if got := r.Scrub(s); got != s {
			t.Errorf("Scrub(%q) = %q", s, got)
		}
	}
}

func TestParseLevel(t *testing.T) {
	tests := map[string]slog.Level{
		"debug": slog.LevelDebug, "DEBUG": slog.LevelDebug,
		"info": slog.LevelInfo, "": slog.LevelInfo, "bogus": slog.LevelInfo,
		"warn": slog.LevelWarn, "warning": slog.LevelWarn, "Warn": slog.LevelWarn,
		"error": slog.LevelError, "ERROR": slog.LevelError,
	}
	for in, want := range tests {
		if got := ParseLevel(in); got != want {
			t.Errorf("ParseLevel(%q) = %v, want %v", in, got, want)
		}
	}
}

func TestLevelFilters(t *testing.T) {
	var buf bytes.Buffer
	l := New(&buf, Options{Format: "json", Level: "warn"})
	l.Info("dropped")
	l.Debug("dropped")
	l.Warn("kept")
	if strings.Contains(buf.String(), "dropped") || !strings.Contains(buf.String(), "kept") {
		t.Fatalf("level warn output: %s", buf.String())
	}
}

func TestAutoFormat(t *testing.T) {
	for _, format := range []string{"", "auto"} {
		var buf bytes.Buffer
		New(&buf, Options{Format: format}).Info("hi", "k", "v")
		var m map[string]any
		if err := json.Unmarshal(buf.Bytes(), &m); err != nil || m["k"] != "v" {
			t.Errorf("format %q on a non-terminal wrote %q, want JSON", format, buf.String())
		}
	}
	// A regular file is not a terminal either.
	f, err := os.CreateTemp(t.TempDir(), "log")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	New(f, Options{}).Info("hi")
	b, _ := os.ReadFile(f.Name())
	if !json.Valid(bytes.TrimSpace(b)) {
		t.Errorf("auto format to a file wrote %q, want JSON", b)
	}
	var buf bytes.Buffer
	New(&buf, Options{Format: "text"}).Info("hi", "k", "v")
	if json.Valid(bytes.TrimSpace(buf.Bytes())) || !strings.Contains(buf.String(), "k=v") || strings.Contains(buf.String(), "\x1b[") {
		t.Errorf("text format wrote %q, want uncolored text", buf.String())
	}
}

func TestDiscard(t *testing.T) {
	Discard().Error("nothing", "k", asToken) // must not panic or print
}

// TestTextTimestampsCarryTheDate: a text log kept across midnight (or read
// a week later) must say which day each line is from.
func TestTextTimestampsCarryTheDate(t *testing.T) {
	var buf bytes.Buffer
	New(&buf, Options{Format: "text"}).Info("hello")
	today := time.Now().Format(time.DateOnly)
	yesterday := time.Now().Add(-time.Hour).Format(time.DateOnly) // the test may cross midnight
	if !strings.HasPrefix(buf.String(), today) && !strings.HasPrefix(buf.String(), yesterday) {
		t.Fatalf("text line %q does not start with the date", buf.String())
	}
}

// TestDurations: JSON carries seconds as numbers (what log pipelines sum
// and compare), text carries Go duration strings (what people read).
func TestDurations(t *testing.T) {
	var js bytes.Buffer
	New(&js, Options{Format: "json"}).Info("waited", "in", 1500*time.Millisecond, slog.Group("g", "rtt", 2*time.Millisecond))
	var m map[string]any
	if err := json.Unmarshal(js.Bytes(), &m); err != nil {
		t.Fatal(err)
	}
	if m["in"] != 1.5 {
		t.Errorf("JSON duration = %#v, want the number 1.5 (seconds): %s", m["in"], js.String())
	}
	if g, _ := m["g"].(map[string]any); g["rtt"] != 0.002 {
		t.Errorf("JSON duration in a group = %#v, want 0.002: %s", m["g"], js.String())
	}
	var txt bytes.Buffer
	New(&txt, Options{Format: "text"}).Info("waited", "in", 1500*time.Millisecond)
	if !strings.Contains(txt.String(), "in=1.5s") {
		t.Errorf("text duration: %q, want in=1.5s", txt.String())
	}
}

// TestColor: colors only on a terminal, and never when NO_COLOR is set to
// anything non-empty (https://no-color.org).
func TestColor(t *testing.T) {
	tests := []struct {
		terminal bool
		noColor  string
		set      bool
		want     bool
	}{
		{true, "", false, true},
		{true, "", true, true}, // set but empty: no effect, as the convention says
		{true, "1", true, false},
		{true, "0", true, false}, // any non-empty value
		{false, "", false, false},
	}
	for _, tt := range tests {
		getenv := func(k string) string {
			if k == "NO_COLOR" && tt.set {
				return tt.noColor
			}
			return ""
		}
		if got := colored(tt.terminal, getenv); got != tt.want {
			t.Errorf("terminal %v, NO_COLOR %q (set %v): colored = %v, want %v", tt.terminal, tt.noColor, tt.set, got, tt.want)
		}
	}
}
