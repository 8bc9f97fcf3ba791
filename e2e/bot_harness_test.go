package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/cactus-comments/appservice/pkg/bus"
	"github.com/cactus-comments/appservice/pkg/config"
	"github.com/cactus-comments/appservice/pkg/event"
	"github.com/cactus-comments/appservice/pkg/matrix"
	"github.com/cactus-comments/appservice/pkg/mxid"
	"github.com/cactus-comments/appservice/pkg/service"
	"github.com/cactus-comments/appservice/services/botworker/botworker"
)

// Additions to the harness for the botworker's tests.

var botSeq atomic.Int64

// StartBot starts one botworker replica (after its start-up set-up) and
// returns it. mutate, if set, changes its copy of the configuration.
func (h *Harness) StartBot(mutate func(*config.Config)) *botworker.Bot {
	h.t.Helper()
	return h.startBot(mutate, nil)
}

// ReplyWatch counts the messages a botworker had accepted by the
// homeserver, per room, and lets many waiters wait for them cheaply (the
// simulator's Timeline copies a whole room under its lock, which distorts
// load measurements when hundreds of waiters re-check on every change).
type ReplyWatch struct {
	botworker.Homeserver
	mu      sync.Mutex
	counts  map[string]int
	changed chan struct{}
}

func (w *ReplyWatch) SendEvent(ctx context.Context, room mxid.RoomID, typ, txn string, content any) (mxid.EventID, error) {
	id, err := w.Homeserver.SendEvent(ctx, room, typ, txn, content)
	if err == nil {
		w.mu.Lock()
		w.counts[room.String()]++
		close(w.changed)
		w.changed = make(chan struct{})
		w.mu.Unlock()
	}
	return id, err
}

// Wait waits until n sends to room succeeded.
func (w *ReplyWatch) Wait(ctx context.Context, room mxid.RoomID, n int) error {
	for {
		w.mu.Lock()
		c, ch := w.counts[room.String()], w.changed
		w.mu.Unlock()
		if c >= n {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("%d of %d replies in %s: %w", c, n, room, ctx.Err())
		}
	}
}

// StartWatchedBot is StartBot with a ReplyWatch between the botworker and
// the homeserver.
func (h *Harness) StartWatchedBot(mutate func(*config.Config)) (*botworker.Bot, *ReplyWatch) {
	h.t.Helper()
	c, err := matrix.NewClient(matrix.Config{HomeserverURL: h.cfg.HomeserverURL, Token: testASToken})
	if err != nil {
		h.t.Fatal(err)
	}
	w := &ReplyWatch{Homeserver: c, counts: map[string]int{}, changed: make(chan struct{})}
	return h.startBot(mutate, w), w
}

func (h *Harness) startBot(mutate func(*config.Config), hs botworker.Homeserver) *botworker.Bot {
	h.t.Helper()
	return h.startBotWith(mutate, botworker.Options{Homeserver: hs})
}

// StartBotService starts one more botworker replica and returns it as a
// service, to stop or kill.
func (h *Harness) StartBotService(mutate func(*config.Config)) *Service {
	h.t.Helper()
	_, s := h.startBotService(mutate, botworker.Options{})
	return s
}

// startBotWith starts a botworker with options (its Homeserver, clock).
func (h *Harness) startBotWith(mutate func(*config.Config), o botworker.Options) *botworker.Bot {
	h.t.Helper()
	b, _ := h.startBotService(mutate, o)
	return b
}

func (h *Harness) startBotService(mutate func(*config.Config), o botworker.Options) (*botworker.Bot, *Service) {
	h.t.Helper()
	name := fmt.Sprintf("botworker-%d", botSeq.Add(1))
	rt := h.Runtime(name)
	if mutate != nil {
		mutate(rt.Config)
		if err := rt.Config.Validate(); err != nil {
			h.t.Fatalf("%s config: %v", name, err)
		}
	}
	o.MinBackoff = 20 * time.Millisecond
	if o.Instance == "" {
		// Its member name in the partitioned group: tests find the
		// replica that owns a room by it (PartitionOwner).
		o.Instance = name
	}
	b, err := botworker.New(h.Ctx, rt, o)
	if err != nil {
		h.t.Fatalf("%s: %v", name, err)
	}
	if err := b.Setup(h.Ctx); err != nil {
		h.t.Fatalf("%s: set-up: %v", name, err)
	}
	return b, h.Go(name, rt, b.Consume)
}

// DirectChat opens a direct chat between u and the bot, as a client does
// (createRoom with is_direct and the bot invited), and waits for the bot
// to join.
func (h *Harness) DirectChat(u *User) mxid.RoomID {
	h.t.Helper()
	room, err := u.Client.CreateRoom(h.Ctx, &matrix.CreateRoomRequest{
		Preset: matrix.PresetTrustedPrivateChat, IsDirect: true, Invite: []string{h.BotID.String()},
	})
	if err != nil {
		h.t.Fatalf("%s opens a DM: %v", u.ID, err)
	}
	h.WaitSim(func() bool { return h.HS.Membership(room.String(), h.BotID.String()) == "join" }, 20*time.Second, "the bot to join the DM of "+u.ID.String())
	return room
}

// Owners makes n users, owner0 … owner<n-1>, each with a direct chat
// with the bot.
func (h *Harness) Owners(n int) ([]*User, []mxid.RoomID) {
	h.t.Helper()
	users, dms := make([]*User, n), make([]mxid.RoomID, n)
	for i := range n {
		users[i] = h.User(fmt.Sprintf("owner%d", i))
		dms[i] = h.DirectChat(users[i])
	}
	return users, dms
}

var sayTxn atomic.Int64

// Say sends a plain text message as u and returns its event id.
func (h *Harness) Say(u *User, room mxid.RoomID, body string) string {
	h.t.Helper()
	return h.SendContent(u, room, matrix.MessageContent{MsgType: "m.text", Body: body})
}

// SendContent sends an m.room.message with any content as u.
func (h *Harness) SendContent(u *User, room mxid.RoomID, content any) string {
	h.t.Helper()
	id, err := u.Client.SendEvent(h.Ctx, room, "m.room.message", fmt.Sprintf("e2e-say-%d", sayTxn.Add(1)), content)
	if err != nil {
		h.t.Fatalf("%s says something in %s: %v", u.ID, room, err)
	}
	return id.String()
}

// BotMessages returns the bodies of the bot's messages in room, oldest
// first.
func (h *Harness) BotMessages(room mxid.RoomID) []string {
	var out []string
	for _, ev := range h.HS.Timeline(room.String()) {
		if ev.Sender != h.BotID.String() || ev.Type != "m.room.message" {
			continue
		}
		var c matrix.MessageContent
		if json.Unmarshal(ev.Content, &c) == nil {
			out = append(out, c.Body)
		}
	}
	return out
}

// botMessageCount counts the bot's messages in room without decoding
// them: waiters re-check on every change of the simulator, so this must be
// cheap when many wait at once.
func (h *Harness) botMessageCount(room mxid.RoomID) int {
	n := 0
	for _, ev := range h.HS.Timeline(room.String()) {
		if ev.Sender == h.BotID.String() && ev.Type == "m.room.message" {
			n++
		}
	}
	return n
}

// WaitBotMessages waits until the bot has said n messages in room and
// returns them.
func (h *Harness) WaitBotMessages(room mxid.RoomID, n int) []string {
	h.t.Helper()
	h.WaitSim(func() bool { return h.botMessageCount(room) >= n },
		30*time.Second, fmt.Sprintf("%d bot messages in %s", n, room))
	return h.BotMessages(room)
}

// PartitionOwner is the member name (the service name) of the botworker
// replica that holds the claim on room's partition, "" if none does.
func (h *Harness) PartitionOwner(room mxid.RoomID) string {
	h.t.Helper()
	g := service.Topology(h.cfg).BotGroup()
	kv, err := h.JS.KeyValue(h.Ctx, g.Bucket)
	if err != nil {
		h.t.Fatal(err)
	}
	e, err := kv.Get(h.Ctx, g.Name+".claims."+strconv.Itoa(bus.PartitionOf(room.String(), g.Partitions)))
	if err != nil {
		return ""
	}
	return string(e.Value())
}

// BotDrained reports whether the botworker has handled every event, in
// every partition.
func (h *Harness) BotDrained() bool {
	g := service.Topology(h.cfg).BotGroup()
	for p := range g.Partitions {
		if !h.consumerIdle(g.Stream, g.Consumer(p)) {
			return false
		}
	}
	return true
}

// QuiesceBot waits until the homeserver has pushed everything and the
// botworker has handled it, so a test can assert the bot stayed silent.
func (h *Harness) QuiesceBot(timeout time.Duration) {
	h.t.Helper()
	deadline := time.Now().Add(timeout)
	for idle := 0; idle < 2; {
		if time.Now().After(deadline) {
			h.t.Fatalf("botworker not idle after %v", timeout)
		}
		ctx, cancel := context.WithDeadline(h.Ctx, deadline)
		err := h.HS.WaitIdle(ctx)
		cancel()
		if err != nil {
			h.t.Fatalf("simulator not idle: %v", err)
		}
		if h.BotDrained() {
			idle++
			continue
		}
		idle = 0
		time.Sleep(5 * time.Millisecond)
	}
}

// Redeliver publishes an event of the simulator's timeline again, as
// JetStream redelivers after a crash: same event, a new message (its
// message id differs, so the stream's deduplication lets it through).
func (h *Harness) Redeliver(room mxid.RoomID, eventID string) {
	h.t.Helper()
	for _, ev := range h.HS.Timeline(room.String()) {
		if ev.EventID != eventID {
			continue
		}
		raw, err := json.Marshal(ev)
		if err != nil {
			h.t.Fatal(err)
		}
		m := nats.NewMsg(bus.EventSubject(bus.ClassBot, room.String()))
		m.Header.Set(bus.HeaderMsgID, eventID+"#redelivery")
		m.Data = raw
		if _, err := h.JS.PublishMsg(h.Ctx, m); err != nil {
			h.t.Fatal(err)
		}
		return
	}
	h.t.Fatalf("event %s not in %s", eventID, room)
}

// ModerationRoomOf resolves a site's moderation alias on the simulator.
func (h *Harness) ModerationRoomOf(site string) (mxid.RoomID, bool) {
	a, err := h.NS.ModerationAlias(site)
	if err != nil {
		h.t.Fatal(err)
	}
	id, ok := h.HS.ResolveAliasLocal(a.String())
	if !ok {
		return mxid.RoomID{}, false
	}
	return mxid.MustRoomID(id), true
}

func timelineOf(h *Harness, room mxid.RoomID, typ string) []event.Event {
	var out []event.Event
	for _, ev := range h.HS.Timeline(room.String()) {
		if ev.Type == typ {
			out = append(out, ev)
		}
	}
	return out
}

func containsAll(t *testing.T, what, s string, subs ...string) {
	t.Helper()
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			t.Errorf("%s lacks %q:\n%s", what, sub, s)
		}
	}
}
