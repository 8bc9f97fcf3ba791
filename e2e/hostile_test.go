package e2e

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/cactus-comments/appservice/pkg/config"
	"github.com/cactus-comments/appservice/pkg/matrix"
)

// pushTransaction sends a transaction to the gateway as the homeserver
// would, with a body the test writes byte for byte: the simulator only
// sends well-formed events, and a remote server controls the keys of the
// events it sends.
func (h *Harness) pushTransaction(txnID string, events ...string) {
	h.t.Helper()
	body := []byte(`{"events":[` + strings.Join(events, ",") + `]}`)
	req, err := http.NewRequestWithContext(h.Ctx, http.MethodPut, h.GatewayURL+"/_matrix/app/v1/transactions/"+txnID, bytes.NewReader(body))
	if err != nil {
		h.t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+testHSToken)
	resp, err := h.httpc.Do(req)
	if err != nil {
		h.t.Fatal(err)
	}
	out, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		h.t.Fatalf("transaction %s: %d %s", txnID, resp.StatusCode, out)
	}
}

// TestSpoofedSenderNotActedOn: an invite to the bot whose sender key is
// doubled by a variant an encoding/json reader folds onto "sender". The
// gateway reads the exact key (Mallory, who may not talk to the bot); a
// consumer reading the last matching key would see Alice, who may, and
// join Mallory's room. The event must be dead-lettered, not acted on.
func TestSpoofedSenderNotActedOn(t *testing.T) {
	t.Parallel()
	h := Start(t, Options{})
	h.StartBot(func(c *config.Config) { c.RegistrationRegex = `@alice:cactus\.test` })
	mallory := h.User("mallory")
	alice := h.User("alice")
	room, err := mallory.Client.CreateRoom(h.Ctx, &matrix.CreateRoomRequest{Preset: matrix.PresetPublicChat})
	if err != nil {
		t.Fatal(err)
	}
	invite := func(id, spoofKey string) string {
		return fmt.Sprintf(`{"event_id":%q,"type":"m.room.member","room_id":%q,"sender":%q,%q:%q,"state_key":%q,`+
			`"content":{"membership":"invite"},"origin_server_ts":%d}`,
			id, room, mallory.ID, spoofKey, alice.ID, h.BotID, time.Now().UnixMilli())
	}
	h.pushTransaction("spoof-1", invite("$spoof-case", "Sender"))
	h.pushTransaction("spoof-2", invite("$spoof-fold", "\u017fender"))
	// Registering a site in Alice's name from her direct chat with the bot.
	dm := h.DirectChat(alice)
	h.pushTransaction("spoof-3", fmt.Sprintf(`{"event_id":"$spoof-register","type":"m.room.message","room_id":%q,"sender":%q,"Sender":%q,`+
		`"content":{"msgtype":"m.text","body":"register spoofed"},"origin_server_ts":%d}`, dm, mallory.ID, alice.ID, time.Now().UnixMilli()))
	h.QuiesceBot(30 * time.Second)

	if m := h.HS.Membership(room.String(), h.BotID.String()); m == "join" {
		t.Fatalf("the bot joined Mallory's room on a spoofed invite")
	}
	if _, err := h.Registry.Site(h.Ctx, "spoofed"); err == nil {
		t.Fatalf("a site was registered in Alice's name by Mallory")
	}
	if got := h.BotMessages(dm); len(got) != 0 {
		t.Fatalf("the bot answered a spoofed command: %q", got)
	}
	var reasons []string
	for _, d := range h.DeadLetters() {
		if d.Source == "gateway" {
			reasons = append(reasons, d.Reason)
		}
	}
	if len(reasons) != 3 {
		t.Fatalf("gateway dead letters %q, want the three spoofed events", reasons)
	}
	for _, r := range reasons {
		if !strings.Contains(r, "sender") {
			t.Errorf("dead letter reason %q does not name the ambiguous key", r)
		}
	}
}
