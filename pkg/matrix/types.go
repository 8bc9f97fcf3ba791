package matrix

// Room presets and visibilities for CreateRoomRequest.
const (
	PresetPrivateChat        = "private_chat"
	PresetPublicChat         = "public_chat"
	PresetTrustedPrivateChat = "trusted_private_chat"

	VisibilityPublic  = "public"
	VisibilityPrivate = "private"
)

// Membership values for Members.
const (
	MembershipJoin   = "join"
	MembershipInvite = "invite"
	MembershipLeave  = "leave"
	MembershipBan    = "ban"
	MembershipKnock  = "knock"
)

// CreateRoomRequest is the body of POST /createRoom.
type CreateRoomRequest struct {
	Visibility      string         `json:"visibility,omitempty"`
	RoomAliasName   string         `json:"room_alias_name,omitempty"` // localpart only, without '#' and server
	Name            string         `json:"name,omitempty"`
	Topic           string         `json:"topic,omitempty"`
	Preset          string         `json:"preset,omitempty"`
	Invite          []string       `json:"invite,omitempty"`
	IsDirect        bool           `json:"is_direct,omitempty"`
	CreationContent map[string]any `json:"creation_content,omitempty"`
	InitialState    []StateEvent   `json:"initial_state,omitempty"`
	// PowerLevelContentOverride is merged by the homeserver over the power
	// levels it would have set; only the fields present are sent.
	PowerLevelContentOverride *PowerLevels `json:"power_level_content_override,omitempty"`
	RoomVersion               string       `json:"room_version,omitempty"`
}

// StateEvent is an entry of CreateRoomRequest.InitialState.
type StateEvent struct {
	Type     string `json:"type"`
	StateKey string `json:"state_key"`
	Content  any    `json:"content"`
}

// MessageContent is the content of an m.room.message event.
type MessageContent struct {
	MsgType       string `json:"msgtype"`
	Body          string `json:"body"`
	Format        string `json:"format,omitempty"`
	FormattedBody string `json:"formatted_body,omitempty"`
}

// FormatHTML is the only formatted_body format the spec defines.
const FormatHTML = "org.matrix.custom.html"
