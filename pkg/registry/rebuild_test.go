package registry

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/cactus-comments/appservice/pkg/bus"
	"github.com/cactus-comments/appservice/pkg/embednats"
	"github.com/cactus-comments/appservice/pkg/event"
	"github.com/cactus-comments/appservice/pkg/hssim"
	"github.com/cactus-comments/appservice/pkg/matrix"
	"github.com/cactus-comments/appservice/pkg/mxid"
	"github.com/cactus-comments/appservice/pkg/namespace"
	"github.com/cactus-comments/appservice/pkg/power"
	"github.com/cactus-comments/appservice/pkg/registration"
)

func stateEvent(typ, key, sender string, ts int64, content string) event.Event {
	return event.Event{Type: typ, StateKey: &key, Sender: sender, OriginServerTS: ts, Content: []byte(content)}
}

func TestSiteFromState(t *testing.T) {
	const bot = "@bot:ex.org"
	create := stateEvent("m.room.create", "", bot, 1700000000000, `{}`)
	member := func(u, m string, ts int64) event.Event {
		return stateEvent("m.room.member", u, bot, ts, `{"membership":"`+m+`"}`)
	}
	tests := []struct {
		name      string
		state     []event.Event
		owner     string
		bans      []string
		hasLevels bool
		create    *power.Room // default: version 1 created by the bot
	}{
		{
			name: "registrant at 100 is the owner",
			state: []event.Event{create,
				stateEvent("m.room.power_levels", "", bot, 1, `{"users":{"@bot:ex.org":100,"@owner:ex.org":100,"@mod:ex.org":50}}`),
				member("@owner:ex.org", "join", 2), member("@mod:ex.org", "join", 3),
				member("@spam:ex.org", "ban", 4), member("@eve:ex.org", "ban", 5),
			},
			owner: "@owner:ex.org", bans: []string{"@eve:ex.org", "@spam:ex.org"}, hasLevels: true,
		},
		{
			name: "two admins: the earliest member",
			state: []event.Event{create,
				stateEvent("m.room.power_levels", "", bot, 1, `{"users":{"@bot:ex.org":100,"@zed:ex.org":100,"@amy:ex.org":100}}`),
				member("@amy:ex.org", "join", 20), member("@zed:ex.org", "invite", 10),
			},
			owner: "@zed:ex.org", hasLevels: true,
		},
		{
			name: "a banned admin is not the owner",
			state: []event.Event{create,
				stateEvent("m.room.power_levels", "", bot, 1, `{"users":{"@bot:ex.org":100,"@gone:ex.org":100,"@next:ex.org":50}}`),
				member("@gone:ex.org", "ban", 2), member("@next:ex.org", "join", 3),
			},
			owner: "@next:ex.org", bans: []string{"@gone:ex.org"}, hasLevels: true,
		},
		{
			name: "version 12: the bot is the creator, the owner at 100",
			state: []event.Event{stateEvent("m.room.create", "", bot, 1700000000000, `{"room_version":"12"}`),
				stateEvent("m.room.power_levels", "", bot, 1, `{"users":{"@owner:ex.org":100,"@mod:ex.org":50}}`),
				member("@mod:ex.org", "join", 2), member("@owner:ex.org", "join", 3),
			},
			owner: "@owner:ex.org", hasLevels: true, create: &power.Room{Version: "12", Creator: bot},
		},
		{
			name: "upgraded to version 12 by the owner: a creator, in no users",
			state: []event.Event{stateEvent("m.room.create", "", "@owner:ex.org", 1700000000000, `{"room_version":"12","predecessor":{"room_id":"!old:ex.org"}}`),
				stateEvent("m.room.power_levels", "", "@owner:ex.org", 1, `{"users":{"@bot:ex.org":100,"@mod:ex.org":100}}`),
				member("@mod:ex.org", "join", 2), member("@owner:ex.org", "join", 3),
			},
			owner: "@owner:ex.org", hasLevels: true, create: &power.Room{Version: "12", Creator: "@owner:ex.org"},
		},
		{
			name:  "no power levels: no owner, no snapshot",
			state: []event.Event{create, member("@x:ex.org", "join", 2)},
		},
		{
			name: "unreadable power levels are left out",
			state: []event.Event{create,
				stateEvent("m.room.power_levels", "", bot, 1, `{"users":{"@a:ex.org":"lots"}}`),
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := SiteFromState("site", "!mod:ex.org", tt.state, bot)
			if s.Name != "site" || s.ModerationRoom != "!mod:ex.org" {
				t.Errorf("site = %+v", s)
			}
			if s.Owner != tt.owner {
				t.Errorf("owner = %q, want %q", s.Owner, tt.owner)
			}
			if !slices.Equal(s.Bans, tt.bans) {
				t.Errorf("bans = %v, want %v", s.Bans, tt.bans)
			}
			if (len(s.PowerLevels) > 0) != tt.hasLevels {
				t.Errorf("power levels = %s", s.PowerLevels)
			}
			want := tt.create
			if want == nil {
				want = &power.Room{Version: "1", Creator: bot}
			}
			if !reflect.DeepEqual(s.ModerationCreate, want) {
				t.Errorf("moderation create = %+v, want %+v", s.ModerationCreate, want)
			}
			if want := time.UnixMilli(1700000000000).UTC(); !s.CreatedAt.Equal(want) {
				t.Errorf("created at %v, want %v", s.CreatedAt, want)
			}
		})
	}
}

// TestRebuildEdgeCases covers what a homeserver holds besides clean sites:
// rooms that are not ours, comment rooms of a site without a moderation
// room, and a canonical alias that no longer points to its room.
func TestRebuildEdgeCases(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ns := embednats.StartTest(t)
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if err := (bus.Topology{Memory: true}).Ensure(ctx, js); err != nil {
		t.Fatal(err)
	}
	reg, err := Open(ctx, js)
	if err != nil {
		t.Fatal(err)
	}
	const server = "ex.org"
	tokens := "tok_as_for_rebuild_tests"
	hs, err := hssim.Start(ctx, hssim.Options{ServerName: server, Registrations: []*registration.Registration{{
		ID: "cactus", ASToken: tokens, HSToken: "tok_hs_for_rebuild_tests", SenderLocalpart: "bot",
		Namespaces: registration.Namespaces{
			Users:   []registration.Namespace{{Exclusive: true, Regex: `@bot:ex\.org`}},
			Aliases: []registration.Namespace{{Exclusive: true, Regex: "#comments_.*"}},
		},
	}}})
	if err != nil {
		t.Fatal(err)
	}
	defer hs.Close()
	cli, err := matrix.NewClient(matrix.Config{HomeserverURL: hs.URL(), Token: tokens})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.RegisterAppserviceUser(ctx, "bot"); err != nil {
		t.Fatal(err)
	}
	bot := mxid.MustUserID("@bot:" + server)
	space := namespace.Namespace{Prefix: "comments_", Server: server}
	create := func(alias string) mxid.RoomID {
		t.Helper()
		r, err := cli.CreateRoom(ctx, &matrix.CreateRoomRequest{RoomAliasName: alias})
		if err != nil {
			t.Fatalf("create %s: %v", alias, err)
		}
		return r
	}
	mod := create("comments_site")
	c1 := create("comments_site_a")
	// A comment room upgraded: its replacement is the section's room.
	b, err := cli.UpgradeRoom(ctx, create("comments_site_b"), "12")
	if err != nil {
		t.Fatal(err)
	}
	create("comments_lost_x") // its site has no moderation room
	// A room of someone else's, with an alias outside our namespace, that
	// the bot was invited to and joined.
	_, utok, err := hs.RegisterUser("user", "pw")
	if err != nil {
		t.Fatal(err)
	}
	ucli, err := matrix.NewClient(matrix.Config{HomeserverURL: hs.URL(), Token: utok})
	if err != nil {
		t.Fatal(err)
	}
	foreign, err := ucli.CreateRoom(ctx, &matrix.CreateRoomRequest{RoomAliasName: "elsewhere", Invite: []string{"@bot:" + server}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.JoinRoom(ctx, foreign.String()); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.CreateRoom(ctx, &matrix.CreateRoomRequest{Name: "a DM"}); err != nil {
		t.Fatal(err)
	}
	// A moderation room whose alias was moved to another room.
	stale := create("comments_moved")
	moved, _ := mxid.ParseRoomAlias("#comments_moved:" + server)
	other := create("comments_other")
	put := func(method, path string) {
		t.Helper()
		if err := rawCall(ctx, hs.URL(), tokens, method, path, `{"room_id":"`+other.String()+`"}`); err != nil {
			t.Fatal(err)
		}
	}
	put("DELETE", "/_matrix/client/v3/directory/room/%23comments_moved:"+server)
	put("PUT", "/_matrix/client/v3/directory/room/%23comments_moved:"+server)
	if got, _ := cli.ResolveAlias(ctx, moved); got != other {
		t.Fatalf("alias not moved: %s", got)
	}

	rep, err := Rebuild(ctx, reg, cli, space, bot, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(rep.Sites, []string{"other", "site"}) {
		t.Errorf("sites = %v, want other and site", rep.Sites)
	}
	if rep.JoinedRooms != 9 || rep.CommentRooms != 2 || !slices.Equal(rep.Orphans, []string{"#comments_lost_x:" + server}) {
		t.Errorf("report = %+v", rep)
	}
	if len(rep.Skipped) != 1 || !strings.Contains(rep.Skipped[0], stale.String()) {
		t.Errorf("skipped = %v, want the room the moved alias left", rep.Skipped)
	}
	s, err := reg.Site(ctx, "site")
	if err != nil || s.ModerationRoom != mod.String() {
		t.Fatalf("site = %+v, %v", s, err)
	}
	if !reflect.DeepEqual(s.ModerationCreate, &power.Room{Version: "10", Creator: bot.String()}) {
		t.Errorf("moderation create = %+v", s.ModerationCreate)
	}
	if r, err := reg.Room(ctx, "site", "a"); err != nil || r.RoomID != c1.String() || r.Create == nil || r.Create.Version != "10" {
		t.Errorf("room = %+v, %v", r, err)
	}
	if r, err := reg.Room(ctx, "site", "b"); err != nil || r.RoomID != b.String() || r.Create == nil || r.Create.Version != "12" || r.Create.Creator != bot.String() {
		t.Errorf("upgraded room = %+v, %v; want the replacement %s", r, err, b)
	}
	if r, err := reg.Lookup(ctx, mod.String()); err != nil || !r.IsModeration() || r.Site != "site" {
		t.Errorf("moderation room lookup = %+v, %v", r, err)
	}

	// A second rebuild keeps an owner recorded meanwhile.
	if _, err := reg.UpdateSite(ctx, "site", func(s *Site) (bool, error) { s.Owner = "@recorded:ex.org"; return true, nil }); err != nil {
		t.Fatal(err)
	}
	if _, err := Rebuild(ctx, reg, cli, space, bot, nil); err != nil {
		t.Fatal(err)
	}
	if s, _ := reg.Site(ctx, "site"); s.Owner != "@recorded:ex.org" {
		t.Errorf("owner after a second rebuild = %q", s.Owner)
	}

	// SiteFromHomeserver: present and absent.
	if s, err := SiteFromHomeserver(ctx, cli, space, bot, "site"); err != nil || s.ModerationRoom != mod.String() {
		t.Errorf("SiteFromHomeserver = %+v, %v", s, err)
	}
	if _, err := SiteFromHomeserver(ctx, cli, space, bot, "nosuch"); !errors.Is(err, ErrNotFound) {
		t.Errorf("SiteFromHomeserver(nosuch) = %v, want ErrNotFound", err)
	}
}

// rawCall makes a client-server request the matrix client has no method
// for (moving an alias).
func rawCall(ctx context.Context, base, token, method, path, body string) error {
	req, err := http.NewRequestWithContext(ctx, method, base+path, strings.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s %s: HTTP %d", method, path, resp.StatusCode)
	}
	return nil
}
