package hssim

// Behaviour notes (what tests above the simulator can rely on)
//
// Start a Server with Start(ctx, Options{...}); it listens on 127.0.0.1 with
// a random port by default and stops on Close (or when ctx ends). Register
// users with RegisterUser/RegisterGuest (no user-interactive auth) or over
// HTTP (POST /register needs auth {"type":"m.login.dummy"}, as an open
// Synapse does). Inspect with RoomState, StateEvent, Timeline, Membership,
// PowerLevel, JoinedMembers, ResolveAliasLocal, Aliases, Rooms, UserExists,
// Transactions, Delivered, Calls. Wait for asynchronous delivery with
// WaitDelivered, WaitIdle or Wait(cond) (signalled, no polling).
//
// SetLatency delays the answer, not the effect: like Synapse, which commits
// a createRoom (or any write) whose client hung up, the simulator applies a
// request at once and only then waits before answering. A client that
// times out may therefore find its room, alias or event in place; a retry
// must expect M_ROOM_IN_USE or an already-made change. Faults (InjectFault)
// replace the effect: a faulted request changes nothing.
//
// Client-server endpoints (r0 and v3 prefixes; endpoint names for Calls,
// SetLatency and InjectFault are the EP constants): versions, register,
// login, account/whoami, profile (get, displayname, avatar_url), createRoom,
// join (by id or alias), rooms/{id}/{join,invite,leave,kick,ban,unban},
// send, redact, state (get one, put, get all), joined_members, members,
// messages, aliases, directory/room (get, put, delete), directory/list/room,
// joined_rooms, v1 appservice ping, thirdparty/{location,user}.
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
