package matrix

import (
	"encoding/json"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"", 0, false},
		{"0", 0, true},
		{" 5 ", 5 * time.Second, true},
		{"120", 2 * time.Minute, true},
		{"99999999999999999999", maxRetryAfterValue, true},
		{"-1", 0, false},
		{"1.5", 0, false},
		{"soon", 0, false},
		{"Sat, 21 Nov 2026 12:00:30 GMT", 30 * time.Second, true},
		{"Sat, 21 Nov 2026 11:00:00 GMT", 0, true}, // in the past: retry now
		{"Saturday, 21-Nov-26 12:01:00 GMT", time.Minute, true},
		{"Sat Nov 21 12:00:10 2026", 10 * time.Second, true},
	}
	for _, tc := range tests {
		got, ok := parseRetryAfter(tc.in, now)
		if got != tc.want || ok != tc.ok {
			t.Errorf("parseRetryAfter(%q) = %v, %v; want %v, %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
}

func TestParseErrorRetryAfterSources(t *testing.T) {
	now := time.Now()
	tests := []struct {
		name   string
		header string
		body   string
		want   time.Duration
	}{
		{"body only", "", `{"errcode":"M_LIMIT_EXCEEDED","retry_after_ms":1500}`, 1500 * time.Millisecond},
		{"header wins", "3", `{"errcode":"M_LIMIT_EXCEEDED","retry_after_ms":1500}`, 3 * time.Second},
		{"bad header falls back to body", "later", `{"errcode":"M_LIMIT_EXCEEDED","retry_after_ms":20}`, 20 * time.Millisecond},
		{"string ms ignored", "", `{"errcode":"M_LIMIT_EXCEEDED","retry_after_ms":"20"}`, 0},
		{"negative ms ignored", "", `{"errcode":"M_LIMIT_EXCEEDED","retry_after_ms":-20}`, 0},
		{"huge ms capped", "", `{"retry_after_ms":1e300}`, maxRetryAfterValue},
		{"html body with header", "7", `<html>busy</html>`, 7 * time.Second},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := http.Header{}
			if tc.header != "" {
				h.Set("Retry-After", tc.header)
			}
			e := parseError("send", 429, h, []byte(tc.body), now)
			if e.RetryAfter != tc.want {
				t.Errorf("RetryAfter = %v, want %v", e.RetryAfter, tc.want)
			}
		})
	}
}

func FuzzParseError(f *testing.F) {
	f.Add(429, "1", []byte(`{"errcode":"M_LIMIT_EXCEEDED","error":"Too Many Requests","retry_after_ms":2000}`))
	f.Add(400, "", []byte(`{"errcode":"M_ROOM_IN_USE","error":"Room alias already taken"}`))
	f.Add(502, "", []byte("<html><head><title>502 Bad Gateway</title></head></html>"))
	f.Add(500, "", []byte(""))
	f.Add(503, "Wed, 21 Oct 2015 07:28:00 GMT", []byte("\x00\xff\xfe"))
	f.Add(404, " 30 ", []byte(`{"errcode":null,"error":["x"],"retry_after_ms":{}}`))
	f.Add(429, "18446744073709551615", []byte(`{"retry_after_ms":1e400}`))
	f.Add(403, "", []byte(`{"error":"`+strings.Repeat("é", 300)+`"}`))
	f.Fuzz(func(t *testing.T, status int, retryAfter string, body []byte) {
		h := http.Header{}
		h.Set("Retry-After", retryAfter)
		e := parseError("ep", status, h, body, time.Unix(1700000000, 0))
		if e.Status != status || e.Endpoint != "ep" {
			t.Fatalf("fields not kept: %+v", e)
		}
		if e.RetryAfter < 0 || e.RetryAfter > maxRetryAfterValue {
			t.Fatalf("RetryAfter %v out of range", e.RetryAfter)
		}
		if e.Message == "" && e.ErrCode == "" {
			t.Fatal("neither message nor errcode")
		}
		// Prefix + 200 bytes + ellipsis at most.
		if len(e.Message) > len("non-JSON response body: ")+maxErrorBody+len("…") {
			t.Fatalf("message of %d bytes", len(e.Message))
		}
		msg := e.Error()
		if !utf8.ValidString(msg) {
			t.Fatalf("invalid UTF-8 in %q", msg)
		}
		for _, r := range msg {
			if r < 0x20 || r == 0x7f {
				t.Fatalf("control character in %q", msg)
			}
		}
		d, ok := parseRetryAfter(retryAfter, time.Unix(1700000000, 0))
		if d < 0 || d > maxRetryAfterValue || (!ok && d != 0) {
			t.Fatalf("parseRetryAfter(%q) = %v, %v", retryAfter, d, ok)
		}
	})
}

func FuzzPowerLevels(f *testing.F) {
	f.Add([]byte(`{}`))
	f.Add([]byte(`{"ban":50,"kick":"50","users":{"@a:x":100},"events":{"m.room.name":"50"},"notifications":{"room":50}}`))
	f.Add([]byte(`{"users_default":-1,"x":{"y":[1,2]},"state_default":1e1,"invite":null}`))
	f.Add([]byte(`{"ban":" 7 ","historical":100,"events_default":"-0"}`))
	f.Add([]byte(`{"users":{"@a:x":9007199254740991}}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var p1 PowerLevels
		if err := p1.UnmarshalJSON(data); err != nil {
			return
		}
		out, err := json.Marshal(&p1)
		if err != nil {
			t.Fatalf("cannot marshal what was parsed from %q: %v", data, err)
		}
		var p2 PowerLevels
		if err := json.Unmarshal(out, &p2); err != nil {
			t.Fatalf("cannot parse own output %s: %v", out, err)
		}
		out2, err := json.Marshal(&p2)
		if err != nil || string(out2) != string(out) {
			t.Fatalf("not stable: %s then %s (%v)", out, out2, err)
		}
		if !reflect.DeepEqual(p1.Users, p2.Users) || !reflect.DeepEqual(p1.Events, p2.Events) ||
			p1.BanLevel() != p2.BanLevel() || p1.UsersDefaultLevel() != p2.UsersDefaultLevel() ||
			p1.StateDefaultLevel() != p2.StateDefaultLevel() || len(p1.Extra) != len(p2.Extra) {
			t.Fatalf("round trip changed the levels: %+v vs %+v", p1, p2)
		}
		for _, lv := range []int{p1.BanLevel(), p1.KickLevel(), p1.InviteLevel(), p1.RedactLevel(), p1.EventsDefaultLevel()} {
			if lv > maxLevel || lv < -maxLevel {
				t.Fatalf("level %d out of range", lv)
			}
		}
	})
}
