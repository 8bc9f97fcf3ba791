package hssim

import (
	"context"
	"strconv"
	"testing"
)

// BenchmarkSendDelivered measures a client send through HTTP plus its push
// to a fake appservice, the path load tools exercise.
func BenchmarkSendDelivered(b *testing.B) {
	as := newFakeASB(b)
	hs, err := Start(context.Background(), Options{ServerName: testServer, Registrations: regsFor(as)})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = hs.Close() })
	ctx := context.Background()
	_, tok, _ := hs.RegisterUser("alice", "pw")
	if _, err := hs.Do(ctx, testASToken, "POST", "/_matrix/client/v3/register", map[string]any{"type": asRegistrationType, "username": "cactusbot"}); err != nil {
		b.Fatal(err)
	}
	id, err := hs.CreateRoom(ctx, testASToken, map[string]any{"visibility": "public"})
	if err != nil {
		b.Fatal(err)
	}
	if _, err := hs.Join(ctx, tok, id); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	var last string
	for i := 0; i < b.N; i++ {
		last, err = hs.Send(ctx, tok, id, "m.room.message", map[string]any{"body": strconv.Itoa(i)})
		if err != nil {
			b.Fatal(err)
		}
	}
	if err := hs.WaitDelivered(ctx, last); err != nil {
		b.Fatal(err)
	}
}
