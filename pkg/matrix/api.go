package matrix

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"time"

	"github.com/cactus-comments/appservice/pkg/event"
	"github.com/cactus-comments/appservice/pkg/mxid"
)

const v3 = "/_matrix/client/v3"

// RegisterAppserviceUser registers localpart as a user of the appservice's
// namespace. An existing user (M_USER_IN_USE) is not an error: created is
// false. Because a retried request whose first response was lost also ends
// in M_USER_IN_USE, created=false does not prove someone else created it.
func (c *Client) RegisterAppserviceUser(ctx context.Context, localpart string) (created bool, err error) {
	if localpart == "" {
		return false, fmt.Errorf("matrix: register: empty localpart")
	}
	body := map[string]any{
		"type":          "m.login.application_service",
		"username":      localpart,
		"inhibit_login": true,
	}
	err = c.call(ctx, "register", http.MethodPost, nil, body, nil, v3+"/register")
	if IsUserInUse(err) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return true, nil
}

// Whoami returns the user the token (and masquerade) acts as.
func (c *Client) Whoami(ctx context.Context) (mxid.UserID, error) {
	var out struct {
		UserID string `json:"user_id"`
	}
	if err := c.call(ctx, "whoami", http.MethodGet, nil, nil, &out, v3+"/account/whoami"); err != nil {
		return mxid.UserID{}, err
	}
	u, err := mxid.ParseUserID(out.UserID)
	if err != nil {
		return mxid.UserID{}, fmt.Errorf("matrix: whoami: homeserver answered a bad user id: %w", err)
	}
	return u, nil
}

// SetDisplayName sets user's display name. An appservice changing one of its
// namespace users must call this on c.As(user).
func (c *Client) SetDisplayName(ctx context.Context, user mxid.UserID, name string) error {
	if user.IsZero() {
		return fmt.Errorf("matrix: setDisplayName: empty user id")
	}
	return c.call(ctx, "setDisplayName", http.MethodPut, nil, map[string]string{"displayname": name}, nil,
		v3+"/profile/{}/displayname", user.String())
}

// SetAvatarURL sets user's avatar to an mxc:// URI. Like SetDisplayName it
// needs c.As(user) for users other than the token's own.
func (c *Client) SetAvatarURL(ctx context.Context, user mxid.UserID, mxc string) error {
	if user.IsZero() {
		return fmt.Errorf("matrix: setAvatarURL: empty user id")
	}
	return c.call(ctx, "setAvatarURL", http.MethodPut, nil, map[string]string{"avatar_url": mxc}, nil,
		v3+"/profile/{}/avatar_url", user.String())
}

// CreateRoom creates a room. With RoomAliasName set, an IsRoomInUse error
// means the alias exists, possibly created by this very call's first attempt
// (see the package documentation).
func (c *Client) CreateRoom(ctx context.Context, req *CreateRoomRequest) (mxid.RoomID, error) {
	if req == nil {
		req = &CreateRoomRequest{}
	}
	var out struct {
		RoomID string `json:"room_id"`
	}
	if err := c.call(ctx, "createRoom", http.MethodPost, nil, req, &out, v3+"/createRoom"); err != nil {
		return mxid.RoomID{}, err
	}
	return parseRoomID("createRoom", out.RoomID)
}

// JoinRoom joins a room by id or alias and returns its id. Joining a room
// one is already in succeeds.
func (c *Client) JoinRoom(ctx context.Context, roomIDOrAlias string) (mxid.RoomID, error) {
	if roomIDOrAlias == "" {
		return mxid.RoomID{}, fmt.Errorf("matrix: join: empty room id or alias")
	}
	var out struct {
		RoomID string `json:"room_id"`
	}
	if err := c.call(ctx, "join", http.MethodPost, nil, struct{}{}, &out, v3+"/join/{}", roomIDOrAlias); err != nil {
		return mxid.RoomID{}, err
	}
	return parseRoomID("join", out.RoomID)
}

// LeaveRoom leaves room; reason may be empty.
func (c *Client) LeaveRoom(ctx context.Context, room mxid.RoomID, reason string) error {
	if room.IsZero() {
		return fmt.Errorf("matrix: leave: empty room id")
	}
	body := map[string]string{}
	if reason != "" {
		body["reason"] = reason
	}
	return c.call(ctx, "leave", http.MethodPost, nil, body, nil, v3+"/rooms/{}/leave", room.String())
}

// Invite invites user to room.
func (c *Client) Invite(ctx context.Context, room mxid.RoomID, user mxid.UserID, reason string) error {
	return c.membership(ctx, "invite", room, user, reason)
}

// Kick removes user from room.
func (c *Client) Kick(ctx context.Context, room mxid.RoomID, user mxid.UserID, reason string) error {
	return c.membership(ctx, "kick", room, user, reason)
}

// Ban bans user from room. Banning a banned user succeeds on the homeservers
// we support.
func (c *Client) Ban(ctx context.Context, room mxid.RoomID, user mxid.UserID, reason string) error {
	return c.membership(ctx, "ban", room, user, reason)
}

// Unban lifts a ban.
func (c *Client) Unban(ctx context.Context, room mxid.RoomID, user mxid.UserID, reason string) error {
	return c.membership(ctx, "unban", room, user, reason)
}

func (c *Client) membership(ctx context.Context, action string, room mxid.RoomID, user mxid.UserID, reason string) error {
	if room.IsZero() || user.IsZero() {
		return fmt.Errorf("matrix: %s: empty room or user id", action)
	}
	body := map[string]string{"user_id": user.String()}
	if reason != "" {
		body["reason"] = reason
	}
	return c.call(ctx, action, http.MethodPost, nil, body, nil, v3+"/rooms/{}/"+action, room.String())
}

// SendEvent sends a message event. txnID must be unique for what caused
// the send (Synapse deduplicates on the path regardless of user_id), so that
// a retry, ours or the caller's, does not send twice.
func (c *Client) SendEvent(ctx context.Context, room mxid.RoomID, eventType, txnID string, content any) (mxid.EventID, error) {
	if room.IsZero() || eventType == "" || txnID == "" {
		return mxid.EventID{}, fmt.Errorf("matrix: send: room id, event type and txn id are required")
	}
	if content == nil {
		content = struct{}{}
	}
	var out struct {
		EventID string `json:"event_id"`
	}
	if err := c.call(ctx, "send", http.MethodPut, nil, content, &out,
		v3+"/rooms/{}/send/{}/{}", room.String(), eventType, txnID); err != nil {
		return mxid.EventID{}, err
	}
	return parseEventID("send", out.EventID)
}

// SendText sends a plain m.text message.
func (c *Client) SendText(ctx context.Context, room mxid.RoomID, txnID, body string) (mxid.EventID, error) {
	return c.SendEvent(ctx, room, "m.room.message", txnID, MessageContent{MsgType: "m.text", Body: body})
}

// SendNotice sends an m.notice message (what bots should send: clients and
// other bots do not answer notices).
func (c *Client) SendNotice(ctx context.Context, room mxid.RoomID, txnID, body string) (mxid.EventID, error) {
	return c.SendEvent(ctx, room, "m.room.message", txnID, MessageContent{MsgType: "m.notice", Body: body})
}

// SendHTML sends a message of msgtype (m.text or m.notice; "" means m.notice)
// with a plain-text body and an HTML formatted_body.
func (c *Client) SendHTML(ctx context.Context, room mxid.RoomID, txnID, msgtype, body, html string) (mxid.EventID, error) {
	if msgtype == "" {
		msgtype = "m.notice"
	}
	return c.SendEvent(ctx, room, "m.room.message", txnID, MessageContent{
		MsgType: msgtype, Body: body, Format: FormatHTML, FormattedBody: html,
	})
}

// GetStateEvent reads the content of one state event into out (nil: only
// checks it exists). A missing event is an error for which IsNotFound holds.
func (c *Client) GetStateEvent(ctx context.Context, room mxid.RoomID, eventType, stateKey string, out any) error {
	if room.IsZero() || eventType == "" {
		return fmt.Errorf("matrix: getState: room id and event type are required")
	}
	return c.call(ctx, "getState", http.MethodGet, nil, nil, out,
		v3+"/rooms/{}/state/{}/{}", room.String(), eventType, stateKey)
}

// SetStateEvent sets a state event; stateKey may be empty.
func (c *Client) SetStateEvent(ctx context.Context, room mxid.RoomID, eventType, stateKey string, content any) (mxid.EventID, error) {
	if room.IsZero() || eventType == "" {
		return mxid.EventID{}, fmt.Errorf("matrix: setState: room id and event type are required")
	}
	if content == nil {
		content = struct{}{}
	}
	var out struct {
		EventID string `json:"event_id"`
	}
	if err := c.call(ctx, "setState", http.MethodPut, nil, content, &out,
		v3+"/rooms/{}/state/{}/{}", room.String(), eventType, stateKey); err != nil {
		return mxid.EventID{}, err
	}
	return parseEventID("setState", out.EventID)
}

// GetPowerLevels reads the room's m.room.power_levels.
func (c *Client) GetPowerLevels(ctx context.Context, room mxid.RoomID) (*PowerLevels, error) {
	pl := &PowerLevels{}
	if err := c.GetStateEvent(ctx, room, "m.room.power_levels", "", pl); err != nil {
		return nil, err
	}
	return pl, nil
}

// SetPowerLevels replaces the room's m.room.power_levels with pl.
func (c *Client) SetPowerLevels(ctx context.Context, room mxid.RoomID, pl *PowerLevels) (mxid.EventID, error) {
	if pl == nil {
		return mxid.EventID{}, fmt.Errorf("matrix: setState: nil power levels")
	}
	return c.SetStateEvent(ctx, room, "m.room.power_levels", "", pl)
}

// State returns every current state event of room.
func (c *Client) State(ctx context.Context, room mxid.RoomID) ([]event.Event, error) {
	if room.IsZero() {
		return nil, fmt.Errorf("matrix: state: empty room id")
	}
	var out []event.Event
	if err := c.call(ctx, "state", http.MethodGet, nil, nil, &out, v3+"/rooms/{}/state", room.String()); err != nil {
		return nil, err
	}
	return out, nil
}

// Members returns the m.room.member events of room, only those with the
// given membership (such as MembershipBan) unless membership is "".
func (c *Client) Members(ctx context.Context, room mxid.RoomID, membership string) ([]event.Event, error) {
	if room.IsZero() {
		return nil, fmt.Errorf("matrix: members: empty room id")
	}
	var q url.Values
	if membership != "" {
		q = url.Values{"membership": {membership}}
	}
	var out struct {
		Chunk []event.Event `json:"chunk"`
	}
	if err := c.call(ctx, "members", http.MethodGet, q, nil, &out, v3+"/rooms/{}/members", room.String()); err != nil {
		return nil, err
	}
	return out.Chunk, nil
}

// EventContext returns an event of room as the homeserver serves it to
// clients (GET /rooms/{roomId}/context/{eventId} with limit 0: the event
// alone). There every homeserver puts unsigned.prev_content in a state
// event that replaced another, which the events they push to appservices
// may lack: Synapse leaves it out of those its recoverer resends, Dendrite
// out of all. IsNotFound holds for an event the homeserver does not have.
func (c *Client) EventContext(ctx context.Context, room mxid.RoomID, id mxid.EventID) (*event.Event, error) {
	if room.IsZero() || id.IsZero() {
		return nil, fmt.Errorf("matrix: context: room id and event id are required")
	}
	var out struct {
		Event *event.Event `json:"event"`
	}
	if err := c.call(ctx, "context", http.MethodGet, url.Values{"limit": {"0"}}, nil, &out,
		v3+"/rooms/{}/context/{}", room.String(), id.String()); err != nil {
		return nil, err
	}
	if out.Event == nil || out.Event.EventID != id.String() {
		return nil, fmt.Errorf("matrix: context: the homeserver answered another event than %s", id)
	}
	return out.Event, nil
}

// ResolveAlias returns the room an alias points to; IsNotFound holds for an
// unknown alias.
func (c *Client) ResolveAlias(ctx context.Context, alias mxid.RoomAlias) (mxid.RoomID, error) {
	if alias.IsZero() {
		return mxid.RoomID{}, fmt.Errorf("matrix: resolveAlias: empty alias")
	}
	var out struct {
		RoomID string `json:"room_id"`
	}
	if err := c.call(ctx, "resolveAlias", http.MethodGet, nil, nil, &out, v3+"/directory/room/{}", alias.String()); err != nil {
		return mxid.RoomID{}, err
	}
	return parseRoomID("resolveAlias", out.RoomID)
}

// JoinedRooms lists the rooms the user is joined to.
func (c *Client) JoinedRooms(ctx context.Context) ([]mxid.RoomID, error) {
	var out struct {
		JoinedRooms []string `json:"joined_rooms"`
	}
	if err := c.call(ctx, "joinedRooms", http.MethodGet, nil, nil, &out, v3+"/joined_rooms"); err != nil {
		return nil, err
	}
	rooms := make([]mxid.RoomID, 0, len(out.JoinedRooms))
	for _, s := range out.JoinedRooms {
		r, err := parseRoomID("joinedRooms", s)
		if err != nil {
			return nil, err
		}
		rooms = append(rooms, r)
	}
	return rooms, nil
}

// AppservicePing asks the homeserver to ping the appservice appserviceID
// and returns the round trip it measured. Homeservers without the endpoint
// (Dendrite) answer 404 M_UNRECOGNIZED. The homeserver's verdict on the
// appservice (M_BAD_STATUS, M_CONNECTION_FAILED, M_CONNECTION_TIMEOUT) is
// returned without retrying.
func (c *Client) AppservicePing(ctx context.Context, appserviceID, txnID string) (time.Duration, error) {
	if appserviceID == "" {
		return 0, fmt.Errorf("matrix: appservicePing: empty appservice id")
	}
	body := map[string]string{}
	if txnID != "" {
		body["transaction_id"] = txnID
	}
	var out struct {
		DurationMS *float64 `json:"duration_ms"`
	}
	if err := c.call(ctx, "appservicePing", http.MethodPost, nil, body, &out,
		"/_matrix/client/v1/appservice/{}/ping", appserviceID); err != nil {
		return 0, err
	}
	if out.DurationMS == nil {
		return 0, fmt.Errorf("matrix: appservicePing: answer has no duration_ms")
	}
	return msDuration(*out.DurationMS), nil
}

func parseRoomID(endpoint, s string) (mxid.RoomID, error) {
	r, err := mxid.ParseRoomID(s)
	if err != nil {
		return mxid.RoomID{}, fmt.Errorf("matrix: %s: homeserver answered a bad room id: %w", endpoint, err)
	}
	return r, nil
}

func parseEventID(endpoint, s string) (mxid.EventID, error) {
	e, err := mxid.ParseEventID(s)
	if err != nil {
		return mxid.EventID{}, fmt.Errorf("matrix: %s: homeserver answered a bad event id: %w", endpoint, err)
	}
	return e, nil
}
