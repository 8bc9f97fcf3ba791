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
// unsigned.invite_room_state in every version; what else each server puts
// there, and in which form, is told at inviteStateTypes.
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
// A new event sent with /send or a state PUT over 65536 bytes as canonical
// JSON (counting 512 bytes for the PDU fields the simulator does not
// compute), or with a type or state key over 255 bytes, is refused with 413
// M_TOO_LARGE, as every server refuses it.
//
// Reading a room (state, members, joined_members, messages, context,
// aliases) needs a current join or a world_readable history; an invitee, a
// banned user or a stranger gets 403 M_FORBIDDEN in every mode, and an
// appservice's token acts only as its user, the bot included. A former
// member (leave) reads the room as it was at their leave on Synapse and
// Dendrite, and is refused the state endpoints on continuwuity; history is
// filtered by the history visibility. See visibility.go for each server.
//
// Client-server endpoints (r0 and v3 prefixes; endpoint names for Calls,
// SetLatency and InjectFault are the EP constants): versions, register,
// login, account/whoami, profile (get, displayname, avatar_url), createRoom,
// join (by id or alias), rooms/{id}/{join,invite,leave,kick,ban,unban},
// send, redact, state (get one, put, get all), joined_members, members,
// upgrade, messages, context (the event with unsigned.prev_content, as all
// three serve it to clients), aliases, directory/room (get, put, delete),
// directory/list/room, joined_rooms, capabilities, v1 appservice ping,
// thirdparty/{location,user}.
//
// Events are pkg/event.Event everywhere: stored and returned by Timeline
// and RoomState with unsigned holding prev_content, prev_sender and
// replaces_state of a state event that replaced another, an invite's
// invite_room_state, and a redacted event's redacted_because (the
// redaction). Clients get that with unsigned.age added. Appservices get
// each server's own rendering of it, byte for byte (see the differences
// between modes below); numbers are written as stored in every mode.
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
// on a message), and so are the keys Synapse's client format writes
// (user_id, age, prev_content, replaces_state, redacted_because,
// invite_room_state, knock_room_state) and unsigned. Synapse keeps the
// keys: it serialises the PDU's dict, dropping only auth_events,
// prev_events, hashes, signatures, depth, origin and prev_state (the
// simulator drops those too), then writes user_id over the remote's and
// its copies of unsigned keys where unsigned has them: a remote
// prev_content stands on an event that replaced no state, and on every
// resent one. Before parsing, Synapse moves unsigned.age (else a top-level
// age) to a top-level age_ts, receipt time less age (an age that is no
// number fails the whole federation transaction: refused here); it keeps
// of unsigned only age, and invite_room_state and knock_room_state of a
// member event, and serves that age unchanged: a remote event without one
// has no age. So in Synapse mode appservices get these keys in canonical
// JSON, values re-encoded; clients get them after the event's own fields,
// in the order given, byte for byte. A given event_id is ignored: the
// receiving server names the event. Dendrite and continuwuity drop
// unsigned and rebuild the client event from the fields they parsed: there
// the keys are dropped, and a non-string redacts makes them refuse the
// event. Only Synapse checks canonical JSON (rooms of version 6 and later)
// after stripping unsigned; the others check the PDU as sent. Redaction
// prunes the keys, age_ts and the kept unsigned, keeping the legacy
// membership before version 11. What no homeserver emits, since it
// re-serialises a parsed event, cannot be sent this way: duplicate keys at
// any depth, invalid UTF-8 or lone surrogates. An invite from a remote
// server gets no stripped state from the simulator. Create and redaction
// events over federation are not simulated. Refusals wrap ErrFederation.
// A homeserver's own malformations (duplicate keys, broken bodies, huge
// transaction ids) are for raw requests to the appservice, not for the
// simulator.
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
//     successful client-server ping retries at once; an appservice with
//     receive_ephemeral gets empty "ephemeral" and
//     "de.sorunome.msc2409.to_device" in every push. Dendrite ≤50 events,
//     txn id = UnixNano, success = exactly 200, retry after 2^n up to 64
//     units with events that arrived meanwhile merged into the same txn id,
//     no keep-alive. continuwuity ≤100 events, txn id = hash of the events,
//     header and ?access_token=, success = any 2xx, retry after 10·n units.
//   - Pushed events. Synapse: serialize_event with
//     format_event_for_client_v1, the whole body in canonical JSON (keys in
//     code point order at every depth, no spaces, non-ASCII and <, >, &,
//     U+2028 as they are). unsigned.age is now less the event's creation
//     (a remote event's: as given); user_id (the sender) and copies of
//     unsigned's age, redacted_because, replaces_state, prev_content,
//     invite_room_state and knock_room_state are at the top level; a
//     redaction carries its target at the top level and in content.
//     unsigned.prev_content and prev_sender come only in the first push of
//     an event queued while the appservice was up: a resent transaction,
//     and those formed while the appservice is down, are read back from the
//     database without them (and redacted by then, with the redaction
//     serialised the same way in redacted_because). invite_room_state only
//     on an invite or knock of a user the appservice is interested in.
//     Dendrite: encoding/json's Marshal of its ClientEvent, keys content,
//     event_id, origin_server_ts, room_id, sender, state_key, type,
//     unsigned, redacts, content in canonical JSON, <, >, &, U+2028 and
//     U+2029 escaped as \u003c ... everywhere; unsigned only holds an
//     invite's invite_room_state (no age, no prev_content: the sync API
//     adds those, not the appservice component); every attempt sends the
//     events as they were queued. continuwuity: the PDU read from its
//     database at each attempt, as serde_json's sorted maps write it;
//     unsigned as stored: {} or prev_content, prev_sender and
//     replaces_state for a state event, transaction_id for a /send,
//     org.continuwuity.redacted_by alone once redacted; no age, no
//     invite_room_state; a redaction's target at the top level and in
//     content.
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
//   - Profiles: Synapse refuses a display name over 256 characters or an
//     avatar URL over 1000 (400 M_UNKNOWN) and setting another user's
//     profile with 400 M_FORBIDDEN; the others answer that 403.
//   - 429 M_LIMIT_EXCEEDED carries retry_after_ms everywhere and the
//     Retry-After header (whole seconds, rounded up) on Synapse and
//     continuwuity, not on Dendrite.
//   - Client-server ping: Synapse and continuwuity; Dendrite answers 404
//     M_UNRECOGNIZED. Synapse names what failed (502 M_CONNECTION_FAILED
//     or M_BAD_STATUS, 504 M_CONNECTION_TIMEOUT) and retries the
//     appservice's failed transaction at once after a success;
//     continuwuity answers a user's token 401 M_UNAUTHORIZED and every
//     failure to call the appservice 500 M_UNKNOWN. Dendrite asks every appservice
//     thirdparty/location?alias= and thirdparty/user?userid= when a client
//     calls the matching client-server lookups.
