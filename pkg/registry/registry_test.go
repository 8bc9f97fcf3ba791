package registry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/cactus-comments/appservice/pkg/bus"
	"github.com/cactus-comments/appservice/pkg/embednats"
)

// openTestRegistry starts an embedded NATS with the real topology and
// opens a registry on it.
func openTestRegistry(t *testing.T) (context.Context, *Registry, jetstream.JetStream) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	_, _, js := embednats.JetStreamTest(t)
	if err := (bus.Topology{Memory: true}).Ensure(ctx, js); err != nil {
		t.Fatal(err)
	}
	reg, err := Open(ctx, js)
	if err != nil {
		t.Fatal(err)
	}
	return ctx, reg, js
}

func TestOpenWithoutBuckets(t *testing.T) {
	_, _, js := embednats.JetStreamTest(t)
	if _, err := Open(context.Background(), js); err == nil {
		t.Fatal("Open succeeded without the buckets")
	}
}

func TestSetBanned(t *testing.T) {
	var s Site
	steps := []struct {
		user    string
		ban     bool
		changed bool
		want    []string
	}{
		{"@m:x", true, true, []string{"@m:x"}},
		{"@a:x", true, true, []string{"@a:x", "@m:x"}},
		{"@z:x", true, true, []string{"@a:x", "@m:x", "@z:x"}},
		{"@m:x", true, false, []string{"@a:x", "@m:x", "@z:x"}},
		{"@m:x", false, true, []string{"@a:x", "@z:x"}},
		{"@m:x", false, false, []string{"@a:x", "@z:x"}},
		{"@a:x", false, true, []string{"@z:x"}},
		{"@z:x", false, true, []string{}},
	}
	for i, st := range steps {
		if got := s.SetBanned(st.user, st.ban); got != st.changed {
			t.Fatalf("step %d: SetBanned(%s, %v) = %v", i, st.user, st.ban, got)
		}
		if !slices.Equal(s.Bans, st.want) && !(len(s.Bans) == 0 && len(st.want) == 0) {
			t.Fatalf("step %d: bans %v, want %v", i, s.Bans, st.want)
		}
		for _, u := range []string{"@a:x", "@m:x", "@z:x", "@q:x"} {
			if s.Banned(u) != slices.Contains(st.want, u) {
				t.Fatalf("step %d: Banned(%s) = %v", i, u, s.Banned(u))
			}
		}
	}
}

func TestCreateSite(t *testing.T) {
	ctx, reg, _ := openTestRegistry(t)
	fixed := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	reg.now = func() time.Time { return fixed }

	s := &Site{Name: "blog.example.org", Owner: "@o:x", ModerationRoom: "!mod:x", PowerLevels: json.RawMessage(`{"users":{"@o:x":100}}`)}
	if err := reg.CreateSite(ctx, s); err != nil {
		t.Fatal(err)
	}
	err := reg.CreateSite(ctx, &Site{Name: "blog.example.org", Owner: "@thief:x", ModerationRoom: "!other:x"})
	if !errors.Is(err, ErrExists) {
		t.Fatalf("second CreateSite = %v, want ErrExists", err)
	}
	got, err := reg.Site(ctx, "blog.example.org")
	if err != nil {
		t.Fatal(err)
	}
	if got.Owner != "@o:x" || got.ModerationRoom != "!mod:x" || !got.CreatedAt.Equal(fixed) || !got.UpdatedAt.Equal(fixed) || string(got.PowerLevels) != `{"users":{"@o:x":100}}` {
		t.Fatalf("stored site %+v", got)
	}
	room, err := reg.Lookup(ctx, "!mod:x")
	if err != nil || room.Site != "blog.example.org" || !room.IsModeration() {
		t.Fatalf("Lookup(moderation room) = %+v, %v", room, err)
	}
	if _, err := reg.Lookup(ctx, "!other:x"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("the refused create indexed its room: %v", err)
	}
	if _, err := reg.Site(ctx, "blog"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Site(unknown) = %v", err)
	}
}

// createRace has n goroutines create the same site and returns how many
// succeeded; every other one must have got ErrExists.
func createRace(t *testing.T, ctx context.Context, reg *Registry, name string, n int) int {
	t.Helper()
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() {
			errs[i] = reg.CreateSite(ctx, &Site{Name: name, Owner: fmt.Sprintf("@u%d:x", i), ModerationRoom: fmt.Sprintf("!m%d:x", i)})
		})
	}
	wg.Wait()
	ok := 0
	for _, err := range errs {
		switch {
		case err == nil:
			ok++
		case !errors.Is(err, ErrExists):
			t.Errorf("CreateSite: %v, want nil or ErrExists", err)
		}
	}
	return ok
}

func TestCreateSiteConcurrent(t *testing.T) {
	ctx, reg, _ := openTestRegistry(t)
	if ok := createRace(t, ctx, reg, "race", 20); ok != 1 {
		t.Fatalf("%d creates succeeded, want exactly 1", ok)
	}
	// After a delete, the name is free again, and the race (which JetStream
	// resolves differently for a deleted key) still has one winner.
	if err := reg.DeleteSite(ctx, "race"); err != nil {
		t.Fatal(err)
	}
	if ok := createRace(t, ctx, reg, "race", 20); ok != 1 {
		t.Fatalf("after delete: %d creates succeeded, want exactly 1", ok)
	}
}

func TestUpdateSiteConcurrent(t *testing.T) {
	ctx, reg, _ := openTestRegistry(t)
	if err := reg.CreateSite(ctx, &Site{Name: "s", Owner: "@o:x"}); err != nil {
		t.Fatal(err)
	}
	const n = 20
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() {
			_, errs[i] = reg.UpdateSite(ctx, "s", func(s *Site) (bool, error) {
				return s.SetBanned(fmt.Sprintf("@troll%02d:x", i), true), nil
			})
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("update %d: %v", i, err)
		}
	}
	s, err := reg.Site(ctx, "s")
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Bans) != n || !slices.IsSorted(s.Bans) {
		t.Fatalf("bans after %d concurrent updates: %v", n, s.Bans)
	}
	for i := range n {
		if !s.Banned(fmt.Sprintf("@troll%02d:x", i)) {
			t.Errorf("ban %d lost", i)
		}
	}
}

func TestUpdateSite(t *testing.T) {
	ctx, reg, _ := openTestRegistry(t)
	if _, err := reg.UpdateSite(ctx, "missing", func(*Site) (bool, error) { return true, nil }); !errors.Is(err, ErrNotFound) {
		t.Fatalf("UpdateSite(missing) = %v", err)
	}
	if err := reg.CreateSite(ctx, &Site{Name: "s", Owner: "@o:x"}); err != nil {
		t.Fatal(err)
	}
	rev := func() uint64 {
		e, err := reg.sites.Get(ctx, siteKey("s"))
		if err != nil {
			t.Fatal(err)
		}
		return e.Revision
	}
	before := rev()
	s, err := reg.UpdateSite(ctx, "s", func(s *Site) (bool, error) { return false, nil })
	if err != nil || s.Owner != "@o:x" || rev() != before {
		t.Fatalf("no-change update wrote: %v, rev %d -> %d", err, before, rev())
	}
	boom := errors.New("boom")
	if _, err := reg.UpdateSite(ctx, "s", func(s *Site) (bool, error) { s.Owner = "@x:x"; return true, boom }); !errors.Is(err, boom) || rev() != before {
		t.Fatalf("failing update = %v, rev %d -> %d", err, before, rev())
	}
	s, err = reg.UpdateSite(ctx, "s", func(s *Site) (bool, error) { s.PowerLevels = json.RawMessage(`{"ban":50}`); return true, nil })
	if err != nil || rev() == before {
		t.Fatalf("update = %v", err)
	}
	got, _ := reg.Site(ctx, "s")
	if string(got.PowerLevels) != `{"ban":50}` || got.Owner != "@o:x" || string(s.PowerLevels) != `{"ban":50}` {
		t.Fatalf("stored %+v", got)
	}
}

func TestRoomsNeverCrossSites(t *testing.T) {
	ctx, reg, _ := openTestRegistry(t)
	sites := []string{"foo", "foobar", "fo", "a.b", "a", "a.b.c", "*", ">", "a*", "x>y", "sp ace", "café", "Zm9v"}
	for i, site := range sites {
		if err := reg.CreateSite(ctx, &Site{Name: site, Owner: "@o:x", ModerationRoom: fmt.Sprintf("!mod%d:x", i)}); err != nil {
			t.Fatalf("CreateSite(%q): %v", site, err)
		}
		for _, section := range []string{"/posts/1", "a.b", "*", ">"} {
			room := Room{Site: site, Section: section, RoomID: fmt.Sprintf("!%d%s:x", i, section), Alias: "#comments_" + site + "_" + section + ":x"}
			if err := reg.PutRoom(ctx, room); err != nil {
				t.Fatalf("PutRoom(%q, %q): %v", site, section, err)
			}
		}
	}
	for i, site := range sites {
		rooms, err := reg.Rooms(ctx, site)
		if err != nil {
			t.Fatal(err)
		}
		if len(rooms) != 4 {
			t.Errorf("Rooms(%q) = %d rooms, want 4: %+v", site, len(rooms), rooms)
		}
		for _, r := range rooms {
			if r.Site != site || r.IsModeration() || r.CreatedAt.IsZero() {
				t.Errorf("Rooms(%q) returned %+v", site, r)
			}
		}
		if !slices.IsSortedFunc(rooms, func(a, b Room) int { return cmpString(a.Section, b.Section) }) {
			t.Errorf("Rooms(%q) not sorted by section", site)
		}
		r, err := reg.Room(ctx, site, "a.b")
		if err != nil || r.RoomID != fmt.Sprintf("!%da.b:x", i) {
			t.Errorf("Room(%q, a.b) = %+v, %v", site, r, err)
		}
		look, err := reg.Lookup(ctx, fmt.Sprintf("!%d*:x", i))
		if err != nil || look.Site != site || look.Section != "*" {
			t.Errorf("Lookup = %+v, %v", look, err)
		}
	}
	if _, err := reg.Room(ctx, "foo", "missing"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Room(missing) = %v", err)
	}
	if rooms, err := reg.Rooms(ctx, "nosuchsite"); err != nil || len(rooms) != 0 {
		t.Errorf("Rooms(nosuchsite) = %v, %v", rooms, err)
	}
	if _, err := reg.Lookup(ctx, "!nope:x"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Lookup(unknown) = %v", err)
	}
}

func cmpString(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func TestPutRoomModerationOnlyIndexes(t *testing.T) {
	ctx, reg, _ := openTestRegistry(t)
	if err := reg.PutRoom(ctx, Room{Site: "s", RoomID: "!mod:x"}); err != nil {
		t.Fatal(err)
	}
	if rooms, _ := reg.Rooms(ctx, "s"); len(rooms) != 0 {
		t.Fatalf("moderation room listed as a comment room: %+v", rooms)
	}
	if r, err := reg.Lookup(ctx, "!mod:x"); err != nil || !r.IsModeration() || r.Site != "s" {
		t.Fatalf("Lookup = %+v, %v", r, err)
	}
}

// RoomMsgs published as they are must leave the registry exactly as
// PutRoom does, with names that need encoding (dots, a v12 room id).
func TestRoomMsgsArePutRoom(t *testing.T) {
	ctx, reg, js := openTestRegistry(t)
	want := Room{Site: "my.site", Section: "a b.c", RoomID: "!AbCdEfGhIjKlMnOpQrStUvWxYz0123456789abcdefg", Alias: "#comments_my.site_a b.c:x"}
	msgs, err := reg.RoomMsgs(want)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range msgs {
		if _, err := js.PublishMsg(ctx, m); err != nil {
			t.Fatalf("publish %s: %v", m.Subject, err)
		}
	}
	got, err := reg.Room(ctx, want.Site, want.Section)
	if err != nil || got.RoomID != want.RoomID || got.Alias != want.Alias || got.CreatedAt.IsZero() {
		t.Fatalf("Room = %+v, %v", got, err)
	}
	if r, err := reg.Lookup(ctx, want.RoomID); err != nil || r.Site != want.Site || r.Section != want.Section {
		t.Fatalf("Lookup = %+v, %v", r, err)
	}
	if rooms, err := reg.Rooms(ctx, want.Site); err != nil || len(rooms) != 1 || rooms[0].RoomID != want.RoomID {
		t.Fatalf("Rooms = %+v, %v", rooms, err)
	}
	if _, err := reg.RoomMsgs(Room{Site: "s", RoomID: "!mod:x"}); err == nil {
		t.Fatal("RoomMsgs took a moderation room, which has no room entry")
	}
}

func TestSitesAndOwners(t *testing.T) {
	ctx, reg, _ := openTestRegistry(t)
	if sites, err := reg.Sites(ctx); err != nil || len(sites) != 0 {
		t.Fatalf("Sites on an empty registry = %v, %v", sites, err)
	}
	for _, s := range []struct{ name, owner string }{{"zeta", "@a:x"}, {"alpha", "@b:x"}, {"mid.dle", "@a:x"}, {"Beta", "@c:x"}} {
		if err := reg.CreateSite(ctx, &Site{Name: s.name, Owner: s.owner}); err != nil {
			t.Fatal(err)
		}
	}
	sites, err := reg.Sites(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range sites {
		names = append(names, s.Name)
	}
	if want := []string{"Beta", "alpha", "mid.dle", "zeta"}; !slices.Equal(names, want) {
		t.Fatalf("Sites = %v, want %v", names, want)
	}
	owned, err := reg.SitesOwnedBy(ctx, "@a:x")
	if err != nil || len(owned) != 2 || owned[0].Name != "mid.dle" || owned[1].Name != "zeta" {
		t.Fatalf("SitesOwnedBy(@a:x) = %v, %v", owned, err)
	}
	if owned, _ := reg.SitesOwnedBy(ctx, "@nobody:x"); len(owned) != 0 {
		t.Fatalf("SitesOwnedBy(nobody) = %v", owned)
	}
}

func TestDeleteSite(t *testing.T) {
	ctx, reg, _ := openTestRegistry(t)
	for _, site := range []string{"foo", "foobar"} {
		if err := reg.CreateSite(ctx, &Site{Name: site, ModerationRoom: "!mod-" + site}); err != nil {
			t.Fatal(err)
		}
		for _, sec := range []string{"1", "2"} {
			if err := reg.PutRoom(ctx, Room{Site: site, Section: sec, RoomID: "!" + site + sec}); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := reg.DeleteSite(ctx, "foo"); err != nil {
		t.Fatal(err)
	}
	if _, err := reg.Site(ctx, "foo"); !errors.Is(err, ErrNotFound) {
		t.Errorf("site survived: %v", err)
	}
	for _, id := range []string{"!mod-foo", "!foo1", "!foo2"} {
		if _, err := reg.Lookup(ctx, id); !errors.Is(err, ErrNotFound) {
			t.Errorf("index entry %s survived: %v", id, err)
		}
	}
	if rooms, _ := reg.Rooms(ctx, "foo"); len(rooms) != 0 {
		t.Errorf("rooms survived: %+v", rooms)
	}
	// The other site is untouched.
	if _, err := reg.Site(ctx, "foobar"); err != nil {
		t.Error(err)
	}
	if rooms, _ := reg.Rooms(ctx, "foobar"); len(rooms) != 2 {
		t.Errorf("foobar has %d rooms", len(rooms))
	}
	for _, id := range []string{"!mod-foobar", "!foobar1"} {
		if _, err := reg.Lookup(ctx, id); err != nil {
			t.Errorf("Lookup(%s): %v", id, err)
		}
	}
	if err := reg.DeleteSite(ctx, "foo"); !errors.Is(err, ErrNotFound) {
		t.Errorf("second DeleteSite = %v", err)
	}
}

func TestPutSiteOverwrites(t *testing.T) {
	ctx, reg, _ := openTestRegistry(t)
	if err := reg.PutSite(ctx, &Site{Name: "s", Owner: "@a:x", ModerationRoom: "!m1"}); err != nil {
		t.Fatal(err)
	}
	if err := reg.PutSite(ctx, &Site{Name: "s", Owner: "@b:x", ModerationRoom: "!m2"}); err != nil {
		t.Fatal(err)
	}
	s, err := reg.Site(ctx, "s")
	if err != nil || s.Owner != "@b:x" {
		t.Fatalf("Site = %+v, %v", s, err)
	}
	if r, err := reg.Lookup(ctx, "!m2"); err != nil || r.Site != "s" {
		t.Fatalf("Lookup = %+v, %v", r, err)
	}
}

func TestWipe(t *testing.T) {
	ctx, reg, _ := openTestRegistry(t)
	// Empty buckets: nothing to do, and no error.
	if err := reg.Wipe(ctx); err != nil {
		t.Fatalf("Wipe on empty buckets: %v", err)
	}
	for i := range 30 {
		site := fmt.Sprintf("site%d", i)
		if err := reg.CreateSite(ctx, &Site{Name: site, ModerationRoom: "!m" + site}); err != nil {
			t.Fatal(err)
		}
		if err := reg.PutRoom(ctx, Room{Site: site, Section: "x", RoomID: "!c" + site}); err != nil {
			t.Fatal(err)
		}
	}
	if err := reg.Wipe(ctx); err != nil {
		t.Fatal(err)
	}
	for _, kv := range []jetstream.KeyValue{reg.sites.KV(), reg.rooms.KV(), reg.index} {
		l, err := kv.ListKeys(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for k := range l.Keys() {
			t.Errorf("bucket %s still has %s", kv.Bucket(), k)
		}
	}
	if sites, err := reg.Sites(ctx); err != nil || len(sites) != 0 {
		t.Fatalf("Sites after Wipe = %v, %v", sites, err)
	}
	// Wiped names can be created again, and a second wipe is fine.
	if err := reg.CreateSite(ctx, &Site{Name: "site1"}); err != nil {
		t.Fatal(err)
	}
	if err := reg.Wipe(ctx); err != nil {
		t.Fatal(err)
	}
	if err := reg.Wipe(ctx); err != nil {
		t.Fatal(err)
	}

	// A cancelled context is an error, not a silent partial wipe.
	if err := reg.CreateSite(ctx, &Site{Name: "kept"}); err != nil {
		t.Fatal(err)
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if err := reg.Wipe(cancelled); err == nil {
		t.Fatal("Wipe with a cancelled context reported success")
	}
}

// TestCreateSiteRetryRepairsIndex: a create whose index write was lost is
// retried by its caller; the retry gets ErrExists and the index is written.
func TestCreateSiteRetryRepairsIndex(t *testing.T) {
	ctx, reg, _ := openTestRegistry(t)
	s := &Site{Name: "s", Owner: "@o:x", ModerationRoom: "!mod:x"}
	if err := reg.CreateSite(ctx, s); err != nil {
		t.Fatal(err)
	}
	if err := reg.index.Purge(ctx, indexKey("!mod:x")); err != nil {
		t.Fatal(err)
	}
	if err := reg.CreateSite(ctx, &Site{Name: "s", Owner: "@o:x", ModerationRoom: "!mod:x"}); !errors.Is(err, ErrExists) {
		t.Fatalf("retry = %v, want ErrExists", err)
	}
	if r, err := reg.Lookup(ctx, "!mod:x"); err != nil || r.Site != "s" {
		t.Fatalf("index not repaired: %+v, %v", r, err)
	}
	// Someone else's room is never indexed by a refused create.
	if err := reg.CreateSite(ctx, &Site{Name: "s", Owner: "@thief:x", ModerationRoom: "!thief:x"}); !errors.Is(err, ErrExists) {
		t.Fatal(err)
	}
	if _, err := reg.Lookup(ctx, "!thief:x"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("refused create indexed its room: %v", err)
	}
}
