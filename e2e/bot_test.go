package e2e

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cactus-comments/appservice/pkg/config"
	"github.com/cactus-comments/appservice/pkg/hssim"
	"github.com/cactus-comments/appservice/pkg/matrix"
	"github.com/cactus-comments/appservice/pkg/power"
)

// A site owner's whole first conversation with the bot.
func TestBotDirectChatHelpRegister(t *testing.T) {
	t.Parallel()
	h := Start(t, Options{})
	h.StartBot(nil)
	owner := h.User("owner")
	dm := h.DirectChat(owner)

	h.Say(owner, dm, "help")
	help := h.WaitBotMessages(dm, 1)[0]
	containsAll(t, "help", help, "register <sitename>", "sites", "https://cactus.chat/docs")

	h.Say(owner, dm, "register blog")
	reply := h.WaitBotMessages(dm, 2)[1]
	containsAll(t, "register reply", reply, `"blog"`, "#comments_blog:cactus.test", "initComments(",
		`defaultHomeserverUrl: "`+h.HS.URL()+`"`, `serverName: "cactus.test"`, `siteName: "blog"`, "commentSectionId")

	mod, ok := h.ModerationRoomOf("blog")
	if !ok {
		t.Fatal("no moderation alias #comments_blog:cactus.test")
	}
	checks := []struct {
		typ, field, want string
	}{
		{"m.room.join_rules", "join_rule", "invite"},
		{"m.room.history_visibility", "history_visibility", "invited"},
		{"m.room.name", "name", "blog moderation room"},
		{"m.room.canonical_alias", "alias", "#comments_blog:cactus.test"},
	}
	for _, c := range checks {
		raw, ok := h.HS.StateEvent(mod.String(), c.typ, "")
		var m map[string]any
		if !ok || json.Unmarshal(raw, &m) != nil || m[c.field] != c.want {
			t.Errorf("%s = %s, want %s %q", c.typ, raw, c.field, c.want)
		}
	}
	if raw, ok := h.HS.StateEvent(mod.String(), "m.room.topic", ""); !ok || len(raw) < 20 {
		t.Errorf("topic %s", raw)
	}
	if raw, _ := h.HS.StateEvent(mod.String(), "m.room.create", ""); !strings.Contains(string(raw), `"m.federate":true`) {
		t.Errorf("create content %s", raw)
	}
	if got := h.HS.PowerLevel(mod.String(), owner.ID.String()); got != 100 {
		t.Errorf("owner power level %d, want 100", got)
	}
	// From version 12 the bot, the room's creator, has infinite power.
	if got, want := h.HS.PowerLevel(mod.String(), h.BotID.String()), power.UserLevel(h.RoomOf(mod), nil, h.BotID.String()); got != want {
		t.Errorf("bot power level %d, want %d", got, want)
	}
	if got := h.HS.Membership(mod.String(), owner.ID.String()); got != "invite" {
		t.Errorf("owner membership %q, want invite", got)
	}
	if intro := h.WaitBotMessages(mod, 1); !strings.Contains(intro[0], "moderation room") {
		t.Errorf("moderation room explanation: %q", intro[0])
	}
	site, err := h.Registry.Site(h.Ctx, "blog")
	if err != nil || site.Owner != owner.ID.String() || site.ModerationRoom != mod.String() {
		t.Fatalf("registry: %+v %v", site, err)
	}

	// The owner can now use the site: a visitor opening a page gets a
	// comment room governed by the moderation room.
	visitor := h.User("visitor")
	room := h.Join(visitor, h.CommentAlias("blog", "first-post"))
	if got := h.HS.PowerLevel(room.String(), owner.ID.String()); got != 100 {
		t.Errorf("owner level in the comment room %d", got)
	}

	h.Say(owner, dm, "sites")
	containsAll(t, "sites", h.WaitBotMessages(dm, 3)[2], "blog", "#comments_blog:cactus.test")

	// Someone else cannot take the name, nor give bad ones.
	other := h.User("other")
	odm := h.DirectChat(other)
	for i, c := range []struct{ body, want string }{
		{"register blog", "already taken"},
		{"register a_b", "“_”"},
		{"register", "register <sitename>"},
		{"REGISTER  my blog", "register <sitename>"},
		{"what now?", `"help"`},
	} {
		h.Say(other, odm, c.body)
		if got := h.WaitBotMessages(odm, i+1)[i]; !strings.Contains(got, c.want) {
			t.Errorf("%q answered %q, want it to contain %q", c.body, got, c.want)
		}
	}
	if _, ok := h.ModerationRoomOf("a_b"); ok {
		t.Error("a_b reached the homeserver")
	}
	if n := len(h.HS.Aliases()); n != 2 {
		t.Errorf("aliases %v", h.HS.Aliases())
	}
}

// A redelivered register creates no second room and no second reply.
func TestBotRedeliveredRegister(t *testing.T) {
	t.Parallel()
	h := Start(t, Options{})
	h.StartBot(nil)
	owner := h.User("owner")
	dm := h.DirectChat(owner)
	ev := h.Say(owner, dm, "register blog")
	h.WaitBotMessages(dm, 1)
	mod, _ := h.ModerationRoomOf("blog")
	h.WaitBotMessages(mod, 1)
	rooms := len(h.HS.Rooms())
	creates := h.HS.Calls(hssim.EPCreateRoom)

	h.Redeliver(dm, ev)
	h.Redeliver(dm, ev)
	h.QuiesceBot(20 * time.Second)

	if got := h.BotMessages(dm); len(got) != 1 {
		t.Errorf("%d replies in the DM after redelivery: %q", len(got), got)
	}
	if got := h.BotMessages(mod); len(got) != 1 {
		t.Errorf("%d messages in the moderation room after redelivery", len(got))
	}
	if len(h.HS.Rooms()) != rooms || h.HS.Calls(hssim.EPCreateRoom) != creates {
		t.Errorf("redelivery created rooms: %d -> %d rooms, %d -> %d createRoom calls",
			rooms, len(h.HS.Rooms()), creates, h.HS.Calls(hssim.EPCreateRoom))
	}
	sites, err := h.Registry.SitesOwnedBy(h.Ctx, owner.ID.String())
	if err != nil || len(sites) != 1 {
		t.Errorf("sites %v %v", sites, err)
	}
}

// What the bot must not answer.
func TestBotIgnores(t *testing.T) {
	t.Parallel()
	h := Start(t, Options{})
	h.StartBot(func(c *config.Config) { c.RegistrationRegex = `@owner:cactus\.test` })
	owner := h.User("owner")
	dm := h.DirectChat(owner)
	stranger := h.User("stranger")

	// An invite from someone who may not register is rejected.
	sdm, err := stranger.Client.CreateRoom(h.Ctx, &matrix.CreateRoomRequest{Preset: matrix.PresetTrustedPrivateChat, IsDirect: true, Invite: []string{h.BotID.String()}})
	if err != nil {
		t.Fatal(err)
	}
	h.WaitSim(func() bool { return h.HS.Membership(sdm.String(), h.BotID.String()) == "leave" }, 20*time.Second, "the bot to reject the stranger's invite")

	// A group room with the owner and the stranger.
	group, err := owner.Client.CreateRoom(h.Ctx, &matrix.CreateRoomRequest{Invite: []string{h.BotID.String(), stranger.ID.String()}})
	if err != nil {
		t.Fatal(err)
	}
	h.WaitSim(func() bool { return h.HS.Membership(group.String(), h.BotID.String()) == "join" }, 20*time.Second, "the bot to join the group")
	if _, err := stranger.Client.JoinRoom(h.Ctx, group.String()); err != nil {
		t.Fatal(err)
	}

	h.Say(owner, dm, "register blog")
	h.WaitBotMessages(dm, 1)
	mod, _ := h.ModerationRoomOf("blog")
	if _, err := owner.Client.JoinRoom(h.Ctx, mod.String()); err != nil {
		t.Fatal(err)
	}
	comments := h.Join(owner, h.CommentAlias("blog", "post"))
	h.WaitBotMessages(mod, 1)

	h.Say(stranger, group, "help")            // sender not allowed
	h.Say(owner, group, "nice weather today") // chatter outside a DM
	h.Say(owner, comments, "help")            // comment room
	h.Say(owner, comments, "register other")  // comment room
	h.Say(owner, mod, "help")                 // moderation room
	h.SendContent(owner, dm, map[string]any{"msgtype": "m.notice", "body": "help"})
	h.SendContent(owner, dm, map[string]any{"msgtype": "m.emote", "body": "help"})
	h.SendContent(owner, dm, map[string]any{"msgtype": "m.text", "body": "* help",
		"m.new_content": map[string]any{"msgtype": "m.text", "body": "help"},
		"m.relates_to":  map[string]any{"rel_type": "m.replace", "event_id": "$whatever"}})
	// The bot's own text in the DM: answering it would loop.
	if _, err := h.Bot.SendText(h.Ctx, dm, "e2e-bot-self", "help"); err != nil {
		t.Fatal(err)
	}
	h.QuiesceBot(20 * time.Second)

	if got := h.BotMessages(group); len(got) != 0 {
		t.Errorf("bot spoke in the group: %q", got)
	}
	if got := h.BotMessages(comments); len(got) != 0 {
		t.Errorf("bot spoke in the comment room: %q", got)
	}
	if got := h.BotMessages(mod); len(got) != 1 {
		t.Errorf("bot spoke in the moderation room: %q", got)
	}
	if got := h.BotMessages(dm); len(got) != 2 { // the reply to register, and its own "help"
		t.Errorf("DM has %d bot messages: %q", len(got), got)
	}
	if got := h.BotMessages(sdm); len(got) != 0 {
		t.Errorf("bot spoke to the stranger: %q", got)
	}

	// Commands addressed to the bot in the group still work.
	h.Say(owner, group, "cactusbot: help")
	h.WaitBotMessages(group, 1)
}

// Site names outside ASCII are registered as the homeserver takes them.
func TestBotUnicodeSiteName(t *testing.T) {
	t.Parallel()
	h := Start(t, Options{})
	h.StartBot(nil)
	owner := h.User("owner")
	dm := h.DirectChat(owner)
	h.Say(owner, dm, "register bücher")
	reply := h.WaitBotMessages(dm, 1)[0]
	containsAll(t, "reply", reply, `siteName: "bücher"`, "#comments_bücher:cactus.test")
	if !slices.Contains(h.HS.Aliases(), "#comments_bücher:cactus.test") {
		t.Fatalf("aliases %v", h.HS.Aliases())
	}
	visitor := h.User("visitor")
	room := h.Join(visitor, h.CommentAlias("bücher", "kapitel-1"))
	if room.IsZero() {
		t.Fatal("no comment room")
	}
	// A name the homeserver could not take is refused by the bot first.
	h.Say(owner, dm, "register bü:cher")
	if got := h.WaitBotMessages(dm, 2)[1]; !strings.Contains(got, "“:”") {
		t.Errorf("reply %q", got)
	}
}

// Commands of one room are answered in the order they were sent, also
// when several replicas share the work.
func TestBotCommandOrder(t *testing.T) {
	t.Parallel()
	h := Start(t, Options{Concurrency: 4})
	h.StartBot(nil)
	h.StartBot(nil)
	h.StartBot(nil)
	owner := h.User("owner")
	dm := h.DirectChat(owner)
	sent := []string{"help", "sites", "register one", "sites", "register two", "sites", "bogus", "register one"}
	for _, c := range sent {
		h.Say(owner, dm, c)
	}
	got := h.WaitBotMessages(dm, len(sent))
	want := []string{"register <sitename>", "not registered any", "Done", "1 site", "Done", "2 sites", `"help"`, "already registered"}
	for i, w := range want {
		if !strings.Contains(got[i], w) {
			t.Errorf("reply %d to %q is %q, want %q", i, sent[i], got[i], w)
		}
	}
}

// Several replicas share the owners' commands: every command is answered
// exactly once.
func TestBotReplicas(t *testing.T) {
	t.Parallel()
	h := Start(t, Options{Concurrency: 4})
	h.StartBot(nil)
	h.StartBot(nil)
	h.StartBot(nil)
	const owners = 6
	users, dms := h.Owners(owners)
	for i := range owners {
		h.Say(users[i], dms[i], fmt.Sprintf("register site%d", i))
		h.Say(users[i], dms[i], "help")
	}
	for i := range owners {
		h.WaitBotMessages(dms[i], 2)
	}
	h.QuiesceBot(20 * time.Second)
	for i := range owners {
		if got := h.BotMessages(dms[i]); len(got) != 2 {
			t.Errorf("owner %d got %d replies", i, len(got))
		}
		if _, ok := h.ModerationRoomOf(fmt.Sprintf("site%d", i)); !ok {
			t.Errorf("site%d has no moderation room", i)
		}
	}
}

// The bot works the same behind each homeserver the simulator imitates.
func TestBotHomeserverModes(t *testing.T) {
	t.Parallel()
	for _, mode := range []hssim.Mode{hssim.Synapse, hssim.Dendrite, hssim.Conduit} {
		t.Run(string(mode), func(t *testing.T) {
			t.Parallel()
			h := Start(t, Options{Mode: mode})
			h.StartBot(nil)
			owner := h.User("owner")
			dm := h.DirectChat(owner)
			h.Say(owner, dm, "help")
			h.Say(owner, dm, "register blog")
			got := h.WaitBotMessages(dm, 2)
			containsAll(t, "help", got[0], "register <sitename>")
			containsAll(t, "register", got[1], `siteName: "blog"`)
			mod, ok := h.ModerationRoomOf("blog")
			if !ok || h.HS.PowerLevel(mod.String(), owner.ID.String()) != 100 {
				t.Fatalf("moderation room %v, owner level %d", ok, h.HS.PowerLevel(mod.String(), owner.ID.String()))
			}
		})
	}
}

// A command that fails for a while (the homeserver answers 502) and is
// retried is still answered before the next command of its room, with one
// replica (where the retry queues behind the next command) or several.
func TestBotOrderAfterRetry(t *testing.T) {
	t.Parallel()
	for _, replicas := range []int{1, 2, 3} {
		t.Run(fmt.Sprintf("replicas=%d", replicas), func(t *testing.T) {
			t.Parallel()
			h := Start(t, Options{Concurrency: 2})
			for range replicas {
				h.StartBot(nil)
			}
			owner := h.User("owner")
			dm := h.DirectChat(owner)
			// Enough failures to exhaust the client's own attempts once.
			h.HS.InjectFault(hssim.Fault{Endpoint: hssim.EPCreateRoom, Times: matrix.DefaultMaxAttempts, Status: 502})
			h.Say(owner, dm, "register one")
			h.Say(owner, dm, "sites")
			got := h.WaitBotMessages(dm, 2)
			if !strings.Contains(got[0], "Done") || !strings.Contains(got[1], "1 site") {
				t.Fatalf("replies out of order: %q", got)
			}
			if dl := h.DeadLetters(); len(dl) != 0 {
				t.Fatalf("dead letters: %+v", dl)
			}
		})
	}
}
