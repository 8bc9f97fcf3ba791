package matrix_test

import (
	"context"
	"log"
	"time"

	"github.com/cactus-comments/appservice/pkg/matrix"
	"github.com/cactus-comments/appservice/pkg/mxid"
)

// Creating a comment room idempotently: a retry of a createRoom whose answer
// was lost, or a concurrent creator, ends in M_ROOM_IN_USE, which means the
// room exists; resolve the alias to learn its id.
func Example_createRoomIdempotently() {
	c, err := matrix.NewClient(matrix.Config{
		HomeserverURL: "http://127.0.0.1:8008",
		Token:         "as_token from the registration",
		Observe: func(endpoint string, status int, d time.Duration) {
			// e.g. a Prometheus histogram labelled by endpoint and status
		},
	})
	if err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()
	alias := mxid.MustRoomAlias("#comments_blog_post1:example.org")
	room, err := c.CreateRoom(ctx, &matrix.CreateRoomRequest{
		Visibility:    matrix.VisibilityPrivate,
		RoomAliasName: alias.Localpart(),
	})
	switch {
	case matrix.IsRoomInUse(err):
		room, err = c.ResolveAlias(ctx, alias)
	case matrix.IsPermanent(err):
		log.Printf("will not retry: %v", err)
		return
	}
	if err != nil {
		log.Printf("retry later: %v", err)
		return
	}
	// Derive the txn id from what caused the send, so redelivery is a no-op.
	_, err = c.As(mxid.MustUserID("@cactusbot:example.org")).SendNotice(ctx, room, "welcome-"+room.String(), "Welcome!")
	if err != nil {
		log.Print(err)
	}
}
