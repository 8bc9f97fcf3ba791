package main

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestRunServesAndStops(t *testing.T) {
	reg := filepath.Join(t.TempDir(), "reg.yaml")
	if err := os.WriteFile(reg, []byte("id: a\nurl: null\nas_token: at\nhs_token: ht\nsender_localpart: bot\nnamespaces:\n  users: []\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"-addr", "127.0.0.1:0", "-server-name", "example.org", "-mode", "dendrite", "-room-version", "12", "-registration", reg, "-user", "alice:pw"}, pw, io.Discard)
		_ = pw.Close()
	}()
	url, err := bufio.NewReader(pr).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	url = strings.TrimSpace(url)
	go func() { _, _ = io.Copy(io.Discard, pr) }()
	body := strings.NewReader(`{"type":"m.login.password","user":"alice","password":"pw"}`)
	res, err := http.Post(url+"/_matrix/client/v3/login", "application/json", body)
	if err != nil {
		t.Fatal(err)
	}
	var login struct {
		AccessToken string `json:"access_token"`
	}
	err = json.NewDecoder(res.Body).Decode(&login)
	res.Body.Close()
	if res.StatusCode != 200 || err != nil {
		t.Fatalf("login %d %v", res.StatusCode, err)
	}
	req, _ := http.NewRequest("POST", url+"/_matrix/client/v3/createRoom", strings.NewReader(`{}`))
	req.Header.Set("Authorization", "Bearer "+login.AccessToken)
	res, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var created struct {
		RoomID string `json:"room_id"`
	}
	err = json.NewDecoder(res.Body).Decode(&created)
	res.Body.Close()
	if err != nil || strings.Contains(created.RoomID, ":") || !strings.HasPrefix(created.RoomID, "!") {
		t.Fatalf("-room-version 12 made room %q (%v)", created.RoomID, err)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("did not stop")
	}
}

func TestRunRejectsBadInput(t *testing.T) {
	for _, args := range [][]string{
		{"-mode", "nope"},
		{"-registration", "/does/not/exist.yaml"},
		{"-addr", "127.0.0.1:0", "-user", "nopassword"},
		{"-addr", "127.0.0.1:0", "-room-version", "13"},
	} {
		if err := run(context.Background(), args, io.Discard, io.Discard); err == nil {
			t.Fatalf("%v: want an error", args)
		}
	}
}

func TestVersion(t *testing.T) {
	var out strings.Builder
	if err := run(context.Background(), []string{"-version"}, &out, io.Discard); err != nil || !strings.HasPrefix(out.String(), "hssim dev (revision ") && !strings.HasPrefix(out.String(), "hssim v") {
		t.Fatalf("run(-version) = %v, printed %q", err, out.String())
	}
}
