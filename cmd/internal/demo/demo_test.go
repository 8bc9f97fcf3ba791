package demo

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/cactus-comments/appservice/pkg/mxid"
)

func writeTestInfo(t *testing.T, hsURL string) string {
	t.Helper()
	dir := t.TempDir()
	info := &Info{HomeserverURL: hsURL, ServerName: "localhost", Bot: "@bot:localhost", Prefix: "comments_",
		Owner: User{UserID: "@demo:localhost", AccessToken: "owner-token"}, Visitor: User{UserID: "@visitor:localhost", AccessToken: "visitor-token"}}
	if err := WriteInfo(dir, info); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestInfoRoundTripAndReset(t *testing.T) {
	dir := writeTestInfo(t, "http://hs")
	if err := os.WriteFile(filepath.Join(dir, RoomsFile), []byte(`[]`), 0o600); err != nil {
		t.Fatal(err)
	}
	info, err := ReadInfo(dir)
	if err != nil {
		t.Fatal(err)
	}
	if info.Owner.AccessToken != "owner-token" || info.Prefix != "comments_" {
		t.Fatalf("%+v", info)
	}
	st, _ := os.Stat(filepath.Join(dir, InfoFile))
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v", st.Mode().Perm())
	}
	// A new run forgets the rooms of the last one.
	if err := WriteInfo(dir, info); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, RoomsFile)); !os.IsNotExist(err) {
		t.Fatal("rooms file survived a new run")
	}
	if _, err := ReadInfo(t.TempDir()); err == nil || !strings.Contains(err.Error(), "dev runner") {
		t.Fatalf("missing info: %v", err)
	}
}

func TestMessagesAfter(t *testing.T) {
	msg := func(id, sender, body string) map[string]any {
		return map[string]any{"event_id": id, "type": "m.room.message", "sender": sender, "content": map[string]any{"msgtype": "m.text", "body": body}}
	}
	// Newest first, as /messages?dir=b answers.
	chunk := []any{
		msg("$5", "@bot:localhost", "second"),
		map[string]any{"event_id": "$4", "type": "m.room.member", "sender": "@bot:localhost", "content": map[string]any{"membership": "join"}},
		msg("$3", "@x:localhost", "someone else"),
		msg("$2", "@bot:localhost", "first"),
		msg("$1", "@demo:localhost", "register blog"),
		msg("$0", "@bot:localhost", "older, before the command"),
	}
	var gotAuth, gotPath string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gotAuth, gotPath = r.Header.Get("Authorization"), r.URL.EscapedPath()
		_ = json.NewEncoder(w).Encode(map[string]any{"chunk": chunk})
	}))
	defer srv.Close()
	d, err := New(writeTestInfo(t, srv.URL), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	room := mxid.MustRoomID("!dm:localhost")
	got, err := d.messagesAfter(context.Background(), "owner-token", room, "$1", "@bot:localhost")
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, []string{"first", "second"}) {
		t.Fatalf("got %q", got)
	}
	if gotAuth != "Bearer owner-token" || !strings.HasPrefix(gotPath, "/_matrix/client/v3/rooms/") || !strings.HasSuffix(gotPath, "/messages") {
		t.Fatalf("request %q %q", gotAuth, gotPath)
	}
	// Our event not in the page yet: nothing is attributed to it.
	if got, err := d.messagesAfter(context.Background(), "owner-token", room, "$9", "@bot:localhost"); err != nil || got != nil {
		t.Fatalf("got %q, %v", got, err)
	}
}

func TestAliases(t *testing.T) {
	d, err := New(writeTestInfo(t, "http://hs"), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if a := d.ModerationAlias("blog"); a != "#comments_blog:localhost" {
		t.Fatal(a)
	}
	if a := d.CommentsAlias("blog", "post/1"); a != "#comments_blog_post/1:localhost" {
		t.Fatal(a)
	}
}
