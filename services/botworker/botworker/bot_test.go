package botworker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/cactus-comments/appservice/pkg/config"
	"github.com/cactus-comments/appservice/pkg/embednats"
	"github.com/cactus-comments/appservice/pkg/event"
	"github.com/cactus-comments/appservice/pkg/matrix"
	"github.com/cactus-comments/appservice/pkg/namespace"
	"github.com/cactus-comments/appservice/pkg/registry"
	"github.com/cactus-comments/appservice/pkg/service"
	"github.com/cactus-comments/appservice/pkg/worker"
)

const (
	server = "example.org"
	botID  = "@cactusbot:example.org"
	alice  = "@alice:example.org"
	bob    = "@bob:example.org"
	dmRoom = "!dm:example.org"
)

type env struct {
	t    *testing.T
	ctx  context.Context
	bot  *Bot
	hs   *fakeHS
	rt   *service.Runtime
	reg  *registry.Registry
	seq  atomic.Int64
	cfg  *config.Config
	nats *embednats.Server
}

// Appservice tokens of the tests: long enough for the configuration checks.
const (
	testHSToken = "hs-secret-for-botworker-tests-0123456789"
	testASToken = "as-secret-for-botworker-tests-0123456789"
)

func testConfig(t *testing.T, natsURL string, mutate func(*config.Config)) *config.Config {
	t.Helper()
	cfg := &config.Config{
		HSToken: testHSToken, ASToken: testASToken, HomeserverURL: "http://127.0.0.1:9",
		PublicHomeserverURL: "https://matrix.example.org",
		UserID:              botID, NamespaceRegex: "#comments_.*", NamespacePrefix: "comments_", RegistrationRegex: "@.*:.*",
		BotDisplayName: "Cactus Comments", NATSURL: natsURL, NATSReplicas: 1,
		ListenAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0", LogFormat: "text", LogLevel: "error",
		PublishTimeout: time.Second, AliasQueryTimeout: time.Second, MaxBodyBytes: 1 << 20, BodyBytesInFlight: 8 << 20, BodyReadTimeout: 20 * time.Second, MinBodyRate: 1024, ShutdownTimeout: 5 * time.Second,
		RegistrationLimit: 10, HomeserverTimeout: 5 * time.Second, Concurrency: 4,
		RetryHorizon: time.Hour, RetryMaxBackoff: time.Second,
	}
	if mutate != nil {
		mutate(cfg)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	return cfg
}

func newEnv(t *testing.T, mutate func(*config.Config)) *env {
	t.Helper()
	ns := embednats.StartTest(t)
	cfg := testConfig(t, ns.ClientURL(), mutate)
	ctx := t.Context()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	rt, err := service.Start(ctx, Name, cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rt.Close)
	hs := newFakeHS(server, botID)
	reg, err := registry.Open(ctx, rt.JS)
	if err != nil {
		t.Fatal(err)
	}
	b, err := New(ctx, rt, Options{Homeserver: hs, Registry: reg, MinBackoff: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, ctx: ctx, bot: b, hs: hs, rt: rt, reg: reg, cfg: cfg, nats: ns}
	hs.addRoom(dmRoom, map[string]string{alice: "join", botID: "join"})
	if err := b.state.markDirect(ctx, dmRoom, alice); err != nil {
		t.Fatal(err)
	}
	return e
}

func (e *env) eventID() string { return fmt.Sprintf("$e%d", e.seq.Add(1)) }

func (e *env) message(room, sender string, content any) *event.Event {
	b, err := json.Marshal(content)
	if err != nil {
		e.t.Fatal(err)
	}
	return &event.Event{EventID: e.eventID(), Type: "m.room.message", RoomID: room, Sender: sender, Content: b, OriginServerTS: time.Now().UnixMilli()}
}

func (e *env) text(room, sender, body string) *event.Event {
	return e.message(room, sender, map[string]any{"msgtype": "m.text", "body": body})
}

// say handles a text message and fails the test on error.
func (e *env) say(room, sender, body string) *event.Event {
	e.t.Helper()
	ev := e.text(room, sender, body)
	if err := e.bot.HandleEvent(e.ctx, ev, false); err != nil {
		e.t.Fatalf("%q: %v", body, err)
	}
	return ev
}

func (e *env) last(room string) string {
	e.t.Helper()
	msgs := e.hs.messages(room)
	if len(msgs) == 0 {
		e.t.Fatalf("no message in %s", room)
	}
	return msgs[len(msgs)-1].Body
}

func (e *env) commands(kind, outcome string) float64 {
	return testutil.ToFloat64(e.bot.m.commands.WithLabelValues(kind, outcome))
}

func TestHelpAndRedelivery(t *testing.T) {
	e := newEnv(t, nil)
	ev := e.say(dmRoom, alice, "HELP")
	if got := e.last(dmRoom); !strings.Contains(got, "register <sitename>") {
		t.Fatalf("help does not explain register: %q", got)
	}
	if err := e.bot.HandleEvent(e.ctx, ev, false); err != nil {
		t.Fatal(err)
	}
	if n := len(e.hs.messages(dmRoom)); n != 1 {
		t.Fatalf("redelivered help sent %d messages, want 1", n)
	}
	if e.commands("help", outcomeOK) != 2 {
		t.Fatalf("help ok counted %v times", e.commands("help", outcomeOK))
	}
	var m dto.Metric
	if err := e.bot.m.replyLatency.WithLabelValues("help").(prometheus.Metric).Write(&m); err != nil || m.GetHistogram().GetSampleCount() == 0 {
		t.Fatalf("reply latency of help not observed (%d, %v)", m.GetHistogram().GetSampleCount(), err)
	}
}

func TestRegister(t *testing.T) {
	e := newEnv(t, nil)
	ev := e.say(dmRoom, alice, "register blog")

	mod := e.hs.roomByAlias("#comments_blog:example.org")
	if mod == nil {
		t.Fatal("no moderation room with alias #comments_blog:example.org")
	}
	req := mod.req
	checks := []struct {
		what string
		ok   bool
	}{
		{"visibility private", req.Visibility == "private"},
		{"alias name", req.RoomAliasName == "comments_blog"},
		{"name", req.Name == "blog moderation room"},
		{"topic", req.Topic != ""},
		{"invite owner", len(req.Invite) == 1 && req.Invite[0] == alice},
		{"federate", req.CreationContent["m.federate"] == true},
		{"owner at 100", req.PowerLevelContentOverride.Users[alice] == 100},
		{"bot at 100", req.PowerLevelContentOverride.Users[botID] == 100},
		{"two power level users", len(req.PowerLevelContentOverride.Users) == 2},
		{"room version named", req.RoomVersion == "10"},
	}
	for _, c := range checks {
		if !c.ok {
			t.Errorf("createRoom: %s wrong in %+v", c.what, req)
		}
	}
	state := map[string]string{}
	for _, s := range req.InitialState {
		b, _ := json.Marshal(s.Content)
		state[s.Type] = string(b)
	}
	if state["m.room.join_rules"] != `{"join_rule":"invite"}` || state["m.room.history_visibility"] != `{"history_visibility":"invited"}` {
		t.Errorf("initial state %v", state)
	}

	site, err := e.reg.Site(e.ctx, "blog")
	if err != nil {
		t.Fatal(err)
	}
	if site.Owner != alice || site.ModerationRoom != mod.id {
		t.Fatalf("registry site %+v", site)
	}
	var pl matrix.PowerLevels
	if err := json.Unmarshal(site.PowerLevels, &pl); err != nil || pl.UserLevel(alice) != 100 || pl.BanLevel() != 50 {
		t.Fatalf("registry power levels %s (%v)", site.PowerLevels, err)
	}
	if room, err := e.reg.Lookup(e.ctx, mod.id); err != nil || room.Site != "blog" {
		t.Fatalf("moderation room not indexed: %+v %v", room, err)
	}

	reply := e.hs.messages(dmRoom)
	if len(reply) != 1 {
		t.Fatalf("%d replies", len(reply))
	}
	for _, want := range []string{`"blog"`, "#comments_blog:example.org", `defaultHomeserverUrl: "https://matrix.example.org"`,
		`serverName: "example.org"`, `siteName: "blog"`, "commentSectionId", "initComments"} {
		if !strings.Contains(reply[0].Body, want) {
			t.Errorf("reply lacks %q:\n%s", want, reply[0].Body)
		}
	}
	if reply[0].MsgType != "m.text" || !strings.Contains(reply[0].FormattedBody, "<pre><code") {
		t.Errorf("reply type %q formatted %q", reply[0].MsgType, reply[0].FormattedBody)
	}
	intro := e.hs.messages(mod.id)
	if len(intro) != 1 || !strings.Contains(intro[0].Body, "moderation room") {
		t.Fatalf("moderation room messages %+v", intro)
	}

	// A redelivery does nothing new.
	if err := e.bot.HandleEvent(e.ctx, ev, false); err != nil {
		t.Fatal(err)
	}
	if n := e.hs.count("createRoom"); n != 1 {
		t.Errorf("createRoom called %d times after a redelivery", n)
	}
	if len(e.hs.messages(dmRoom)) != 1 || len(e.hs.messages(mod.id)) != 1 {
		t.Errorf("redelivery sent messages: %d %d", len(e.hs.messages(dmRoom)), len(e.hs.messages(mod.id)))
	}
	if e.commands("register", outcomeCreated) != 1 || e.commands("register", outcomeRedelivered) != 1 {
		t.Errorf("metrics created %v redelivered %v", e.commands("register", outcomeCreated), e.commands("register", outcomeRedelivered))
	}

	// The same owner again, as a new command.
	e.say(dmRoom, alice, "register blog")
	if got := e.last(dmRoom); !strings.Contains(got, "already registered") {
		t.Errorf("second register by owner: %q", got)
	}
	// Someone else.
	bobDM := "!bobdm:example.org"
	e.hs.addRoom(bobDM, map[string]string{bob: "join", botID: "join"})
	e.say(bobDM, bob, "register blog")
	if got := e.last(bobDM); !strings.Contains(got, "already taken") {
		t.Errorf("register by another user: %q", got)
	}
	if n := e.hs.count("createRoom"); n != 1 {
		t.Errorf("createRoom called %d times, want 1", n)
	}

	// sites lists it.
	e.say(dmRoom, alice, "sites")
	if got := e.last(dmRoom); !strings.Contains(got, "blog") || !strings.Contains(got, "1 site") {
		t.Errorf("sites: %q", got)
	}
	e.say(bobDM, bob, "Sites")
	if got := e.last(bobDM); !strings.Contains(got, "not registered any") {
		t.Errorf("sites of bob: %q", got)
	}
}

func TestRegisterRefusals(t *testing.T) {
	e := newEnv(t, nil)
	tests := []struct {
		body, want, outcome string
	}{
		{"register a_b", "“_”", outcomeInvalid},
		{"register a:b", "“:”", outcomeInvalid},
		{"register #x", "sigil", outcomeInvalid},
		{"register " + strings.Repeat("x", 101), "longer than", outcomeInvalid},
		{"register cafe\u0301", "Normalization Form C", outcomeInvalid},
		{`register back\slash`, `I cannot register “back\slash”: the name may not contain “\”.`, outcomeInvalid},
		{`register a"b`, `I cannot register “a"b”: the name may not contain “"”`, outcomeInvalid},
		// The placeholder and quotes of the help, typed literally.
		{"register <mysite>", "without brackets or quotes", outcomeInvalid},
		{"register \"quoted\"", "without brackets or quotes", outcomeInvalid},
		{"register 'q'", "without brackets or quotes", outcomeInvalid},
		{"register “smart”", "without brackets or quotes", outcomeInvalid},
		{"register .", "only punctuation", outcomeInvalid},
		{"register ..", "only punctuation", outcomeInvalid},
		{"register -", "only punctuation", outcomeInvalid},
		{"register \u0301cafe", "combining mark", outcomeInvalid},
		{"register a\u0334\u0334\u0334\u0334\u0334", "more than 4 combining marks", outcomeInvalid},
		{"register", "exactly two words", outcomeUsage},
		{"register my blog", "exactly two words", outcomeUsage},
		{"sites x", "no arguments", outcomeUsage},
	}
	for _, tt := range tests {
		t.Run(tt.body, func(t *testing.T) {
			kind := strings.Fields(tt.body)[0]
			before := e.commands(kind, tt.outcome)
			e.say(dmRoom, alice, tt.body)
			got := e.last(dmRoom)
			if !strings.Contains(got, tt.want) {
				t.Fatalf("reply %q lacks %q", got, tt.want)
			}
			// Names are quoted for people, not Go-escaped.
			if strings.Contains(got, `\\`) || strings.Contains(got, `\"`) || strings.Contains(got, `\u`) {
				t.Fatalf("reply %q escapes the name", got)
			}
			if e.commands(kind, tt.outcome) != before+1 {
				t.Fatalf("outcome %s not counted", tt.outcome)
			}
		})
	}
	if n := e.hs.count("createRoom"); n != 0 {
		t.Fatalf("refused names reached the homeserver: %d createRoom calls", n)
	}
}

func TestRegisterUnicode(t *testing.T) {
	e := newEnv(t, nil)
	e.say(dmRoom, alice, "register bücher")
	if e.hs.roomByAlias("#comments_bücher:example.org") == nil {
		t.Fatalf("no room #comments_bücher:example.org; reply: %s", e.last(dmRoom))
	}
	if !strings.Contains(e.last(dmRoom), `siteName: "bücher"`) {
		t.Fatalf("snippet: %s", e.last(dmRoom))
	}
}

func TestRegistrationLimit(t *testing.T) {
	e := newEnv(t, func(c *config.Config) { c.RegistrationLimit = 2 })
	// A taken name does not count.
	e.hs.CreateRoom(e.ctx, &matrix.CreateRoomRequest{RoomAliasName: "comments_taken"})
	e.say(dmRoom, alice, "register taken")
	if !strings.Contains(e.last(dmRoom), "already taken") {
		t.Fatalf("taken: %s", e.last(dmRoom))
	}
	e.say(dmRoom, alice, "register one")
	e.say(dmRoom, alice, "register two")
	e.say(dmRoom, alice, "register three")
	if got := e.last(dmRoom); !strings.Contains(got, "2 sites") {
		t.Fatalf("third registration: %q", got)
	}
	if e.hs.roomByAlias("#comments_three:example.org") != nil {
		t.Fatal("over-limit site was created")
	}
	// Re-registering an owned site is not refused by the limit.
	e.say(dmRoom, alice, "register two")
	if got := e.last(dmRoom); !strings.Contains(got, "already registered") {
		t.Fatalf("owned site at limit: %q", got)
	}
	// Other users have their own count.
	e.hs.addRoom("!b:example.org", map[string]string{bob: "join", botID: "join"})
	e.say("!b:example.org", bob, "register three")
	if e.hs.roomByAlias("#comments_three:example.org") == nil {
		t.Fatal("bob's site was refused")
	}
}

func TestRegisterRecoversAfterCrash(t *testing.T) {
	e := newEnv(t, nil)
	// The room is created, then reading its power levels fails: the
	// registration stops before the registry write.
	e.hs.setFail(func(ep string) error {
		if ep == "getState" {
			return mErr(http.StatusBadGateway, "", "bad gateway")
		}
		return nil
	})
	ev := e.text(dmRoom, alice, "register blog")
	err := e.bot.HandleEvent(e.ctx, ev, false)
	if err == nil || worker.IsPermanent(err) {
		t.Fatalf("want a retryable error, got %v", err)
	}
	if e.hs.roomByAlias("#comments_blog:example.org") == nil {
		t.Fatal("room not created")
	}
	if _, err := e.reg.Site(e.ctx, "blog"); !errors.Is(err, registry.ErrNotFound) {
		t.Fatalf("site recorded despite the failure: %v", err)
	}
	// Redelivery: M_ROOM_IN_USE, adopted because alice is admin there.
	e.hs.setFail(nil)
	if err := e.bot.HandleEvent(e.ctx, ev, false); err != nil {
		t.Fatal(err)
	}
	site, err := e.reg.Site(e.ctx, "blog")
	if err != nil || site.Owner != alice {
		t.Fatalf("site after recovery: %+v %v", site, err)
	}
	if !strings.Contains(e.last(dmRoom), "Done") {
		t.Fatalf("reply after recovery: %q", e.last(dmRoom))
	}
	if e.hs.count("createRoom") != 2 || len(e.hs.messages(dmRoom)) != 1 {
		t.Fatalf("createRoom %d, replies %d", e.hs.count("createRoom"), len(e.hs.messages(dmRoom)))
	}
}

func TestRegisterTakenOnHomeserverOnly(t *testing.T) {
	e := newEnv(t, nil)
	// Someone else's registration is half-way: room exists, registry not
	// yet written. Alice must not adopt it.
	e.hs.CreateRoom(e.ctx, &matrix.CreateRoomRequest{RoomAliasName: "comments_blog",
		PowerLevelContentOverride: &matrix.PowerLevels{Users: map[string]int{bob: 100, botID: 100}}})
	e.say(dmRoom, alice, "register blog")
	if got := e.last(dmRoom); !strings.Contains(got, "already taken") {
		t.Fatalf("reply %q", got)
	}
	if _, err := e.reg.Site(e.ctx, "blog"); !errors.Is(err, registry.ErrNotFound) {
		t.Fatalf("site recorded: %v", err)
	}
}

func TestRegisterHomeserverErrors(t *testing.T) {
	tests := []struct {
		name      string
		err       error
		last      bool
		wantErr   bool
		permanent bool
		reply     string
	}{
		{"refused", mErr(http.StatusForbidden, "M_FORBIDDEN", "You are not allowed to create rooms"), false, false, false, "You are not allowed to create rooms (M_FORBIDDEN)"},
		{"exclusive", mErr(http.StatusBadRequest, "M_EXCLUSIVE", "alias reserved"), false, false, false, "alias reserved"},
		{"unavailable, will retry", mErr(http.StatusBadGateway, "", "bad gateway"), false, true, false, ""},
		{"unavailable on the last delivery", mErr(http.StatusBadGateway, "", "bad gateway"), true, true, false, "could not reach the homeserver"},
		{"rate limited", &matrix.Error{Status: 429, ErrCode: "M_LIMIT_EXCEEDED", RetryAfter: 3 * time.Second}, false, true, false, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, nil)
			e.hs.setFail(func(ep string) error {
				if ep == "createRoom" {
					return tt.err
				}
				return nil
			})
			err := e.bot.HandleEvent(e.ctx, e.text(dmRoom, alice, "register blog"), tt.last)
			if (err != nil) != tt.wantErr || worker.IsPermanent(err) != tt.permanent {
				t.Fatalf("err = %v", err)
			}
			msgs := e.hs.messages(dmRoom)
			if tt.reply == "" {
				if len(msgs) != 0 {
					t.Fatalf("replied %q", msgs[0].Body)
				}
			} else if len(msgs) != 1 || !strings.Contains(msgs[0].Body, tt.reply) {
				t.Fatalf("replies %+v, want %q", msgs, tt.reply)
			}
			// A refused or abandoned registration frees its claim.
			e.hs.setFail(nil)
			e.say(dmRoom, alice, "register blog")
			if !strings.Contains(e.last(dmRoom), "Done") {
				t.Fatalf("registration after the error: %q", e.last(dmRoom))
			}
		})
	}
}

func TestIgnored(t *testing.T) {
	e := newEnv(t, func(c *config.Config) { c.RegistrationRegex = `@[a-z]+:example\.org` })
	e.say(dmRoom, alice, "register blog")
	mod := e.hs.roomByAlias("#comments_blog:example.org")
	comments := "!comments:example.org"
	e.hs.addRoom(comments, map[string]string{alice: "join", botID: "join"})
	if err := e.reg.PutRoom(e.ctx, registry.Room{Site: "blog", Section: "post", RoomID: comments}); err != nil {
		t.Fatal(err)
	}
	before := len(e.hs.sent)
	tests := []struct {
		name   string
		ev     *event.Event
		reason string
	}{
		{"own message", e.text(dmRoom, botID, "help"), ignoreOwn},
		{"notice", e.message(dmRoom, alice, map[string]any{"msgtype": "m.notice", "body": "help"}), ignoreNotice},
		{"image", e.message(dmRoom, alice, map[string]any{"msgtype": "m.image", "body": "help"}), ignoreNotText},
		{"edit", e.message(dmRoom, alice, map[string]any{"msgtype": "m.text", "body": "* help", "m.new_content": map[string]any{"msgtype": "m.text", "body": "help"}, "m.relates_to": map[string]any{"rel_type": "m.replace", "event_id": "$x"}}), ignoreEdit},
		{"sender not allowed", e.text(dmRoom, "@mallory:evil.org", "help"), ignoreSender},
		{"sender not allowed, by start anchor", e.text(dmRoom, "@Bad:example.org", "register x"), ignoreSender},
		{"comment room", e.text(comments, alice, "help"), ignoreOurRoom},
		{"moderation room", e.text(mod.id, alice, "register other"), ignoreOurRoom},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := testutil.ToFloat64(e.bot.m.ignored.WithLabelValues(tt.reason))
			if err := e.bot.HandleEvent(e.ctx, tt.ev, false); err != nil {
				t.Fatal(err)
			}
			if testutil.ToFloat64(e.bot.m.ignored.WithLabelValues(tt.reason)) != c+1 {
				t.Fatalf("not ignored as %s", tt.reason)
			}
		})
	}
	if len(e.hs.sent) != before {
		t.Fatalf("ignored messages got %d replies", len(e.hs.sent)-before)
	}
}

func TestUnknownText(t *testing.T) {
	e := newEnv(t, nil)
	group := "!group:example.org"
	e.hs.addRoom(group, map[string]string{alice: "join", bob: "join", botID: "join"})
	pair := "!pair:example.org"
	e.hs.addRoom(pair, map[string]string{alice: "join", botID: "join"})

	e.say(dmRoom, alice, "hello bot")
	if !strings.Contains(e.last(dmRoom), `"help"`) {
		t.Fatalf("DM hint: %q", e.last(dmRoom))
	}
	e.say(pair, alice, "hello")
	if len(e.hs.messages(pair)) != 1 {
		t.Fatal("two-member room without DM mark got no hint")
	}
	e.say(group, alice, "hello everyone")
	e.say(group, bob, "registerfoo bar")
	if n := len(e.hs.messages(group)); n != 0 {
		t.Fatalf("chatter in a group room got %d replies", n)
	}
	// Commands still work in a group room, also when addressed.
	e.say(group, bob, "cactusbot: help")
	if n := len(e.hs.messages(group)); n != 1 {
		t.Fatalf("addressed help in group: %d replies", n)
	}
	if e.commands("unknown", outcomeSilent) != 2 {
		t.Fatalf("silent unknown counted %v", e.commands("unknown", outcomeSilent))
	}
}

func TestInvites(t *testing.T) {
	invite := func(e *env, room, sender string, direct bool) *event.Event {
		content, _ := json.Marshal(event.Member{Membership: "invite", IsDirect: direct})
		sk := botID
		return &event.Event{EventID: e.eventID(), Type: "m.room.member", RoomID: room, Sender: sender, StateKey: &sk, Content: content}
	}
	tests := []struct {
		name       string
		sender     string
		direct     bool
		exists     bool
		fail       error
		membership string
		outcome    string
		wantErr    bool
	}{
		{"DM from allowed user", alice, true, true, nil, "join", "joined", false},
		{"room from allowed user", alice, false, true, nil, "join", "joined", false},
		{"from a user not allowed", "@mallory:evil.org", true, true, nil, "leave", "rejected", false},
		{"withdrawn", alice, true, false, nil, "", "failed", false},
		{"homeserver down", alice, true, true, mErr(http.StatusServiceUnavailable, "", "down"), "invite", "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, func(c *config.Config) { c.RegistrationRegex = `@.*:example\.org` })
			room := "!invited:example.org"
			if tt.exists {
				e.hs.addRoom(room, map[string]string{tt.sender: "join", botID: "invite"})
			}
			e.hs.setFail(func(ep string) error {
				if ep == "join" || ep == "leave" {
					return tt.fail
				}
				return nil
			})
			err := e.bot.HandleEvent(e.ctx, invite(e, room, tt.sender, tt.direct), false)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v", err)
			}
			if got := e.hs.membership(room, botID); got != tt.membership {
				t.Fatalf("bot membership %q, want %q", got, tt.membership)
			}
			if tt.outcome != "" && testutil.ToFloat64(e.bot.m.invites.WithLabelValues(tt.outcome)) != 1 {
				t.Fatalf("outcome %s not counted", tt.outcome)
			}
			direct, err := e.bot.state.isDirect(e.ctx, room)
			if err != nil {
				t.Fatal(err)
			}
			if want := tt.direct && tt.outcome == "joined"; direct != want && tt.outcome != "failed" && !tt.wantErr {
				t.Fatalf("direct mark %v, want %v", direct, want)
			}
		})
	}
}

func TestLeaveForgetsDirect(t *testing.T) {
	e := newEnv(t, nil)
	sk := botID
	ev := &event.Event{EventID: "$leave", Type: "m.room.member", RoomID: dmRoom, Sender: alice, StateKey: &sk, Content: []byte(`{"membership":"leave"}`)}
	if err := e.bot.HandleEvent(e.ctx, ev, false); err != nil {
		t.Fatal(err)
	}
	if d, err := e.bot.state.isDirect(e.ctx, dmRoom); err != nil || d {
		t.Fatalf("still direct: %v %v", d, err)
	}
}

func TestSetup(t *testing.T) {
	e := newEnv(t, func(c *config.Config) { c.BotAvatarURL = "mxc://example.org/cactus" })
	if err := e.bot.Setup(e.ctx); err != nil {
		t.Fatal(err)
	}
	if e.hs.profile["displayname"] != "Cactus Comments" || e.hs.profile["avatar_url"] != "mxc://example.org/cactus" || e.hs.profiles != 2 {
		t.Fatalf("profile %v after %d writes", e.hs.profile, e.hs.profiles)
	}
	// Again: the user exists (M_USER_IN_USE) and the profile is unchanged.
	if err := e.bot.Setup(e.ctx); err != nil {
		t.Fatal(err)
	}
	if e.hs.profiles != 2 || e.hs.count("register") != 2 {
		t.Fatalf("second set-up wrote the profile again (%d writes)", e.hs.profiles)
	}

	// A refusal is returned; an outage is waited out.
	e.hs.setFail(func(ep string) error {
		if ep == "register" {
			return mErr(http.StatusUnauthorized, "M_UNKNOWN_TOKEN", "bad token")
		}
		return nil
	})
	if err := e.bot.Setup(e.ctx); err == nil || !strings.Contains(err.Error(), "M_UNKNOWN_TOKEN") {
		t.Fatalf("refused set-up: %v", err)
	}
	fails := 2
	e.hs.setFail(func(ep string) error {
		if ep == "register" && fails > 0 {
			fails--
			return mErr(http.StatusBadGateway, "", "down")
		}
		return nil
	})
	if err := e.bot.Setup(e.ctx); err != nil {
		t.Fatalf("set-up after an outage: %v", err)
	}
}

func TestTxnID(t *testing.T) {
	a, b := txnID("$a", "reply"), txnID("$b", "reply")
	if a == b || a != txnID("$a", "reply") || a == txnID("$a", "intro") {
		t.Fatalf("txn ids not derived per event and purpose: %s %s", a, b)
	}
	for _, c := range a {
		if !strings.ContainsRune("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.", c) {
			t.Fatalf("txn id %q holds %q", a, c)
		}
	}
}

func TestSnippetEscapes(t *testing.T) {
	tx := texts{ServerName: server, PublicURL: "https://hs.example.org", ClientScript: defaultClientScript, ClientStyle: defaultClientStyle}
	s := tx.snippet(`a"</script><b>`)
	if strings.Count(s, "</script>") != 2 || strings.Contains(s, `"a"<`) {
		t.Fatalf("site name breaks out of the snippet:\n%s", s)
	}
	if !strings.Contains(s, `siteName: "a\"\u003c/script\u003e\u003cb\u003e"`) {
		t.Fatalf("site name not escaped as a JS string:\n%s", s)
	}
}

// The registry knows a site the bot state does not (rebuilt from the
// homeserver, or the state bucket lost): the owner hears they own it, even
// at their limit, and nobody else can take it.
func TestRegisterSiteOnlyInRegistry(t *testing.T) {
	e := newEnv(t, func(c *config.Config) { c.RegistrationLimit = 1 })
	e.say(dmRoom, alice, "register first")
	mod, err := e.hs.CreateRoom(e.ctx, &matrix.CreateRoomRequest{RoomAliasName: "comments_rebuilt"})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.reg.CreateSite(e.ctx, &registry.Site{Name: "rebuilt", Owner: alice, ModerationRoom: mod.String()}); err != nil {
		t.Fatal(err)
	}
	e.say(dmRoom, alice, "register rebuilt")
	if got := e.last(dmRoom); !strings.Contains(got, "already registered") {
		t.Fatalf("owner: %q", got)
	}
	e.hs.addRoom("!b:example.org", map[string]string{bob: "join", botID: "join"})
	e.say("!b:example.org", bob, "register rebuilt")
	if got := e.last("!b:example.org"); !strings.Contains(got, "already taken") {
		t.Fatalf("other user: %q", got)
	}
}

// A registration interrupted after the registry write, before its claim
// was completed: the redelivery finishes it with the usual replies.
func TestRegisterRedeliveredAfterRegistryWrite(t *testing.T) {
	e := newEnv(t, nil)
	ev := e.text(dmRoom, alice, "register blog")
	if _, _, err := e.bot.state.claim(e.ctx, alice, "blog", ev.EventID, 10, false); err != nil {
		t.Fatal(err)
	}
	mod, err := e.hs.CreateRoom(e.ctx, e.bot.moderationRoomRequest("blog", alice, "10"))
	if err != nil {
		t.Fatal(err)
	}
	if err := e.reg.CreateSite(e.ctx, &registry.Site{Name: "blog", Owner: alice, ModerationRoom: mod.String()}); err != nil {
		t.Fatal(err)
	}
	if err := e.bot.HandleEvent(e.ctx, ev, false); err != nil {
		t.Fatal(err)
	}
	if got := e.last(dmRoom); !strings.Contains(got, "Done") {
		t.Fatalf("reply %q", got)
	}
	if n := len(e.hs.messages(mod.String())); n != 1 {
		t.Fatalf("%d messages in the moderation room", n)
	}
	if e.hs.count("createRoom") != 1 {
		t.Fatalf("createRoom called again")
	}
}

// The help and the embed instructions list the characters the rules refuse.
func TestTextsListReservedCharacters(t *testing.T) {
	tx := texts{ServerName: server, Namespace: namespace.Namespace{Prefix: "comments_", Server: server}}
	help := tx.help().Body
	for _, r := range namespace.SiteNameReserved {
		if !strings.Contains(help, " "+string(r)+" ") {
			t.Errorf("help does not list %q:\n%s", r, help)
		}
	}
	created := tx.created("blog").Body
	for _, r := range namespace.SectionIDReserved {
		if !strings.Contains(created, " "+string(r)) {
			t.Errorf("embed instructions do not list %q:\n%s", r, created)
		}
	}
}

// TestUndecodableContentDeadLettered: content that does not decode as its
// event type requires is a permanent failure (dead-lettered with the
// reason), not a silent drop; values that decode but mean nothing to the
// bot stay ignored.
func TestUndecodableContentDeadLettered(t *testing.T) {
	e := newEnv(t, nil)
	member := func(content string) *event.Event {
		bot := botID
		return &event.Event{EventID: e.eventID(), Type: "m.room.member", RoomID: dmRoom, Sender: alice, StateKey: &bot, Content: []byte(content)}
	}
	bad := map[string]*event.Event{
		"content not an object": {EventID: "$bad", Type: "m.room.message", RoomID: dmRoom, Sender: alice, Content: []byte(`"x"`)},
		"body a number":         e.message(dmRoom, alice, map[string]any{"msgtype": "m.text", "body": 5}),
		"body an object":        e.message(dmRoom, alice, map[string]any{"msgtype": "m.text", "body": map[string]any{"x": "help"}}),
		"msgtype a number":      e.message(dmRoom, alice, map[string]any{"msgtype": 1, "body": "help"}),
		"membership a number":   member(`{"membership":1}`),
		"membership an object":  member(`{"membership":{"invite":true}}`),
	}
	for name, ev := range bad {
		if err := e.bot.HandleEvent(e.ctx, ev, false); !worker.IsPermanent(err) {
			t.Errorf("%s: %v, want a permanent failure", name, err)
		}
	}
	ignored := map[string]*event.Event{
		"unknown msgtype":    e.message(dmRoom, alice, map[string]any{"msgtype": "m.weird", "body": "help"}),
		"unknown membership": member(`{"membership":"INVITE"}`),
	}
	for name, ev := range ignored {
		if err := e.bot.HandleEvent(e.ctx, ev, false); err != nil {
			t.Errorf("%s: %v, want ignored", name, err)
		}
	}
}
