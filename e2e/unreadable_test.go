package e2e

import (
	"bytes"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestUnreadableBanIsDeadLettered: a member event in a moderation room
// whose content does not read as a membership (a membership that is no
// string, none at all) ends in the dead-letter stream with its reason,
// where an operator sees it; it does not vanish among the events no
// worker reads. A ban whose reason is no string is still a ban (the
// homeserver's auth rules read only the membership): it is carried out.
// The homeserver is not the simulator here: a remote server chooses such
// content, and the gateway sees it as pushed.
func TestUnreadableBanIsDeadLettered(t *testing.T) {
	t.Parallel()
	h := Start(t, Options{})
	owner := h.User("owner")
	site := h.RegisterSite("blog", owner)
	contents := []string{
		`{"membership":["ban"]}`,
		`{"membership":null}`,
		`{"membership":"ban","reason":7}`, // carried out, not dead-lettered
	}
	var events []string
	for i, c := range contents {
		events = append(events, fmt.Sprintf(`{"type":"m.room.member","event_id":"$unreadable%d","room_id":%q,"sender":%q,"state_key":"@troll%d:example.org","origin_server_ts":1700000000000,"content":%s}`,
			i, site.ModerationRoom, owner.ID, i, c))
	}
	body := `{"events":[` + strings.Join(events, ",") + `]}`
	req, err := http.NewRequestWithContext(h.Ctx, http.MethodPut, h.GatewayURL+"/_matrix/app/v1/transactions/unreadable", bytes.NewBufferString(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+testHSToken)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("transaction answered %d", resp.StatusCode)
	}
	h.Quiesce(30 * time.Second)
	n := 0
	for _, dl := range h.DeadLetters() {
		if strings.Contains(dl.Reason, "unreadable membership") && strings.Contains(string(dl.Data), "$unreadable") {
			n++
		}
	}
	if n != 2 {
		t.Fatalf("%d dead letters of unreadable bans, want 2", n)
	}
	s, err := h.Registry.Site(h.Ctx, site.Name)
	if err != nil {
		t.Fatal(err)
	}
	if !s.Banned("@troll2:example.org") || s.Banned("@troll0:example.org") || s.Banned("@troll1:example.org") {
		t.Errorf("site bans after the transaction: troll0 %v, troll1 %v, troll2 %v; want only troll2",
			s.Banned("@troll0:example.org"), s.Banned("@troll1:example.org"), s.Banned("@troll2:example.org"))
	}
}
