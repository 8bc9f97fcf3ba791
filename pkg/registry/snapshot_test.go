package registry

import (
	"context"
	"errors"
	"testing"
	"time"
)

// waitSnapshot waits until the snapshot holds name at the bucket's current
// revision (or, with gone, no longer holds it).
func waitSnapshot(t *testing.T, ctx context.Context, snap *SiteSnapshot, name string, gone bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		rev, ok := snap.Cached(name)
		if gone && !ok {
			return
		}
		if !gone && ok {
			if _, moved, err := snap.reg.SiteIfMoved(ctx, name, rev); err == nil && !moved {
				return
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("snapshot never caught up with site %q (gone=%v)", name, gone)
}

func TestSiteSnapshotFollowsTheBucket(t *testing.T) {
	ctx, reg, _ := openTestRegistry(t)
	if err := reg.CreateSite(ctx, &Site{Name: "before", Owner: "@a:x", ModerationRoom: "!m1:x"}); err != nil {
		t.Fatal(err)
	}
	wctx, stop := context.WithCancel(ctx)
	defer stop()
	snap := reg.WatchSites(wctx, nil)

	// A site written after the watch started, before the watch delivered
	// it, is read from the bucket with its revision.
	if err := reg.CreateSite(ctx, &Site{Name: "after", Owner: "@b:x", ModerationRoom: "!m2:x"}); err != nil {
		t.Fatal(err)
	}
	s, rev, err := snap.Site(ctx, "after")
	if err != nil || s.Owner != "@b:x" || rev == 0 {
		t.Fatalf("site after = %+v, rev %d, %v", s, rev, err)
	}
	if _, _, err := snap.Site(ctx, "nobody"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown site: %v, want ErrNotFound", err)
	}

	waitSnapshot(t, ctx, snap, "before", false)
	waitSnapshot(t, ctx, snap, "after", false)
	s, rev, err = snap.Site(ctx, "before")
	if err != nil || s.ModerationRoom != "!m1:x" {
		t.Fatalf("site before = %+v, %v", s, err)
	}
	if _, moved, err := reg.SiteIfMoved(ctx, "before", rev); err != nil || moved {
		t.Fatalf("unchanged site: moved=%v, %v", moved, err)
	}

	// A change: the revision check sees it before the snapshot may, and
	// the snapshot follows.
	if _, err := reg.UpdateSite(ctx, "before", func(s *Site) (bool, error) { return s.SetBanned("@spam:x", true), nil }); err != nil {
		t.Fatal(err)
	}
	now, moved, err := reg.SiteIfMoved(ctx, "before", rev)
	if err != nil || !moved || !now.Banned("@spam:x") {
		t.Fatalf("changed site: %+v moved=%v, %v", now, moved, err)
	}
	waitSnapshot(t, ctx, snap, "before", false)
	if s, _, _ := snap.Site(ctx, "before"); !s.Banned("@spam:x") {
		t.Fatalf("snapshot did not follow the ban: %+v", s)
	}

	// A deleted site leaves the snapshot, and the revision check says so.
	if err := reg.DeleteSite(ctx, "after"); err != nil {
		t.Fatal(err)
	}
	waitSnapshot(t, ctx, snap, "after", true)
	if _, _, err := snap.Site(ctx, "after"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("deleted site: %v, want ErrNotFound", err)
	}
	if _, _, err := reg.SiteIfMoved(ctx, "after", rev); !errors.Is(err, ErrNotFound) {
		t.Fatalf("revision check of a deleted site: %v, want ErrNotFound", err)
	}
}

// PutRoom writes the room and its index entry together; both are there
// when it returns.
func TestPutRoomWritesRoomAndIndex(t *testing.T) {
	ctx, reg, _ := openTestRegistry(t)
	room := Room{Site: "s", Section: "a", RoomID: "!r:x", Alias: "#comments_s_a:x"}
	if err := reg.PutRoom(ctx, room); err != nil {
		t.Fatal(err)
	}
	got, err := reg.Room(ctx, "s", "a")
	if err != nil || got.RoomID != room.RoomID {
		t.Fatalf("room = %+v, %v", got, err)
	}
	idx, err := reg.Lookup(ctx, "!r:x")
	if err != nil || idx.Site != "s" || idx.Section != "a" || idx.CreatedAt.IsZero() {
		t.Fatalf("index = %+v, %v", idx, err)
	}
}
