package envconf

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/cactus-comments/appservice/pkg/config"
)

var required = map[string]string{
	"CACTUS_HS_TOKEN":       "hs-secret-0123456789abcdef0123456789abcdef",
	"CACTUS_AS_TOKEN":       "as-secret-0123456789abcdef0123456789abcdef",
	"CACTUS_HOMESERVER_URL": "http://127.0.0.1:8008/",
	"CACTUS_USER_ID":        "@cactusbot:localhost",
}

// TestLoadMatchesConfigLoad pins envconf to config.Load: the same variables
// must give the same Config, so the CLI and the services never disagree.
func TestLoadMatchesConfigLoad(t *testing.T) {
	env := map[string]string{"CACTUS_CONCURRENCY": "3", "CACTUS_PUBLISH_TIMEOUT": "2s", "CACTUS_LOG_LEVEL": "debug"}
	for k, v := range required {
		env[k] = v
	}
	for k, v := range env {
		t.Setenv(k, v)
	}
	want, err := config.Load()
	if err != nil {
		t.Fatal(err)
	}
	got, err := Load(Map(env))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("envconf.Load differs from config.Load:\n got %#v\nwant %#v", *got, *want)
	}
	if got.Concurrency != 3 || got.PublishTimeout != 2*time.Second || got.HomeserverURL != "http://127.0.0.1:8008" {
		t.Fatalf("values not applied: %+v", got)
	}
}

func TestLoadErrors(t *testing.T) {
	tests := []struct {
		name    string
		drop    string
		set     map[string]string
		wantSub string
	}{
		{"missing required", "CACTUS_AS_TOKEN", nil, "CACTUS_AS_TOKEN: required"},
		{"bad int", "", map[string]string{"CACTUS_CONCURRENCY": "many"}, "CACTUS_CONCURRENCY"},
		{"bad duration", "", map[string]string{"CACTUS_PUBLISH_TIMEOUT": "10"}, "CACTUS_PUBLISH_TIMEOUT"},
		{"invalid url", "", map[string]string{"CACTUS_HOMESERVER_URL": "ftp://x"}, "CACTUS_HOMESERVER_URL"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := map[string]string{}
			for k, v := range required {
				if k != tt.drop {
					env[k] = v
				}
			}
			for k, v := range tt.set {
				env[k] = v
			}
			_, err := Load(Map(env))
			if err == nil || !strings.Contains(err.Error(), tt.wantSub) {
				t.Fatalf("err = %v, want it to mention %q", err, tt.wantSub)
			}
			if strings.Contains(err.Error(), "hs-secret") || strings.Contains(err.Error(), "as-secret") {
				t.Fatalf("error reveals a token: %v", err)
			}
		})
	}
}

func TestFillDefaultsWithoutRequired(t *testing.T) {
	c, err := Fill(Map(map[string]string{"CACTUS_NATS_URL": "nats://10.0.0.1:4222"}))
	if err != nil {
		t.Fatal(err)
	}
	if c.NATSURL != "nats://10.0.0.1:4222" || c.NATSReplicas != 1 || c.Concurrency != 16 {
		t.Fatalf("unexpected %+v", c)
	}
}

func TestChain(t *testing.T) {
	l := Chain(nil, Map(map[string]string{"A": "first"}), Map(map[string]string{"A": "second", "B": "b"}))
	if v, _ := l("A"); v != "first" {
		t.Fatalf("A = %q", v)
	}
	if v, _ := l("B"); v != "b" {
		t.Fatalf("B = %q", v)
	}
	if _, ok := l("C"); ok {
		t.Fatal("C found")
	}
}

func TestParseFile(t *testing.T) {
	tests := []struct {
		name, in string
		want     map[string]string
		wantErr  string
	}{
		{"plain", "A=1\nB=two words\n", map[string]string{"A": "1", "B": "two words"}, ""},
		{"comments and blanks", "# c\n\n  A = x  \n", map[string]string{"A": "x"}, ""},
		{"export", "export A=1", map[string]string{"A": "1"}, ""},
		{"hash in value kept", "R=#comments_.*", map[string]string{"R": "#comments_.*"}, ""},
		{"inline comment", "A=1 # one", map[string]string{"A": "1"}, ""},
		{"single quotes", "A='x # y'", map[string]string{"A": "x # y"}, ""},
		{"double quotes escape", `A="a\nb"`, map[string]string{"A": "a\nb"}, ""},
		{"empty value", "A=", map[string]string{"A": ""}, ""},
		{"no equals", "A", nil, "line 1"},
		{"empty key", "=x", nil, "line 1"},
		{"unterminated", "A='x", nil, "unterminated"},
		{"trailing text", "A='x' y", nil, "after the closing quote"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseFile([]byte(tt.in))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("got %q want %q", got, tt.want)
			}
		})
	}
}

func FuzzParseFile(f *testing.F) {
	for _, s := range []string{"A=1", "export B='x'", `C="a\"b"`, "# c\nD=#x", "E", "F='"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		m, err := ParseFile([]byte(in))
		if err != nil {
			return
		}
		for k := range m {
			if k == "" || strings.ContainsAny(k, " \t\"'=") {
				t.Fatalf("bad key %q from %q", k, in)
			}
		}
	})
}
