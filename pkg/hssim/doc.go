package hssim

// Behaviour notes (what tests above the simulator can rely on)
//
// Start a Server with Start(ctx, Options{...}); it listens on 127.0.0.1 with
// a random port by default and stops on Close (or when ctx ends). Register
// users with RegisterUser/RegisterGuest (no user-interactive auth) or over
// HTTP (POST /register needs auth {"type":"m.login.dummy"}, as an open
// Synapse does). Inspect with RoomState, StateEvent, Timeline, Membership,
// PowerLevel, JoinedMembers, ResolveAliasLocal, Aliases, Rooms, RoomVersionOf,
// Creators, UserExists, Transactions, Delivered, Calls. Wait for asynchronous delivery with
// WaitDelivered, WaitIdle or Wait(cond) (signalled, no polling).
//
// SetLatency delays the answer, not the effect: like Synapse, which commits
// a createRoom (or any write) whose client hung up, the simulator applies a
// request at once and only then waits before answering. A client that
// times out may therefore find its room, alias or event in place; a retry
// must expect M_ROOM_IN_USE or an already-made change. Faults (InjectFault)
// replace the effect: a faulted request changes nothing.
//
// Room versions: 1 to 12 are created (others: 400
// M_UNSUPPORTED_ROOM_VERSION); new rooms get Options.RoomVersion, by
// default 10 on Synapse and Dendrite and 12 on Conduit, which
// GET /capabilities reports; SetRoomVersion changes it for new rooms, as
// an operator changing default_room_version does. Before 10 levels may be strings; before 11
// the create content names the creator; from 11 redactions carry redacts
// in content. From 12 (MSC4289, MSC4291): the room id is the create event's
// id with '!' for '$' (no server name); the create event's sender and
// content.additional_creators (validated, 400 M_BAD_JSON) are creators with
// infinite power (PowerLevel answers CreatorLevel); default power levels
// have users {} and m.room.tombstone at 150; a trusted_private_chat's
// invitees become additional creators; any power levels naming a creator
// in users are refused (Synapse 400 M_UNKNOWN "Creator user … must not
// appear in content.users", continuwuity 400 M_INVALID_PARAM, Dendrite 403),
// which is also how demoting a creator fails; kicking or banning a creator
// fails the auth rules (403). Invites carry m.room.create in
// unsigned.invite_room_state in every version.
//
// Options.V12CreateCollisions (Synapse mode) imitates Synapse up to
// 1.157.1, where two v12 createRooms by one user at once compute the same
// room id: a v12 createRoom answers 500 M_UNKNOWN, creating nothing, while
// another by the same user is committed but not yet answered.
//
// createRoom applies power levels from initial_state if given, else the
// defaults, the preset's override (invite 0 in private presets,
// m.call.invite 50 at the top level in public_chat, as Synapse writes it)
// and power_level_content_override; Synapse before v12 refuses an override
// whose users lack the creator (400 M_UNKNOWN). Every state event after the
// creator's join is authorized; one the rules refuse leaves what each
// server leaves: Synapse the room with its create event, join and alias;
// continuwuity the events before the refused one, without the alias;
// Dendrite nothing.
//
// Upgrades (POST /rooms/{id}/upgrade {"new_version", "additional_creators"})
// follow Synapse: the upgrader needs the m.room.tombstone level (150 by
// default in v12 rooms, so only creators); the replacement room's create
// content names the predecessor (with the tombstone's event id only below
// v12), takes additional_creators for v12 targets and the upgrader as
// creator; join rules, name, topic, history visibility, guest access,
// avatar, encryption, server ACL and power levels are copied (power levels
// with the upgrader raised to what copying needs, then the old content sent
// last, with the new room's creators removed from users for v12 targets);
// bans are copied; the old room gets m.room.tombstone {body,
// replacement_room} and its invite and events_default raised to 50; local
// aliases, the canonical alias and the directory listing move to the
// replacement. Nobody else is joined or invited. The answer is
// {"replacement_room": id}.
//
// Client-server endpoints (r0 and v3 prefixes; endpoint names for Calls,
// SetLatency and InjectFault are the EP constants): versions, register,
// login, account/whoami, profile (get, displayname, avatar_url), createRoom,
// join (by id or alias), rooms/{id}/{join,invite,leave,kick,ban,unban},
// send, redact, state (get one, put, get all), joined_members, members,
// upgrade,
// messages, aliases, directory/room (get, put, delete), directory/list/room,
// joined_rooms, capabilities, v1 appservice ping,
// thirdparty/{location,user}.
//
// Events are pkg/event.Event everywhere: stored, returned by Timeline and
// RoomState, served to clients and pushed to appservices (unsigned.age is
// added when served).
//
// Events from remote servers: ReceiveFederated(pdu) makes an event arrive
// over federation, the PDU written by the test as the remote server wrote
// it. The simulator reads its real fields by their exact keys (room_id,
// sender of another server, type, state_key, content, origin_server_ts),
// checks what a receiving server checks (size limits, canonical JSON from
// room version 6, the authorization rules against the room's state) and
// applies the event to the room by those fields. Every other top-level key
// is the remote server's to choose, variants of real fields such as
// "Sender" or "ſender" and values of any JSON type included ("redacts":5
// on a message). Synapse keeps them: it serialises the PDU's dict for
// clients and appservices, dropping only auth_events, prev_events, hashes,
// signatures, depth, origin and prev_state (the simulator drops those too).
// So in Synapse mode they are served to appservices and clients after the
// event's own fields, in the order given, each value byte for byte.
// (Synapse writes every key in code point order, canonical JSON; keeping
// the given order lets a test put a variant before or after the real key.)
// Dendrite and continuwuity rebuild the client event from the fields they
// parsed: there the keys are dropped, and a non-string redacts makes them
// refuse the event. Redaction prunes the keys, keeping the legacy
// membership before version 11. What no homeserver emits, since it
// re-serialises a parsed event, cannot be sent this way: duplicate keys at
// any depth, invalid UTF-8 or lone surrogates; nor can the keys the
// receiving server writes (event_id, unsigned, and user_id, age,
// prev_content, ... which Synapse's client format writes at the top level;
// the simulator does not write those). Create and redaction events over federation are not simulated.
// Refusals wrap ErrFederation. A homeserver's own malformations (duplicate
// keys, broken bodies, huge transaction ids) are for raw requests to the
// appservice, not for the simulator.
//
// Differences between modes, each taken from the real server:
//
//   - Namespace regexes: Synapse anchors at the start only; Dendrite and
//     continuwuity match anywhere.
//   - Path encoding of ids sent to appservices: Synapse uses Python's
//     urllib.parse.quote, which escapes '#', ':' and '@' but NOT '/' (an
//     alias with a '/' arrives as several path segments); Dendrite uses Go's
//     url.PathEscape (escapes '#' and '/', not ':' or '@'); continuwuity
//     escapes everything outside the unreserved set.
//   - Pushes: Synapse ≤100 events, integer txn ids increasing with gaps (one
//     sequence shared by every appservice, plus random skips), Bearer header
//     only, success = 2xx with a JSON body, retry of the same txn id and
//     events after 2^n units up to 512, later events wait in later txns, a
//     successful client-server ping retries at once. Dendrite ≤50 events,
//     txn id = UnixNano, success = exactly 200, retry after 2^n up to 64
//     units with events that arrived meanwhile merged into the same txn id,
//     no keep-alive. continuwuity ≤100 events, txn id = hash of the events,
//     header and ?access_token=, success = any 2xx, retry after 10·n units.
//   - Synapse asks GET /users/{userId} of every appservice claiming an
//     unknown local user exclusively (sender of an event, or target of a
//     member event) before queueing the event, blocking all delivery
//     meanwhile. Like Synapse it does not cache the answer: a 200 helps
//     only if the appservice registered the user.
//   - Unknown alias in an appservice namespace: the appservice is asked
//     (GET /rooms/{alias}), then the alias is looked up again. Still absent:
//     404 M_NOT_FOUND; Dendrite answers a join by such an alias with 500
//     (its join path turns "alias not found" into a plain error), and a
//     directory lookup with 500 only when the appservice was unreachable.
//   - Client txn deduplication: Synapse keys by (request path, appservice)
//     for appservices, ignoring user_id, and by (path, user, device) for
//     users; Dendrite by (access token, path); continuwuity by (user,
//     device, txn id), ignoring the room. Only successes are remembered,
//     for Options.TxnWindow (default 30 min).
//   - Membership: Synapse refuses unban of a user who is not banned and
//     any action but ban/unban/leave on a banned user with 403 M_BAD_STATE;
//     the others answer 403 M_FORBIDDEN from the auth rules. A repeated
//     membership change by the same sender with the same content returns
//     the existing event (no new event), as does re-setting identical state.
//   - The appservice sender exists at startup on Dendrite (registering it
//     answers M_USER_IN_USE); on Synapse and continuwuity the first
//     registration succeeds. Masquerading as it works either way.
//   - Client-server ping and its errors exist only in Synapse mode
//     (elsewhere 404 M_UNRECOGNIZED). Dendrite asks every appservice
//     thirdparty/location?alias= and thirdparty/user?userid= when a client
//     calls the matching client-server lookups.
