// Package demo drives the dev runner's try-it-out flow against the
// homeserver simulator as real users would, through the client-server API:
// a site owner registers a site by talking to the bot, a visitor opens a
// comment section and writes in it, the owner bans the visitor and the ban
// reaches every comment room of the site. The dev runner's test and
// `cactusctl demo` both use it, so what the banner prints is what is tested.
package demo

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/cactus-comments/appservice/pkg/event"
	"github.com/cactus-comments/appservice/pkg/matrix"
	"github.com/cactus-comments/appservice/pkg/mxid"
)

// File names in the dev data directory.
const (
	InfoFile  = "demo.json"
	RoomsFile = "demo-rooms.json"
)

// User is a simulator user the demo acts as.
type User struct {
	UserID      string `json:"user_id"`
	Password    string `json:"password"`
	AccessToken string `json:"access_token"`
}

// Info is what the dev runner tells the demo about the running system. It
// is rewritten at every start: the simulator forgets its users and rooms.
type Info struct {
	HomeserverURL string `json:"homeserver_url"`
	ServerName    string `json:"server_name"`
	Bot           string `json:"bot"`
	Prefix        string `json:"prefix"`
	Owner         User   `json:"owner"`
	Visitor       User   `json:"visitor"`
}

// WriteInfo stores info in dir (owner-only: it holds access tokens) and
// forgets the rooms of a previous run.
func WriteInfo(dir string, info *Info) error {
	b, err := json.MarshalIndent(info, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, InfoFile), b, 0o600); err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	if err := os.Remove(filepath.Join(dir, RoomsFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("demo: %w", err)
	}
	return nil
}

// ReadInfo loads what WriteInfo stored.
func ReadInfo(dir string) (*Info, error) {
	b, err := os.ReadFile(filepath.Join(dir, InfoFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("demo: %s not found: is the dev runner (go run ./cmd/cactus-dev) running with the simulator, with this data directory?", filepath.Join(dir, InfoFile))
	}
	if err != nil {
		return nil, fmt.Errorf("demo: %w", err)
	}
	var info Info
	if err := json.Unmarshal(b, &info); err != nil {
		return nil, fmt.Errorf("demo: %s: %w", InfoFile, err)
	}
	return &info, nil
}

// Demo runs the steps.
type Demo struct {
	info           Info
	dir            string
	out            io.Writer
	owner, visitor *matrix.Client
	hc             *http.Client
	// Wait bounds each wait for the services (the bot's answer, a ban
	// reaching the comment rooms).
	Wait time.Duration
	// Poll is the interval of those waits: the client-server API offers
	// /sync as the only signal, which the simulator does not implement.
	Poll time.Duration
}

// New prepares the demo with the info in dir; progress goes to out.
func New(dir string, out io.Writer) (*Demo, error) {
	info, err := ReadInfo(dir)
	if err != nil {
		return nil, err
	}
	d := &Demo{info: *info, dir: dir, out: out, hc: &http.Client{Timeout: 20 * time.Second}, Wait: 30 * time.Second, Poll: 100 * time.Millisecond}
	for _, u := range []struct {
		user User
		c    **matrix.Client
	}{{info.Owner, &d.owner}, {info.Visitor, &d.visitor}} {
		c, err := matrix.NewClient(matrix.Config{HomeserverURL: info.HomeserverURL, Token: u.user.AccessToken, MaxAttempts: 2, HTTPClient: d.hc})
		if err != nil {
			return nil, fmt.Errorf("demo: %s: %w", u.user.UserID, err)
		}
		*u.c = c
	}
	return d, nil
}

// Info returns the demo's view of the system.
func (d *Demo) Info() Info { return d.info }

func (d *Demo) say(format string, args ...any) { fmt.Fprintf(d.out, format+"\n", args...) }

func txnID() string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return "demo-" + hex.EncodeToString(b)
}

// ModerationAlias and CommentsAlias build the site's aliases.
func (d *Demo) ModerationAlias(site string) string {
	return "#" + d.info.Prefix + site + ":" + d.info.ServerName
}

// CommentsAlias is the alias the web client builds for a section.
func (d *Demo) CommentsAlias(site, section string) string {
	return "#" + d.info.Prefix + site + "_" + section + ":" + d.info.ServerName
}

// waitFor polls cond until it reports done, fails, or Wait passes.
func (d *Demo) waitFor(ctx context.Context, what string, cond func(context.Context) (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, d.Wait)
	defer cancel()
	t := time.NewTicker(d.Poll)
	defer t.Stop()
	for {
		ok, err := cond(ctx)
		if err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: gave up after %s (are the services running? see the dev runner's log)", what, d.Wait)
		case <-t.C:
		}
	}
}

func (d *Demo) membership(ctx context.Context, c *matrix.Client, room mxid.RoomID, user string) (string, error) {
	var m struct {
		Membership string `json:"membership"`
	}
	err := c.GetStateEvent(ctx, room, "m.room.member", user, &m)
	if matrix.IsNotFound(err) {
		return "", nil
	}
	return m.Membership, err
}

// RegisterResult is what Register did.
type RegisterResult struct {
	DirectChat     mxid.RoomID
	Replies        []string // the bot's answers to the command
	ModerationRoom mxid.RoomID
}

// Register has the owner open a direct chat with the bot, send
// "register <site>", wait for the answer and join the moderation room the
// bot invited them to.
func (d *Demo) Register(ctx context.Context, site string) (*RegisterResult, error) {
	res := &RegisterResult{}
	dm, err := d.owner.CreateRoom(ctx, &matrix.CreateRoomRequest{Preset: matrix.PresetTrustedPrivateChat, Invite: []string{d.info.Bot}, IsDirect: true})
	if err != nil {
		return nil, fmt.Errorf("create a direct chat with the bot: %w", err)
	}
	res.DirectChat = dm
	d.say("%s opened a direct chat with %s (%s) and invited the bot", d.info.Owner.UserID, d.info.Bot, dm)
	err = d.waitFor(ctx, "waiting for the bot to join", func(ctx context.Context) (bool, error) {
		m, err := d.membership(ctx, d.owner, dm, d.info.Bot)
		return m == matrix.MembershipJoin, err
	})
	if err != nil {
		return res, err
	}
	d.say("the bot joined")
	cmd := "register " + site
	ev, err := d.owner.SendText(ctx, dm, txnID(), cmd)
	if err != nil {
		return res, fmt.Errorf("send %q: %w", cmd, err)
	}
	d.say("%s: %s", d.info.Owner.UserID, cmd)
	err = d.waitFor(ctx, "waiting for the bot's answer", func(ctx context.Context) (bool, error) {
		replies, err := d.messagesAfter(ctx, d.info.Owner.AccessToken, dm, ev.String(), d.info.Bot)
		res.Replies = replies
		return len(replies) > 0, err
	})
	if err != nil {
		return res, err
	}
	for _, r := range res.Replies {
		d.say("%s: %s", d.info.Bot, indent(r))
	}
	alias := d.ModerationAlias(site)
	room, err := d.owner.JoinRoom(ctx, alias)
	if err != nil {
		return res, fmt.Errorf("join the moderation room %s: %w (did the bot refuse? see its answer above)", alias, err)
	}
	res.ModerationRoom = room
	d.say("%s joined the moderation room %s (%s)", d.info.Owner.UserID, alias, room)
	return res, nil
}

func indent(s string) string { return strings.ReplaceAll(strings.TrimSpace(s), "\n", "\n    ") }

// messagesAfter returns the bodies of m.room.message events from sender
// that come after the event after in room's timeline, oldest first.
func (d *Demo) messagesAfter(ctx context.Context, token string, room mxid.RoomID, after, sender string) ([]string, error) {
	u := strings.TrimRight(d.info.HomeserverURL, "/") + "/_matrix/client/v3/rooms/" + url.PathEscape(room.String()) + "/messages?dir=b&limit=100"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := d.hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("read messages: %w", errors.Unwrap(err))
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("read messages: HTTP %d: %s", resp.StatusCode, strings.TrimSpace(string(body)))
	}
	var page struct {
		Chunk []event.Event `json:"chunk"`
	}
	if err := event.DecodeContent(body, &page); err != nil {
		return nil, fmt.Errorf("read messages: %w", err)
	}
	var out []string
	for _, e := range page.Chunk { // newest first
		if e.EventID == after {
			slices.Reverse(out)
			return out, nil
		}
		if e.Type != "m.room.message" || e.Sender != sender {
			continue
		}
		var c matrix.MessageContent
		if event.DecodeContent(e.Content, &c) == nil && c.Body != "" {
			out = append(out, c.Body)
		}
	}
	return nil, nil // our event is further back: nothing newer from sender seen yet
}

// commentRoom is one comment room the demo opened.
type commentRoom struct {
	Site    string `json:"site"`
	Section string `json:"section"`
	Alias   string `json:"alias"`
	RoomID  string `json:"room_id"`
}

func (d *Demo) rooms() ([]commentRoom, error) {
	b, err := os.ReadFile(filepath.Join(d.dir, RoomsFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var rs []commentRoom
	if err := json.Unmarshal(b, &rs); err != nil {
		return nil, fmt.Errorf("%s: %w", RoomsFile, err)
	}
	return rs, nil
}

func (d *Demo) remember(r commentRoom) error {
	rs, err := d.rooms()
	if err != nil {
		return err
	}
	if slices.Contains(rs, r) {
		return nil
	}
	b, err := json.MarshalIndent(append(rs, r), "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(d.dir, RoomsFile), b, 0o600)
}

// Comment has the visitor open a comment section the way the web client
// does (joining its alias, which makes the homeserver ask the appservice
// to create the room) and post text in it.
func (d *Demo) Comment(ctx context.Context, site, section, text string) (mxid.RoomID, error) {
	alias := d.CommentsAlias(site, section)
	known, err := d.rooms()
	if err != nil {
		return mxid.RoomID{}, err
	}
	opened := slices.ContainsFunc(known, func(r commentRoom) bool { return r.Alias == alias })
	room, err := d.visitor.JoinRoom(ctx, alias)
	if err != nil {
		return room, fmt.Errorf("%s joins %s: %w", d.info.Visitor.UserID, alias, err)
	}
	if opened {
		d.say("%s joined %s (%s), opened before", d.info.Visitor.UserID, alias, room)
	} else {
		d.say("%s joined %s (%s): the appservice created the room on demand", d.info.Visitor.UserID, alias, room)
	}
	if err := d.remember(commentRoom{Site: site, Section: section, Alias: alias, RoomID: room.String()}); err != nil {
		return room, fmt.Errorf("demo: %w", err)
	}
	if text != "" {
		if _, err := d.visitor.SendText(ctx, room, txnID(), text); err != nil {
			return room, fmt.Errorf("%s posts in %s: %w", d.info.Visitor.UserID, alias, err)
		}
		d.say("%s: %s", d.info.Visitor.UserID, text)
	}
	return room, nil
}

// Ban has the owner ban user in the site's moderation room and waits until
// the ban has reached every comment room of the site the demo opened. It
// returns those rooms' aliases.
func (d *Demo) Ban(ctx context.Context, site, user, reason string) ([]string, error) {
	if _, err := mxid.ParseUserID(user); err != nil {
		return nil, err
	}
	alias := d.ModerationAlias(site)
	a, err := mxid.ParseRoomAlias(alias)
	if err != nil {
		return nil, err
	}
	mod, err := d.owner.ResolveAlias(ctx, a)
	if err != nil {
		return nil, fmt.Errorf("find the moderation room %s: %w (register the site first)", alias, err)
	}
	if err := d.owner.Ban(ctx, mod, mxid.MustUserID(user), reason); err != nil {
		return nil, fmt.Errorf("%s bans %s in %s: %w", d.info.Owner.UserID, user, alias, err)
	}
	d.say("%s banned %s in the moderation room %s", d.info.Owner.UserID, user, alias)
	rs, err := d.rooms()
	if err != nil {
		return nil, fmt.Errorf("demo: %w", err)
	}
	var done []string
	for _, r := range rs {
		if r.Site != site {
			continue
		}
		room, err := mxid.ParseRoomID(r.RoomID)
		if err != nil {
			return done, fmt.Errorf("demo: %s: %w", RoomsFile, err)
		}
		err = d.waitFor(ctx, "waiting for the ban to reach "+r.Alias, func(ctx context.Context) (bool, error) {
			m, err := d.membership(ctx, d.owner, room, user)
			return m == matrix.MembershipBan, err
		})
		if err != nil {
			return done, err
		}
		d.say("the appservice carried the ban to %s", r.Alias)
		done = append(done, r.Alias)
	}
	if len(done) == 0 {
		d.say("(no comment room of %s opened through the demo yet: open one with `demo comment`, it starts with the ban)", site)
	}
	return done, nil
}
