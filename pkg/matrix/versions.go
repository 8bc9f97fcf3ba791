package matrix

import (
	"context"
	"fmt"
	"net/http"
	"net/url"

	"github.com/go-json-experiment/json/jsontext"

	"github.com/cactus-comments/appservice/pkg/event"
	"github.com/cactus-comments/appservice/pkg/mxid"
)

// DefaultRoomVersion is the version the homeserver gives a room whose
// createRoom names none (GET /capabilities, m.room_versions.default).
// Sending it back as CreateRoomRequest.RoomVersion pins the version of the
// room about to be created, whatever the homeserver's default is by then.
func (c *Client) DefaultRoomVersion(ctx context.Context) (string, error) {
	var out struct {
		Capabilities struct {
			RoomVersions *struct {
				Default string `json:"default"`
			} `json:"m.room_versions"`
		} `json:"capabilities"`
	}
	if err := c.call(ctx, "capabilities", http.MethodGet, nil, nil, &out, v3+"/capabilities"); err != nil {
		return "", err
	}
	rv := out.Capabilities.RoomVersions
	if rv == nil || rv.Default == "" {
		return "", fmt.Errorf("matrix: capabilities: the homeserver announces no default room version")
	}
	return rv.Default, nil
}

// CreateEvent returns the room's m.room.create event with its sender,
// which the content alone does not name from room version 11 on. It asks
// for the state event in full (format=event); a homeserver that answers
// with the content only is asked for the whole state instead.
func (c *Client) CreateEvent(ctx context.Context, room mxid.RoomID) (*event.Event, error) {
	if room.IsZero() {
		return nil, fmt.Errorf("matrix: createEvent: empty room id")
	}
	var raw jsontext.Value
	if err := c.call(ctx, "getState", http.MethodGet, url.Values{"format": {"event"}}, nil, &raw,
		v3+"/rooms/{}/state/{}/{}", room.String(), "m.room.create", ""); err != nil {
		return nil, err
	}
	// The event as the homeserver serialised it, read with the strict
	// rules; some homeservers leave room_id out of a single state event.
	var ev event.Event
	if event.DecodeContent(raw, &ev) == nil && ev.Type == "m.room.create" && ev.Sender != "" && len(ev.Content) > 0 {
		return &ev, nil
	}
	state, err := c.State(ctx, room)
	if err != nil {
		return nil, err
	}
	for i := range state {
		if e := &state[i]; e.Type == "m.room.create" && e.StateKey != nil && *e.StateKey == "" {
			return e, nil
		}
	}
	return nil, fmt.Errorf("matrix: createEvent: the state of %s has no m.room.create", room)
}

// UpgradeRoom replaces room by a new room of version (POST
// /rooms/{roomId}/upgrade) and returns the replacement's id. The old room
// gets an m.room.tombstone naming it.
func (c *Client) UpgradeRoom(ctx context.Context, room mxid.RoomID, version string) (mxid.RoomID, error) {
	if room.IsZero() || version == "" {
		return mxid.RoomID{}, fmt.Errorf("matrix: upgrade: room id and version are required")
	}
	var out struct {
		ReplacementRoom string `json:"replacement_room"`
	}
	if err := c.call(ctx, "upgrade", http.MethodPost, nil, map[string]string{"new_version": version}, &out,
		v3+"/rooms/{}/upgrade", room.String()); err != nil {
		return mxid.RoomID{}, err
	}
	return parseRoomID("upgrade", out.ReplacementRoom)
}
