package e2e

import (
	"bytes"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cactus-comments/appservice/pkg/config"
	"github.com/cactus-comments/appservice/pkg/matrix"
	"github.com/cactus-comments/appservice/pkg/mxid"
)

// Hostile remote servers. A remote server writes every top-level key of the
// events it sends, and Synapse hands those keys on to appservices as
// written: an event can carry "sender" and also "Sender" or "ſender",
// which a lenient JSON reader takes for the sender. These tests make such
// events arrive through the simulator's federation path, which applies
// them to the room by their real fields as the homeserver does. What only
// a homeserver itself could send (duplicate keys, broken bodies, huge
// transaction ids) is tested with raw requests to the gateway.

// mallory is a user of a remote server.
const mallory = "@mallory:evil.test"

// federate makes an event arrive from a remote server; pdu is its JSON as
// that server wrote it.
func (h *Harness) federate(pdu string) string {
	h.t.Helper()
	id, err := h.HS.ReceiveFederated([]byte(pdu))
	if err != nil {
		h.t.Fatalf("event from a remote server: %v", err)
	}
	return id
}

// remoteJoin has a user of a remote server join room over federation.
func (h *Harness) remoteJoin(room mxid.RoomID, user string) {
	h.t.Helper()
	h.federate(fmt.Sprintf(`{"room_id":%q,"sender":%q,"type":"m.room.member","state_key":%q,"content":{"membership":"join"}}`, room, user, user))
}

// withGatewayDown runs batch while the gateway's address answers 503,
// after a push (of primer's event, or one before it) has failed, and waits
// until the homeserver has delivered the events batch made, whose ids it
// returns. The homeserver resends them: Synapse reads them back from its
// database then.
func (h *Harness) withGatewayDown(primer func() string, batch func() []string) []string {
	h.t.Helper()
	gw := h.gateway.Swap(nil) // the harness's listener answers 503 without it
	before := len(h.HS.Transactions())
	primer()
	h.WaitSim(func() bool {
		for _, tx := range h.HS.Transactions()[before:] {
			if !tx.OK {
				return true
			}
		}
		return false
	}, 20*time.Second, "a failed push")
	ids := batch()
	h.gateway.Store(gw)
	for _, id := range ids {
		h.WaitSim(func() bool { return h.HS.Delivered(id) }, 30*time.Second, "delivery of "+id)
	}
	return ids
}

// inOneTransaction has the events batch makes reach the gateway in one
// transaction (withGatewayDown): the homeserver queues every new event
// behind the transaction it retries, and sends them together in the next.
func (h *Harness) inOneTransaction(primer func() string, batch func() []string) {
	h.t.Helper()
	ids := h.withGatewayDown(primer, batch)
	for _, tx := range h.HS.Transactions() {
		if tx.OK && slices.Contains(tx.EventIDs, ids[0]) {
			for _, id := range ids {
				if !slices.Contains(tx.EventIDs, id) {
					h.t.Fatalf("transaction %s holds %v, not %s", tx.TxnID, tx.EventIDs, id)
				}
			}
			return
		}
	}
	h.t.Fatalf("no transaction delivered %s", ids[0])
}

// gatewayDeadLetters returns the reason of each event the gateway
// dead-lettered, by event id, and fails the test on any other dead letter.
func (h *Harness) gatewayDeadLetters(ids ...string) map[string]string {
	h.t.Helper()
	out := map[string]string{}
	for _, d := range h.DeadLetters() {
		found := false
		for _, id := range ids {
			if d.Source == "gateway" && bytes.Contains(d.Data, []byte(`"event_id":"`+id+`"`)) {
				out[id], found = d.Reason, true
			}
		}
		if !found {
			h.t.Errorf("unexpected dead letter from %s: %s (%.200s)", d.Source, d.Reason, d.Data)
		}
	}
	return out
}

// TestSpoofedSenderNotActedOn: Mallory's server sends an invite of the bot
// and a register command, each doubled by a sender key variant naming
// Alice, whom the bot serves, Mallory not. The gateway checks the exact
// key (Mallory); a consumer reading the variant would join Mallory's room
// or register a site in Alice's name. Both must be dead-lettered and not
// acted on, and Alice's own commands pushed in the same transaction must
// be handled.
func TestSpoofedSenderNotActedOn(t *testing.T) {
	t.Parallel()
	h := Start(t, Options{})
	h.StartBot(func(c *config.Config) { c.RegistrationRegex = `@alice:cactus\.test` })
	alice := h.User("alice")
	carol := h.User("carol")
	dm := h.DirectChat(alice)
	// A private room of Carol's, where anyone in it may invite, which
	// Mallory joins from her server.
	mallorys, err := carol.Client.CreateRoom(h.Ctx, &matrix.CreateRoomRequest{Preset: matrix.PresetPrivateChat, Invite: []string{mallory}})
	if err != nil {
		t.Fatal(err)
	}
	h.remoteJoin(mallorys, mallory)
	// A room of Alice's with the bot, which Mallory joins too.
	group, err := alice.Client.CreateRoom(h.Ctx, &matrix.CreateRoomRequest{Preset: matrix.PresetPrivateChat, Invite: []string{h.BotID.String(), mallory}})
	if err != nil {
		t.Fatal(err)
	}
	h.WaitSim(func() bool { return h.HS.Membership(group.String(), h.BotID.String()) == "join" }, 20*time.Second, "the bot in Alice's room")
	h.remoteJoin(group, mallory)

	invite := func(variant string) string {
		return fmt.Sprintf(`{"room_id":%q,"sender":%q,"type":"m.room.member","state_key":%q,%q:%q,"content":{"membership":"invite"}}`,
			mallorys, mallory, h.BotID, variant, alice.ID)
	}
	var spoofs []string
	h.inOneTransaction(func() string { return h.Say(alice, group, "hello") }, func() []string {
		help := h.Say(alice, dm, "help")
		spoofs = []string{
			h.federate(invite("Sender")),
			h.federate(invite("\u017fender")),
			h.federate(fmt.Sprintf(`{"room_id":%q,"sender":%q,"type":"m.room.message","Sender":%q,"content":{"msgtype":"m.text","body":"register spoofed"}}`,
				group, mallory, alice.ID)),
		}
		register := h.Say(alice, group, "register alicesite")
		return append([]string{help}, append(spoofs, register)...)
	})

	// Alice's commands of the same transaction were handled.
	if help := h.WaitBotMessages(dm, 1)[0]; !strings.Contains(help, "register <sitename>") {
		t.Errorf("help answered %q", help)
	}
	h.Eventually(func() bool {
		s, err := h.Registry.Site(h.Ctx, "alicesite")
		return err == nil && s.Owner == alice.ID.String()
	}, 30*time.Second, "alicesite registered for Alice")
	h.QuiesceBot(30 * time.Second)

	// Mallory's were not.
	if m := h.HS.Membership(mallorys.String(), h.BotID.String()); m != "invite" {
		t.Errorf("the bot's membership in Mallory's room is %q: a spoofed invite was acted on", m)
	}
	if _, err := h.Registry.Site(h.Ctx, "spoofed"); err == nil {
		t.Error("a site was registered in Alice's name by Mallory")
	}
	for _, m := range h.BotMessages(group) {
		if strings.Contains(m, "spoofed") {
			t.Errorf("the bot answered a spoofed command: %q", m)
		}
	}
	reasons := h.gatewayDeadLetters(spoofs...)
	for _, id := range spoofs {
		if r, ok := reasons[id]; !ok || !strings.Contains(r, `"sender"`) {
			t.Errorf("spoofed event %s: dead letter reason %q, want one naming the ambiguous sender", id, r)
		}
	}
}

// TestSpoofedBanNotActedOn: a moderator on a remote server bans a spammer
// in a site's moderation room, the ban doubled by a state key variant
// naming Alice, a commenter. The homeserver bans the spammer; a consumer
// reading the variant would ban Alice from every room of the site. The
// ban must be dead-lettered, and the owner's ban and Alice's comment
// pushed in the same transaction must go through.
func TestSpoofedBanNotActedOn(t *testing.T) {
	t.Parallel()
	h := Start(t, Options{})
	owner := h.User("owner")
	alice := h.User("alice")
	site, rooms := siteWithRooms(t, h, "blog", owner, alice, 2)
	mod := mxid.MustRoomID(site.ModerationRoom)
	const moderator, spammer, troll = "@mod:evil.test", "@spammer:evil.test", "@troll:evil.test"
	if err := owner.Client.Invite(h.Ctx, mod, mxid.MustUserID(moderator), ""); err != nil {
		t.Fatal(err)
	}
	h.remoteJoin(mod, moderator)
	pl, err := owner.Client.GetPowerLevels(h.Ctx, mod)
	if err != nil {
		t.Fatal(err)
	}
	pl.Users[moderator] = 50
	if _, err := owner.Client.SetPowerLevels(h.Ctx, mod, pl); err != nil {
		t.Fatal(err)
	}
	h.Quiesce(20 * time.Second)

	var spoof string
	h.inOneTransaction(func() string { return h.Say(owner, mod, "watch out") }, func() []string {
		spoof = h.federate(fmt.Sprintf(`{"room_id":%q,"sender":%q,"type":"m.room.member","state_key":%q,"State_key":%q,"content":{"membership":"ban"}}`,
			mod, moderator, spammer, alice.ID))
		if err := owner.Client.Ban(h.Ctx, mod, mxid.MustUserID(troll), "trolling"); err != nil {
			t.Fatal(err)
		}
		tl := h.HS.Timeline(mod.String())
		trollBan := tl[len(tl)-1]
		if !trollBan.StateKeyIs(troll) {
			t.Fatalf("last event of the moderation room %+v, want the troll's ban", trollBan)
		}
		comment := h.Say(alice, rooms[0], "a comment")
		return []string{spoof, trollBan.EventID, comment}
	})
	if m := h.HS.Membership(mod.String(), spammer); m != "ban" {
		t.Fatalf("the homeserver did not ban the spammer (%q)", m)
	}

	// The owner's ban went through.
	h.WaitSim(func() bool {
		for _, r := range rooms {
			if h.HS.Membership(r.String(), troll) != "ban" {
				return false
			}
		}
		return true
	}, 20*time.Second, "the troll banned from every comment room")
	h.Quiesce(20 * time.Second)

	// The spoofed one did not: Alice is still in, and nothing recorded.
	s, err := h.Registry.Site(h.Ctx, "blog")
	if err != nil {
		t.Fatal(err)
	}
	if !s.Banned(troll) {
		t.Error("the site's snapshot lacks the owner's ban")
	}
	if s.Banned(alice.ID.String()) || s.Banned(spammer) {
		t.Errorf("the site's snapshot took the spoofed ban: bans alice %v, spammer %v", s.Banned(alice.ID.String()), s.Banned(spammer))
	}
	for _, r := range rooms {
		if m := h.HS.Membership(r.String(), alice.ID.String()); m != "join" {
			t.Errorf("Alice is %q in comment room %s: the variant state key was acted on", m, r)
		}
		if m := h.HS.Membership(r.String(), spammer); m == "ban" {
			t.Errorf("the spoofed ban was propagated to %s", r)
		}
	}
	if r, ok := h.gatewayDeadLetters(spoof)[spoof]; !ok || !strings.Contains(r, `"state_key"`) {
		t.Errorf("spoofed ban: dead letter reason %q, want one naming the ambiguous state_key", r)
	}
}
