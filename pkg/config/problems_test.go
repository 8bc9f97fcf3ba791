package config

import (
	"net"
	"net/url"
	"strconv"
	"strings"
	"testing"
)

// TestLoadReportsEveryProblem: four missing variables and a handful of bad
// values take one attempt to fix, not one per variable.
func TestLoadReportsEveryProblem(t *testing.T) {
	setEnv(t, map[string]string{
		"CACTUS_LISTEN_ADDR":     "notanaddr",
		"CACTUS_NATS_URL":        "http://nats:4222",
		"CACTUS_BOT_AVATAR_URL":  "https://example.org/cactus.png",
		"CACTUS_PUBLISH_TIMEOUT": "10",
		"CACTUS_CONCURRENCY":     "0",
	})
	_, err := Load()
	if err == nil {
		t.Fatal("Load accepted an empty configuration")
	}
	lines := strings.Split(err.Error(), "\n")
	want := []string{
		"CACTUS_HS_TOKEN: required", "CACTUS_AS_TOKEN: required", "CACTUS_HOMESERVER_URL: required", "CACTUS_USER_ID: required",
		"CACTUS_LISTEN_ADDR: ", "CACTUS_NATS_URL: ", "CACTUS_BOT_AVATAR_URL: ", "CACTUS_PUBLISH_TIMEOUT: ", "CACTUS_CONCURRENCY: ",
	}
	for _, w := range want {
		n := 0
		for _, l := range lines {
			if strings.HasPrefix(l, w) {
				n++
			}
		}
		if n != 1 {
			t.Errorf("%d lines start with %q, want 1:\n%s", n, w, err)
		}
	}
	if len(lines) != len(want) {
		t.Errorf("%d problem lines, want %d:\n%s", len(lines), len(want), err)
	}
}

func TestLoadRefusesWhatWouldFailLater(t *testing.T) {
	tests := []struct {
		name          string
		env           map[string]string
		variable, why string
	}{
		{"placeholder hs token", with(map[string]string{"CACTUS_HS_TOKEN": "REPLACE_ME"}), "CACTUS_HS_TOKEN", "placeholder"},
		{"placeholder as token", with(map[string]string{"CACTUS_AS_TOKEN": "changeme"}), "CACTUS_AS_TOKEN", "placeholder"},
		{"long placeholder", with(map[string]string{"CACTUS_AS_TOKEN": "REPLACE_ME_WITH_THE_REAL_AS_TOKEN_PLEASE"}), "CACTUS_AS_TOKEN", "placeholder"},
		{"short token", with(map[string]string{"CACTUS_HS_TOKEN": "0123456789abcdef0123456789abcde"}), "CACTUS_HS_TOKEN", "32"},
		{"token with a space", with(map[string]string{"CACTUS_HS_TOKEN": "0123456789abcdef 0123456789abcdef"}), "CACTUS_HS_TOKEN", "whitespace"},
		{"same tokens", with(map[string]string{"CACTUS_HS_TOKEN": asToken}), "CACTUS_HS_TOKEN", "CACTUS_AS_TOKEN"},
		{"placeholder nats password", with(map[string]string{"CACTUS_NATS_USER": "gateway", "CACTUS_NATS_PASSWORD": "REPLACE_ME"}), "CACTUS_NATS_PASSWORD", "placeholder"},
		{"listen address", with(map[string]string{"CACTUS_LISTEN_ADDR": "notanaddr"}), "CACTUS_LISTEN_ADDR", "host:port"},
		{"listen port", with(map[string]string{"CACTUS_LISTEN_ADDR": ":80800"}), "CACTUS_LISTEN_ADDR", "port"},
		{"admin address", with(map[string]string{"CACTUS_ADMIN_ADDR": "9090"}), "CACTUS_ADMIN_ADDR", "host:port"},
		{"admin host", with(map[string]string{"CACTUS_ADMIN_ADDR": "exa mple:9090"}), "CACTUS_ADMIN_ADDR", "host"},
		{"nats http", with(map[string]string{"CACTUS_NATS_URL": "http://nats:4222"}), "CACTUS_NATS_URL", "nats://"},
		{"nats second url", with(map[string]string{"CACTUS_NATS_URL": "nats://a:4222,https://b:4222"}), "CACTUS_NATS_URL", `"https://b:4222"`},
		{"nats no host", with(map[string]string{"CACTUS_NATS_URL": "nats://:4222"}), "CACTUS_NATS_URL", "host"},
		{"nats empty", with(map[string]string{"CACTUS_NATS_URL": ""}), "CACTUS_NATS_URL", "empty"},
		{"avatar https", with(map[string]string{"CACTUS_BOT_AVATAR_URL": "https://example.org/a.png"}), "CACTUS_BOT_AVATAR_URL", "mxc://"},
		{"avatar no media id", with(map[string]string{"CACTUS_BOT_AVATAR_URL": "mxc://example.org/"}), "CACTUS_BOT_AVATAR_URL", "media id"},
		{"avatar bad media id", with(map[string]string{"CACTUS_BOT_AVATAR_URL": "mxc://example.org/a/b"}), "CACTUS_BOT_AVATAR_URL", "media id"},
		{"avatar bad server", with(map[string]string{"CACTUS_BOT_AVATAR_URL": "mxc://exa mple.org/abc"}), "CACTUS_BOT_AVATAR_URL", "server"},
		{"two nats auth methods", with(map[string]string{"CACTUS_NATS_USER": "u", "CACTUS_NATS_PASSWORD": "pw-value", "CACTUS_NATS_TOKEN": "natstoken"}), "CACTUS_NATS_TOKEN", "one of"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			setEnv(t, tt.env)
			c, err := Load()
			if err == nil {
				t.Fatalf("Load() accepted the configuration: %+v", c)
			}
			msg := err.Error()
			if !strings.HasPrefix(msg, tt.variable+": ") || !strings.Contains(msg, tt.why) || strings.Contains(msg, "\n") {
				t.Errorf("error %q: want one line starting with %q and saying %q", msg, tt.variable+": ", tt.why)
			}
			for _, secret := range []string{hsToken, asToken, "pw-value", "natstoken", "REPLACE_ME", "changeme"} {
				if strings.Contains(msg, secret) {
					t.Errorf("error reveals a secret: %q", msg)
				}
			}
		})
	}
}

func TestLoadAcceptsGoodValues(t *testing.T) {
	setEnv(t, with(map[string]string{
		"CACTUS_LISTEN_ADDR":    "0.0.0.0:8080",
		"CACTUS_ADMIN_ADDR":     "[::1]:0",
		"CACTUS_NATS_URL":       "nats://a:4222, tls://b:4222,ws://c:8080/nats,wss://d",
		"CACTUS_BOT_AVATAR_URL": "mxc://matrix.example.org:8448/AbC-123_x",
	}))
	if _, err := Load(); err != nil {
		t.Fatal(err)
	}
}

func TestUnknownVariables(t *testing.T) {
	got := Unknown([]string{
		"CACTUS_NATS_URL=nats://x", "CACTUS_NATS_UR=nats://x", "CACTUS_LOGLEVEL=debug", "PATH=/bin",
		"CACTUS_COMPLETELY_NEW=1", "CACTUS_DEV_DATA=.cactus-dev", "CACTUS_HS_TOKEN",
	})
	want := []string{
		"CACTUS_COMPLETELY_NEW is not a variable the services read",
		"CACTUS_LOGLEVEL is not a variable the services read; did you mean CACTUS_LOG_LEVEL?",
		"CACTUS_NATS_UR is not a variable the services read; did you mean CACTUS_NATS_URL?",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("Unknown =\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// FuzzCheckAddr: an address the check accepts is one the services can
// listen on as far as its syntax goes: net resolves it without a lookup.
func FuzzCheckAddr(f *testing.F) {
	for _, s := range []string{":8080", "0.0.0.0:9090", "[::1]:0", "notanaddr", ":80800", "exa mple:1", "a:-1", "[fe80::1%eth0]:80", "host:+80"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if checkAddr(s) != "" {
			return
		}
		host, port, _ := net.SplitHostPort(s)
		if _, err := strconv.ParseUint(port, 10, 16); err != nil {
			t.Fatalf("accepted %q with port %q", s, port)
		}
		if host == "" || net.ParseIP(host) != nil {
			if _, err := net.ResolveTCPAddr("tcp", s); err != nil {
				t.Fatalf("accepted %q, which net cannot resolve: %v", s, err)
			}
		}
	})
}

// FuzzCheckMXC: an avatar the check accepts is read by a URL parser as
// scheme mxc, the server as host and the media id as the whole path, as
// homeservers and clients read it.
func FuzzCheckMXC(f *testing.F) {
	for _, s := range []string{"mxc://example.org/abc", "mxc://[::1]:8448/a_b-C", "mxc://example.org/", "https://x/y", "mxc://a/b/c", "mxc://a/b?c", "mxc://a:99999/b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if checkMXC(s) != "" || s == "" {
			return
		}
		u, err := url.Parse(s)
		if err != nil {
			t.Fatalf("accepted %q, which is not a URL: %v", s, err)
		}
		server, id, _ := strings.Cut(strings.TrimPrefix(s, "mxc://"), "/")
		if u.Scheme != "mxc" || u.Host != server || u.Path != "/"+id || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
			t.Fatalf("accepted %q, read as %#v", s, u)
		}
	})
}
