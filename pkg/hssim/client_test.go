package hssim

import (
	"errors"
	"testing"
)

func TestClientHelpers(t *testing.T) {
	e := startEnv(t, Synapse)
	ctx := ctxT(t)
	alice, atok := e.user("alice")
	bob, btok := e.user("bob")
	id, err := e.hs.CreateRoom(ctx, atok, map[string]any{"visibility": "public", "room_alias_name": "hall"})
	if err != nil {
		t.Fatal(err)
	}
	if got, err := e.hs.Join(ctx, btok, "#hall:example.org"); err != nil || got != id {
		t.Fatalf("join %q %v", got, err)
	}
	ev, err := e.hs.SendText(ctx, btok, id, "hello")
	if err != nil || ev == "" {
		t.Fatal(err)
	}
	if _, err := e.hs.PutState(ctx, atok, id, "m.room.topic", "", map[string]any{"topic": "t"}); err != nil {
		t.Fatal(err)
	}
	if err := e.hs.MemberAction(ctx, atok, id, "ban", bob, "spam"); err != nil {
		t.Fatal(err)
	}
	_, err = e.hs.SendText(ctx, btok, id, "again")
	var apiErr *APIError
	if !errors.As(err, &apiErr) || apiErr.Status != 403 || apiErr.ErrCode != "M_FORBIDDEN" {
		t.Fatalf("banned send: %v", err)
	}
	if err := e.hs.MemberAction(ctx, atok, id, "unban", bob, ""); err != nil {
		t.Fatal(err)
	}
	if err := e.hs.Leave(ctx, atok, id); err != nil {
		t.Fatal(err)
	}
	if e.hs.Membership(id, alice) != "leave" || e.hs.Membership(id, bob) != "leave" {
		t.Fatal("memberships")
	}
}
