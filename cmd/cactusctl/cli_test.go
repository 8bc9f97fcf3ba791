package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cactus-comments/appservice/pkg/buildinfo"
	"github.com/cactus-comments/appservice/pkg/bus"
	"github.com/cactus-comments/appservice/pkg/embednats"
)

// TestFlagsAnywhere: flags after positional arguments are flags, as the
// dev runner's banner prints them (`dlq replay 1 -env FILE`), with one or
// two dashes.
func TestFlagsAnywhere(t *testing.T) {
	vars, js := natsEnv(t)
	env := filepath.Join(t.TempDir(), "cactus.env")
	if err := os.WriteFile(env, []byte("CACTUS_NATS_URL="+vars["CACTUS_NATS_URL"]+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	deadLetterFixture(t, js, "!a:x", "$e1")
	deadLetterFixture(t, js, "!b:x", "$e2")
	for _, args := range [][]string{
		{"dlq", "replay", "1", "-env", env},
		{"dlq", "replay", "--env", env, "2"},
	} {
		r := ctl(t, nil, args...)
		if r.code != exitOK || !strings.Contains(r.stdout, "1 replayed, 0 failed") {
			t.Fatalf("%v: exit %d\n%s%s", args, r.code, r.stdout, r.stderr)
		}
	}
	if r := ctl(t, nil, "dlq", "list", "--json", "--env="+env); r.code != exitOK || strings.TrimSpace(r.stdout) != "[]" {
		t.Fatalf("--env=: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
}

// TestErrorsAreOneClearLine: what an operator sees when something is
// wrong is one line saying what, never a raw NATS API error.
func TestErrorsAreOneClearLine(t *testing.T) {
	vars, _ := natsEnv(t)
	srv := embednats.StartTest(t)
	down := srv.ClientURL()
	srv.Stop()
	empty := embednats.StartTest(t) // no topology: no streams
	tests := []struct {
		name string
		vars map[string]string
		args []string
		code int
		want string
	}{
		{"drop unknown", vars, []string{"dlq", "drop", "99"}, exitFailed, "dead letter 99: not found"},
		{"nats down", map[string]string{"CACTUS_NATS_URL": down}, []string{"sites", "list"}, exitFailed, "cannot reach NATS at " + down},
		{"no streams", map[string]string{"CACTUS_NATS_URL": empty.ClientURL()}, []string{"dlq", "list"}, exitFailed, "stream " + bus.StreamDLQ + " does not exist"},
		{"bad sequence", vars, []string{"dlq", "replay", "x"}, exitUsage, `"x" is not a dead letter sequence number`},
		{"unknown flag", vars, []string{"dlq", "list", "--bogus"}, exitUsage, "unknown flag: --bogus"},
		{"bad config", map[string]string{"CACTUS_NATS_URL": "http://x"}, []string{"sites", "list"}, exitUsage, "CACTUS_NATS_URL: "},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := ctl(t, tt.vars, tt.args...)
			out := r.stdout + r.stderr
			if r.code != tt.code || !strings.Contains(out, tt.want) {
				t.Fatalf("exit %d (want %d), output:\n%s\nwant it to contain %q", r.code, tt.code, out, tt.want)
			}
			for _, raw := range []string{"API error", "err_code", "context deadline exceeded", "nats: "} {
				if strings.Contains(out, raw) {
					t.Errorf("output shows a raw error (%q):\n%s", raw, out)
				}
			}
			if n := strings.Count(strings.TrimSpace(r.stderr), "\n"); n > 0 {
				t.Errorf("stderr has %d lines, want one:\n%s", n+1, r.stderr)
			}
		})
	}
}

func TestVersionAndCompletion(t *testing.T) {
	r := ctl(t, nil, "--version")
	if r.code != exitOK || strings.TrimSpace(r.stdout) != "cactusctl "+buildinfo.Get().String() {
		t.Fatalf("--version: exit %d, %q", r.code, r.stdout+r.stderr)
	}
	r = ctl(t, nil, "completion", "bash")
	if r.code != exitOK || !strings.Contains(r.stdout, "cactusctl") || !strings.Contains(r.stdout, "complete") {
		t.Fatalf("completion bash: exit %d\n%.300s", r.code, r.stdout+r.stderr)
	}
}

// TestReplayAllShowsProgress: a long replay says how far it is while it
// runs, not only at the end.
func TestReplayAllShowsProgress(t *testing.T) {
	vars, js := natsEnv(t)
	for i := range 5 {
		deadLetterFixture(t, js, "!p:x", "$p"+string(rune('a'+i)))
	}
	r := ctl(t, vars, "dlq", "replay", "--all")
	if r.code != exitOK {
		t.Fatalf("exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	for _, want := range []string{"read 5 dead letters", "replaying 5", "5/5 replayed"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("progress lacks %q:\n%s", want, r.stderr)
		}
	}
	_ = context.Background()
}

// TestTopologyEnsureAndNATSConfig: the operator's commands create the
// topology on an empty NATS and print the users the committed files hold.
func TestTopologyEnsureAndNATSConfig(t *testing.T) {
	empty := embednats.StartTest(t)
	vars := map[string]string{"CACTUS_NATS_URL": empty.ClientURL()}
	if r := ctl(t, vars, "topology", "ensure"); r.code != exitOK || !strings.Contains(r.stdout, "ensured 4 streams") {
		t.Fatalf("topology ensure: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if r := ctl(t, vars, "doctor"); !strings.Contains(r.stdout, "ok    topology") {
		t.Fatalf("doctor after ensure:\n%s", r.stdout)
	}
	for _, format := range []string{"server", "helm"} {
		r := ctl(t, nil, "nats-config", "--format", format)
		if r.code != exitOK || !strings.Contains(r.stdout, `"cactus.ev.>"`) || !strings.Contains(r.stdout, "NATS_PASSWORD_GATEWAY") {
			t.Fatalf("nats-config --format %s: exit %d\n%.400s", format, r.code, r.stdout+r.stderr)
		}
	}
	dir := filepath.Join(t.TempDir(), "creds")
	if r := ctl(t, nil, "nats-credentials", "--dir", dir); r.code != exitOK {
		t.Fatalf("nats-credentials: exit %d %s", r.code, r.stderr)
	}
	server, _ := os.ReadFile(filepath.Join(dir, "nats.env"))
	client, _ := os.ReadFile(filepath.Join(dir, "gateway.env"))
	pw := strings.TrimPrefix(strings.Split(strings.TrimSpace(string(client)), "\n")[2], "CACTUS_NATS_PASSWORD=")
	if len(pw) != 64 || !strings.Contains(string(server), "NATS_PASSWORD_GATEWAY="+pw) {
		t.Fatalf("server and client passwords differ:\n%s\n%s", server, client)
	}
	if r := ctl(t, nil, "nats-credentials", "--dir", dir); r.code != exitUsage || !strings.Contains(r.stderr, "--force") {
		t.Fatalf("a second run replaced the passwords: exit %d %s", r.code, r.stderr)
	}
}
