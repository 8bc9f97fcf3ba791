package botworker

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/cactus-comments/appservice/pkg/event"
	"github.com/cactus-comments/appservice/pkg/matrix"
	"github.com/cactus-comments/appservice/pkg/mxid"
)

// fakeHS is an in-memory homeserver with the semantics the bot relies on:
// aliases are unique (M_ROOM_IN_USE), sends are deduplicated by txn id,
// createRoom applies the power level override. fail injects errors.
type fakeHS struct {
	mu       sync.Mutex
	server   string
	bot      string
	version  string // default room version ("10" if empty)
	rooms    map[string]*fakeRoom
	aliases  map[string]string
	txns     map[string]string // txn id -> event id
	users    map[string]bool
	profile  map[string]string // "displayname", "avatar_url"
	calls    map[string]int
	seq      int
	fail     func(endpoint string) error
	sent     []sentMessage
	creates  []*matrix.CreateRoomRequest
	profiles int // profile writes
}

type fakeRoom struct {
	id          string
	version     string
	creator     string
	members     map[string]string // user -> membership
	powerLevels json.RawMessage
	state       map[string]any // other state set with SetStateEvent, by type
	created     time.Time
	req         *matrix.CreateRoomRequest
}

type sentMessage struct {
	Room, Txn string
	Content   matrix.MessageContent
}

func newFakeHS(server, bot string) *fakeHS {
	return &fakeHS{
		server: server, bot: bot,
		rooms: map[string]*fakeRoom{}, aliases: map[string]string{}, txns: map[string]string{},
		users: map[string]bool{}, profile: map[string]string{}, calls: map[string]int{},
	}
}

func (f *fakeHS) enter(endpoint string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls[endpoint]++
	if f.fail != nil {
		return f.fail(endpoint)
	}
	return nil
}

func (f *fakeHS) count(endpoint string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[endpoint]
}

func (f *fakeHS) setFail(fn func(string) error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fail = fn
}

func mErr(status int, code, msg string) error {
	return &matrix.Error{Status: status, ErrCode: code, Message: msg}
}

// EnsureUser records what a real homeserver would store: the user, and
// each profile field that differs from what it holds.
func (f *fakeHS) EnsureUser(_ context.Context, user mxid.UserID, name, avatar string) (bool, error) {
	if err := f.enter("register"); err != nil {
		return false, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	created := !f.users[user.String()]
	f.users[user.String()] = true
	for k, v := range map[string]string{"displayname": name, "avatar_url": avatar} {
		if v != "" && f.profile[k] != v {
			f.profile[k] = v
			f.profiles++
		}
	}
	return created, nil
}

func (f *fakeHS) JoinRoom(_ context.Context, room string) (mxid.RoomID, error) {
	if err := f.enter("join"); err != nil {
		return mxid.RoomID{}, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	r := f.rooms[room]
	if r == nil {
		return mxid.RoomID{}, mErr(http.StatusNotFound, "M_NOT_FOUND", "no such room")
	}
	if r.members[f.bot] != "invite" && r.members[f.bot] != "join" {
		return mxid.RoomID{}, mErr(http.StatusForbidden, "M_FORBIDDEN", "not invited")
	}
	r.members[f.bot] = "join"
	return mxid.MustRoomID(room), nil
}

func (f *fakeHS) LeaveRoom(_ context.Context, room mxid.RoomID, _ string) error {
	if err := f.enter("leave"); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	r := f.rooms[room.String()]
	if r == nil || r.members[f.bot] == "" {
		return fakeForbidden()
	}
	r.members[f.bot] = "leave"
	return nil
}

func fakeForbidden() error { return mErr(http.StatusForbidden, "M_FORBIDDEN", "not in room") }

func (f *fakeHS) CreateRoom(_ context.Context, req *matrix.CreateRoomRequest) (mxid.RoomID, error) {
	if err := f.enter("createRoom"); err != nil {
		return mxid.RoomID{}, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.creates = append(f.creates, req)
	alias := ""
	if req.RoomAliasName != "" {
		alias = "#" + req.RoomAliasName + ":" + f.server
		if _, ok := f.aliases[alias]; ok {
			return mxid.RoomID{}, mErr(http.StatusBadRequest, matrix.CodeRoomInUse, "Room alias already taken")
		}
	}
	version := req.RoomVersion
	if version == "" {
		version = f.defaultVersion()
	}
	v12 := version == "12"
	f.seq++
	id := fmt.Sprintf("!room%d:%s", f.seq, f.server)
	if v12 {
		id = fmt.Sprintf("!room%d", f.seq)
	}
	users := map[string]int{f.bot: 100}
	if v12 {
		users = map[string]int{}
	}
	pl := map[string]any{"users": users, "ban": 50, "kick": 50, "redact": 50, "state_default": 50, "events_default": 0, "users_default": 0}
	if req.PowerLevelContentOverride != nil {
		pl["users"] = req.PowerLevelContentOverride.Users
	}
	plb, _ := json.Marshal(pl)
	r := &fakeRoom{id: id, version: version, creator: f.bot, members: map[string]string{f.bot: "join"}, powerLevels: plb, req: req, created: time.Now()}
	f.rooms[id] = r
	if alias != "" {
		f.aliases[alias] = id
	}
	if o := req.PowerLevelContentOverride; v12 && o != nil && o.Users[f.bot] != 0 {
		// Synapse stores the room and its alias, then refuses the power
		// levels and everything after them.
		r.powerLevels = nil
		return mxid.RoomID{}, mErr(http.StatusBadRequest, "M_UNKNOWN", "Creator user "+f.bot+" must not appear in content.users")
	}
	for _, u := range req.Invite {
		r.members[u] = "invite"
	}
	return mxid.MustRoomID(id), nil
}

func (f *fakeHS) defaultVersion() string {
	if f.version == "" {
		return "10"
	}
	return f.version
}

func (f *fakeHS) DefaultRoomVersion(context.Context) (string, error) {
	if err := f.enter("capabilities"); err != nil {
		return "", err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.defaultVersion(), nil
}

// inRoom runs fn on a room the bot is joined to, under the lock, as the
// endpoint's call; a room the bot is not in is forbidden.
func (f *fakeHS) inRoom(endpoint string, room mxid.RoomID, fn func(r *fakeRoom) error) error {
	if err := f.enter(endpoint); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	r := f.rooms[room.String()]
	if r == nil || r.members[f.bot] != "join" {
		return fakeForbidden()
	}
	return fn(r)
}

func (f *fakeHS) CreateEvent(_ context.Context, room mxid.RoomID) (*event.Event, error) {
	var ev *event.Event
	err := f.inRoom("getState", room, func(r *fakeRoom) error {
		key := ""
		content, _ := json.Marshal(map[string]string{"room_version": r.version})
		ev = &event.Event{Type: "m.room.create", StateKey: &key, Sender: r.creator, Content: content, OriginServerTS: r.created.UnixMilli()}
		return nil
	})
	return ev, err
}

func (f *fakeHS) SetStateEvent(_ context.Context, room mxid.RoomID, eventType, _ string, content any) (mxid.EventID, error) {
	return mxid.EventID{}, f.inRoom("setState", room, func(r *fakeRoom) error {
		b, err := json.Marshal(content)
		if err != nil {
			return err
		}
		if eventType != "m.room.power_levels" {
			if r.state == nil {
				r.state = map[string]any{}
			}
			r.state[eventType] = content
			return nil
		}
		var pl struct {
			Users map[string]int `json:"users"`
		}
		if err := json.Unmarshal(b, &pl); err != nil {
			return err
		}
		if _, named := pl.Users[r.creator]; r.version == "12" && named {
			return mErr(http.StatusBadRequest, "M_UNKNOWN", "Creator user "+r.creator+" must not appear in content.users")
		}
		r.powerLevels = b
		return nil
	})
}

func (f *fakeHS) Invite(_ context.Context, room mxid.RoomID, user mxid.UserID, _ string) error {
	return f.inRoom("invite", room, func(r *fakeRoom) error {
		r.members[user.String()] = "invite"
		return nil
	})
}

// addRoom makes a room (a DM or group) with the bot invited.
func (f *fakeHS) addRoom(id string, members map[string]string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.rooms[id] = &fakeRoom{id: id, members: members}
}

func (f *fakeHS) SendEvent(_ context.Context, room mxid.RoomID, eventType, txn string, content any) (mxid.EventID, error) {
	if err := f.enter("send"); err != nil {
		return mxid.EventID{}, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.txns[txn]; ok {
		return mxid.EventID{}, nil
	}
	r := f.rooms[room.String()]
	if r == nil || r.members[f.bot] != "join" {
		return mxid.EventID{}, fakeForbidden()
	}
	mc, ok := content.(matrix.MessageContent)
	if !ok || eventType != "m.room.message" {
		return mxid.EventID{}, mErr(http.StatusBadRequest, "M_BAD_JSON", "unexpected content")
	}
	f.seq++
	id := fmt.Sprintf("$ev%d", f.seq)
	f.txns[txn] = id
	f.sent = append(f.sent, sentMessage{Room: room.String(), Txn: txn, Content: mc})
	return mxid.EventID{}, nil
}

func (f *fakeHS) GetStateEvent(_ context.Context, room mxid.RoomID, eventType, _ string, out any) error {
	return f.inRoom("getState", room, func(r *fakeRoom) error {
		if eventType != "m.room.power_levels" || r.powerLevels == nil {
			return mErr(http.StatusNotFound, "M_NOT_FOUND", "no state")
		}
		return json.Unmarshal(r.powerLevels, out)
	})
}

func (f *fakeHS) ResolveAlias(_ context.Context, alias mxid.RoomAlias) (mxid.RoomID, error) {
	if err := f.enter("resolveAlias"); err != nil {
		return mxid.RoomID{}, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	id, ok := f.aliases[alias.String()]
	if !ok {
		return mxid.RoomID{}, mErr(http.StatusNotFound, "M_NOT_FOUND", "no alias")
	}
	return mxid.MustRoomID(id), nil
}

func (f *fakeHS) Members(_ context.Context, room mxid.RoomID, membership string) ([]event.Event, error) {
	var out []event.Event
	err := f.inRoom("members", room, func(r *fakeRoom) error {
		for u, m := range r.members {
			if membership == "" || m == membership {
				k := u
				out = append(out, event.Event{Type: "m.room.member", StateKey: &k, Content: []byte(`{"membership":"` + m + `"}`)})
			}
		}
		return nil
	})
	return out, err
}

// messages returns the bodies sent to room, in order.
func (f *fakeHS) messages(room string) []matrix.MessageContent {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []matrix.MessageContent
	for _, s := range f.sent {
		if s.Room == room {
			out = append(out, s.Content)
		}
	}
	return out
}

func (f *fakeHS) roomByAlias(alias string) *fakeRoom {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.rooms[f.aliases[alias]]
}

func (f *fakeHS) membership(room, user string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	if r := f.rooms[room]; r != nil {
		return r.members[user]
	}
	return ""
}
