package hssim

import (
	"encoding/json"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/go-json-experiment/json/jsontext"

	"github.com/cactus-comments/appservice/pkg/event"
	"github.com/cactus-comments/appservice/pkg/mxid"
)

type aliasEntry struct {
	roomID  string
	creator string
}

type createRoomBody struct {
	Visibility                string         `json:"visibility"`
	RoomAliasName             *string        `json:"room_alias_name"`
	Name                      *string        `json:"name"`
	Topic                     *string        `json:"topic"`
	Invite                    []string       `json:"invite"`
	RoomVersion               any            `json:"room_version"`
	CreationContent           map[string]any `json:"creation_content"`
	InitialState              []stateInit    `json:"initial_state"`
	Preset                    string         `json:"preset"`
	IsDirect                  bool           `json:"is_direct"`
	PowerLevelContentOverride map[string]any `json:"power_level_content_override"`
}

type stateInit struct {
	Type     string         `json:"type"`
	StateKey string         `json:"state_key"`
	Content  map[string]any `json:"content"`
}

// lookupRoomLocked returns the room or the error Synapse gives a caller
// that is not in an unknown room.
func (s *Server) lookupRoomLocked(roomID, userID string) (*room, *matrixError) {
	r, ok := s.rooms[roomID]
	if !ok {
		return nil, errForbidden("User %s not in room %s", userID, roomID)
	}
	return r, nil
}

// pendingState is a state event createRoom or an upgrade is about to send.
type pendingState struct {
	typ, key string
	content  map[string]any
}

// presetPowerLevels is the power_level_content_override of Synapse's
// presets, applied before the request's own: private rooms let anyone in
// them invite; public rooms hold back calls (Synapse writes m.call.invite
// at the top level, not under events).
var presetPowerLevels = map[string]map[string]any{
	"private_chat":         {"invite": 0},
	"trusted_private_chat": {"invite": 0},
	"public_chat":          {"m.call.invite": 50},
}

func (s *Server) handleCreateRoom(q *request) (any, *matrixError) {
	var b createRoomBody
	if e := q.decode(&b, true); e != nil {
		return nil, e
	}
	if q.who.guest {
		return nil, errf(http.StatusForbidden, "M_GUEST_ACCESS_FORBIDDEN", "Guest access not allowed")
	}
	if b.Visibility != "" && b.Visibility != "public" && b.Visibility != "private" {
		return nil, errf(http.StatusBadRequest, "M_BAD_JSON", "Invalid visibility value")
	}
	preset := b.Preset
	if preset == "" {
		preset = "private_chat"
		if b.Visibility == "public" {
			preset = "public_chat"
		}
	}
	if _, ok := presetPowerLevels[preset]; !ok {
		return nil, errf(http.StatusBadRequest, "M_BAD_JSON", "'%s' is not a valid preset", preset)
	}
	for _, inv := range b.Invite {
		if _, err := mxid.ParseUserID(inv); err != nil {
			return nil, errf(http.StatusBadRequest, "M_INVALID_PARAM", "Invalid user_id: %s", inv)
		}
	}
	for _, st := range b.InitialState {
		if st.Type == "" || st.Content == nil {
			return nil, errBadJSON("initial_state entries need type and content")
		}
	}
	version := s.RoomVersion()
	if b.RoomVersion != nil {
		v, ok := b.RoomVersion.(string)
		if !ok {
			return nil, errBadJSON("room_version must be a string")
		}
		version = v
	}
	rv, ok := parseRoomVersion(version)
	if !ok {
		return nil, errUnsupportedVersion()
	}
	creator := q.who.userID

	create := map[string]any{}
	for k, v := range b.CreationContent {
		create[k] = v
	}
	create["room_version"] = version
	if rv.privilegedCreators() {
		var extra []string
		if v, present := create["additional_creators"]; present {
			list, e := checkAdditionalCreators(v)
			if e != nil {
				return nil, e
			}
			extra = list
		}
		// The invitees of a trusted private chat (a DM) become creators.
		if preset == "trusted_private_chat" && len(b.Invite) > 0 {
			for _, inv := range b.Invite {
				if !slices.Contains(extra, inv) {
					extra = append(extra, inv)
				}
			}
			create["additional_creators"] = extra
		}
	}
	if rv.creatorInContent() {
		create["creator"] = creator
	}
	if s.opts.Mode == Synapse && !rv.privilegedCreators() && b.PowerLevelContentOverride != nil {
		if users, ok := b.PowerLevelContentOverride["users"].(map[string]any); ok {
			if _, listed := users[creator]; !listed {
				return nil, errf(http.StatusBadRequest, "M_UNKNOWN", "Not a valid power_level_content_override: 'users' did not contain %s", creator)
			}
		}
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	alias := ""
	if b.RoomAliasName != nil {
		name := *b.RoomAliasName
		if strings.ContainsAny(name, " \t\n\r\v\f") {
			return nil, errf(http.StatusBadRequest, "M_UNKNOWN", "Invalid characters in room alias")
		}
		if strings.Contains(name, ":") {
			return nil, errf(http.StatusBadRequest, "M_UNKNOWN", "Invalid character in room alias localpart: ':'.")
		}
		alias = "#" + name + ":" + s.opts.ServerName
		if _, err := mxid.ParseRoomAlias(alias); err != nil {
			return nil, errf(http.StatusBadRequest, "M_INVALID_PARAM", "Invalid room alias")
		}
		if _, taken := s.aliases[alias]; taken {
			return nil, errf(http.StatusBadRequest, "M_ROOM_IN_USE", "Room alias already taken")
		}
		if e := s.checkAliasCreateLocked(q.who, alias); e != nil {
			return nil, e
		}
	}

	initial := map[StateKey]map[string]any{}
	var initialOrder []StateKey
	for _, st := range b.InitialState {
		k := StateKey{st.Type, st.StateKey}
		if _, seen := initial[k]; !seen {
			initialOrder = append(initialOrder, k)
		}
		initial[k] = st.Content
	}
	// Power levels from initial_state win over everything; otherwise the
	// defaults, then the preset's override, then the request's.
	plKey := StateKey{"m.room.power_levels", ""}
	pl, fromInitial := initial[plKey]
	if !fromInitial {
		var admins []string
		if preset == "trusted_private_chat" {
			admins = b.Invite
		}
		pl = defaultPowerLevels(creator, admins, rv)
		maps.Copy(pl, presetPowerLevels[preset])
		maps.Copy(pl, b.PowerLevelContentOverride)
	}
	if _, err := parsePowerLevels(normalize(pl), roomAuth{stringLevels: rv.stringLevels()}); err != nil {
		return nil, errf(http.StatusBadRequest, "M_BAD_JSON", "Invalid power_level_content_override: %v", err)
	}

	batch := []pendingState{{plKey.Type, "", pl}}
	delete(initial, plKey)
	take := func(k StateKey, def map[string]any) {
		content := def
		if c, ok := initial[k]; ok {
			content = c
			delete(initial, k)
		}
		if content != nil {
			batch = append(batch, pendingState{k.Type, k.StateKey, content})
		}
	}
	if alias != "" {
		take(StateKey{"m.room.canonical_alias", ""}, map[string]any{"alias": alias})
	}
	joinRule := "invite"
	if preset == "public_chat" {
		joinRule = "public"
	}
	take(StateKey{"m.room.join_rules", ""}, map[string]any{"join_rule": joinRule})
	take(StateKey{"m.room.history_visibility", ""}, map[string]any{"history_visibility": "shared"})
	if preset != "public_chat" {
		take(StateKey{"m.room.guest_access", ""}, map[string]any{"guest_access": "can_join"})
	}
	for _, k := range initialOrder {
		take(k, nil)
	}
	if b.Name != nil {
		batch = append(batch, pendingState{"m.room.name", "", map[string]any{"name": *b.Name}})
	}
	if b.Topic != nil {
		batch = append(batch, pendingState{"m.room.topic", "", map[string]any{"topic": *b.Topic}})
	}

	collisions := s.opts.V12CreateCollisions && s.opts.Mode == Synapse && rv.hashRoomIDs()
	if collisions && s.creating[creator] > 0 {
		return nil, errf(http.StatusInternalServerError, "M_UNKNOWN", "Internal server error")
	}
	createID, roomID := s.newRoomIDs(rv)
	r, e := s.createRoomLocked(q.who, rv, version, createID, roomID, create, batch, alias)
	if e != nil {
		return nil, e
	}
	if collisions {
		s.creating[creator]++
		q.answered = func() {
			if s.creating[creator]--; s.creating[creator] == 0 {
				delete(s.creating, creator)
			}
		}
	}
	// Synapse marks the invites of a direct chat with is_direct, which is
	// how the invitee's client (and our bot) tells a DM from a group.
	var inviteExtra map[string]any
	if b.IsDirect {
		inviteExtra = map[string]any{"is_direct": true}
	}
	for _, inv := range b.Invite {
		if _, e := s.changeMembershipExtraLocked(r, q.who, inv, "invite", "", inviteExtra); e != nil {
			return nil, e
		}
	}
	r.published = b.Visibility == "public"
	return map[string]any{"room_id": r.id}, nil
}

// createRoomLocked makes a room: the create event, the creator's join,
// then batch, each event authorized against the state before it, as the
// servers do it. A batch event the rules refuse leaves what each server
// leaves: Dendrite checks everything first and creates nothing; Synapse
// has stored the room, its alias, the create event and the join, and
// refuses the rest of the batch as a whole; continuwuity keeps every event
// before the refused one and sets the alias only at the end.
func (s *Server) createRoomLocked(who *requester, rv roomVersion, version, createID, roomID string, create map[string]any, batch []pendingState, alias string) (*room, *matrixError) {
	creator := who.userID
	for i := range batch {
		batch[i].content = normalize(batch[i].content) // numbers as JSON reads them
	}
	r := newRoom(roomID, version)
	empty := ""
	createEvent := &event.Event{EventID: createID, RoomID: roomID, Sender: creator, Type: "m.room.create", StateKey: &empty, Content: mustJSON(create)}
	joinContent := map[string]any{"membership": "join"}
	if u, ok := s.users[creator]; ok {
		if u.displayName != "" {
			joinContent["displayname"] = u.displayName
		}
		if u.avatarURL != "" {
			joinContent["avatar_url"] = u.avatarURL
		}
	}
	if s.opts.Mode == Dendrite {
		sc := r.scratch()
		sc.state[StateKey{"m.room.create", ""}] = createEvent
		sc.setScratchState(creator, "m.room.member", creator, joinContent)
		if e := s.authorizeBatchLocked(sc, creator, batch); e != nil {
			return nil, e
		}
	}
	s.rooms[r.id] = r
	s.roomOrder = append(s.roomOrder, r.id)
	if alias != "" && s.opts.Mode == Synapse {
		s.addAliasLocked(alias, r, creator)
	}
	s.appendEventIDLocked(r, createID, creator, "m.room.create", &empty, createEvent.Content)
	s.appendEventLocked(r, creator, "m.room.member", &creator, mustJSON(joinContent))
	if s.opts.Mode == Synapse {
		if e := s.authorizeBatchLocked(r.scratch(), creator, batch); e != nil {
			return nil, e
		}
	}
	for _, p := range batch {
		if s.opts.Mode == Conduit {
			if e := s.authorizeEventLocked(r, creator, p.typ, &p.key, p.content); e != nil {
				return nil, e
			}
		}
		key := p.key
		s.appendEventLocked(r, creator, p.typ, &key, mustJSON(p.content))
	}
	if alias != "" && s.opts.Mode != Synapse {
		s.addAliasLocked(alias, r, creator)
	}
	return r, nil
}

// newRoomIDs picks a new room's create event id and room id: from version
// 12 the room is named after its create event.
func (s *Server) newRoomIDs(rv roomVersion) (createID, roomID string) {
	createID = s.newEventID()
	if rv.hashRoomIDs() {
		return createID, "!" + strings.TrimPrefix(createID, "$")
	}
	return createID, s.newRoomID()
}

// authorizeBatchLocked checks each event of batch against the state of sc
// (a scratch copy) with the events before it applied.
func (s *Server) authorizeBatchLocked(sc *room, sender string, batch []pendingState) *matrixError {
	for _, p := range batch {
		key := p.key
		if e := s.authorizeEventLocked(sc, sender, p.typ, &key, p.content); e != nil {
			return e
		}
		sc.setScratchState(sender, p.typ, p.key, p.content)
	}
	return nil
}

// checkAliasCreateLocked is Synapse's create_association and
// can_modify_alias: an appservice may only create aliases of its own
// namespace, and an alias in an exclusive namespace belongs to that
// appservice's sender alone.
func (s *Server) checkAliasCreateLocked(who *requester, alias string) *matrixError {
	if who.as != nil {
		if in, _ := who.as.match.Alias(alias); !in {
			return errf(http.StatusBadRequest, "M_EXCLUSIVE", "This application service has not reserved this kind of alias.")
		}
	}
	var interested []*appservice
	for _, as := range s.apps {
		if in, _ := as.match.Alias(alias); in {
			interested = append(interested, as)
		}
	}
	for _, as := range interested {
		if who.userID == as.sender {
			return nil
		}
	}
	for _, as := range interested {
		if _, excl := as.match.Alias(alias); excl {
			return errf(http.StatusBadRequest, "M_EXCLUSIVE", "This alias is reserved by an application service.")
		}
	}
	return nil
}

func (s *Server) handleJoin(q *request) (any, *matrixError) {
	target := q.param("roomIdOrAlias")
	if target == "" {
		target = q.param("roomId")
	}
	roomID := target
	if strings.HasPrefix(target, "#") {
		id, e := s.resolveAlias(q.r.Context(), target, true)
		if e != nil {
			return nil, e
		}
		roomID = id
	} else if !strings.HasPrefix(target, "!") {
		return nil, errf(http.StatusBadRequest, "M_UNKNOWN", "%s was not legal room ID or room alias", target)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.rooms[roomID]
	if !ok {
		return nil, errNotFound("No known servers")
	}
	if _, e := s.changeMembershipLocked(r, q.who, q.who.userID, "join", ""); e != nil {
		return nil, e
	}
	return map[string]any{"room_id": roomID}, nil
}

type membershipBody struct {
	UserID string `json:"user_id"`
	Reason string `json:"reason"`
}

func (s *Server) membershipAction(q *request, action string) (any, *matrixError) {
	var b membershipBody
	if e := q.decode(&b, action == "leave"); e != nil {
		return nil, e
	}
	target := b.UserID
	if action == "leave" {
		target = q.who.userID
	} else if _, err := mxid.ParseUserID(target); err != nil {
		return nil, errf(http.StatusBadRequest, "M_MISSING_PARAM", "Missing or invalid user_id")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	r, e := s.lookupRoomLocked(q.param("roomId"), q.who.userID)
	if e != nil {
		return nil, e
	}
	if _, e := s.changeMembershipLocked(r, q.who, target, action, b.Reason); e != nil {
		return nil, e
	}
	return map[string]any{}, nil
}

func (s *Server) handleInvite(q *request) (any, *matrixError) { return s.membershipAction(q, "invite") }
func (s *Server) handleLeave(q *request) (any, *matrixError)  { return s.membershipAction(q, "leave") }
func (s *Server) handleKick(q *request) (any, *matrixError)   { return s.membershipAction(q, "kick") }
func (s *Server) handleBan(q *request) (any, *matrixError)    { return s.membershipAction(q, "ban") }
func (s *Server) handleUnban(q *request) (any, *matrixError)  { return s.membershipAction(q, "unban") }

// txnKey identifies a client transaction for deduplication.
type txnKey struct{ who, path string }

type txnEntry struct {
	eventID string
	at      time.Time
}

// txnKeyFor mirrors each server: Synapse keys by request path and the
// appservice (ignoring user_id) or user+device; Dendrite by access token
// and path; Conduit by user, device and txn id alone.
func (s *Server) txnKeyFor(q *request, txnID string) txnKey {
	switch s.opts.Mode {
	case Dendrite:
		return txnKey{who: "token:" + q.who.token, path: q.rawPath}
	case Conduit:
		return txnKey{who: "user:" + q.who.userID + "/" + q.who.deviceID, path: q.endpoint + "/" + txnID}
	}
	switch {
	case q.who.guest:
		return txnKey{who: "guest:" + q.who.token, path: q.rawPath}
	case q.who.as != nil:
		return txnKey{who: "as:" + q.who.as.reg.ID, path: q.rawPath}
	}
	return txnKey{who: "user:" + q.who.userID + "/" + q.who.deviceID, path: q.rawPath}
}

func (s *Server) txnLookupLocked(k txnKey) (string, bool) {
	// Entries are added in time order, so expiry pops from the front.
	now := time.Now()
	for len(s.txnOrder) > 0 {
		front := s.txnOrder[0]
		e, ok := s.txnCache[front]
		if ok && now.Sub(e.at) <= s.opts.TxnWindow {
			break
		}
		delete(s.txnCache, front)
		s.txnOrder = s.txnOrder[1:]
	}
	e, ok := s.txnCache[k]
	return e.eventID, ok
}

func (s *Server) txnStoreLocked(k txnKey, eventID string) {
	s.txnCache[k] = txnEntry{eventID: eventID, at: time.Now()}
	s.txnOrder = append(s.txnOrder, k)
}

func (s *Server) handleSend(q *request) (any, *matrixError) {
	var content map[string]any
	if e := q.decode(&content, false); e != nil {
		return nil, e
	}
	typ := q.param("eventType")
	key := s.txnKeyFor(q, q.param("txnId"))
	s.mu.Lock()
	defer s.mu.Unlock()
	if id, ok := s.txnLookupLocked(key); ok {
		return map[string]any{"event_id": id}, nil
	}
	r, e := s.lookupRoomLocked(q.param("roomId"), q.who.userID)
	if e != nil {
		return nil, e
	}
	if typ == "m.room.member" {
		return nil, errForbidden("Cannot send member events with /send")
	}
	if e := s.authorizeEventLocked(r, q.who.userID, typ, nil, content); e != nil {
		return nil, e
	}
	ev := s.newEventLocked(r, q.who.userID, typ, nil, mustJSON(content))
	if e := checkEventSize(ev); e != nil {
		return nil, e
	}
	// continuwuity keeps the transaction id in the event's unsigned data.
	s.sendTxns[ev.EventID] = q.param("txnId")
	s.storeEventLocked(r, ev)
	s.txnStoreLocked(key, ev.EventID)
	return map[string]any{"event_id": ev.EventID}, nil
}

func (s *Server) handleRedact(q *request) (any, *matrixError) {
	var body map[string]any
	if e := q.decode(&body, true); e != nil {
		return nil, e
	}
	key := s.txnKeyFor(q, q.param("txnId"))
	target := q.param("eventId")
	s.mu.Lock()
	defer s.mu.Unlock()
	if id, ok := s.txnLookupLocked(key); ok {
		return map[string]any{"event_id": id}, nil
	}
	r, e := s.lookupRoomLocked(q.param("roomId"), q.who.userID)
	if e != nil {
		return nil, e
	}
	var orig *event.Event
	for _, ev := range r.timeline {
		if ev.EventID == target {
			orig = ev
		}
	}
	if r.membership(q.who.userID) != "join" {
		return nil, errForbidden("User %s not in room %s", q.who.userID, r.id)
	}
	pl := s.roomPowerLevels(r)
	if orig == nil || orig.Sender != q.who.userID {
		if pl.userLevel(q.who.userID) < pl.redact {
			return nil, errForbidden("You don't have permission to redact events")
		}
	}
	content := map[string]any{}
	if reason, ok := body["reason"].(string); ok {
		content["reason"] = reason
	}
	rv := versionOf(r.version)
	if rv.redactsInContent() {
		content["redacts"] = target
	}
	ev := s.newEventLocked(r, q.who.userID, "m.room.redaction", nil, mustJSON(content))
	if !rv.redactsInContent() {
		ev.Redacts = target
	}
	s.storeEventLocked(r, ev)
	if orig != nil && orig.StateKey == nil {
		orig.Content = jsontext.Value(`{}`)
		setUnsigned(orig, "redacted_because", copyOut(ev))
		s.pruneRemoteKeysLocked(orig.EventID, rv)
	}
	s.txnStoreLocked(key, ev.EventID)
	return map[string]any{"event_id": ev.EventID}, nil
}

func (s *Server) handleStateGet(q *request) (any, *matrixError) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, e := s.readViewLocked(q, true)
	if e != nil {
		return nil, e
	}
	ev := v.state()[StateKey{q.param("eventType"), q.param("stateKey")}]
	if ev == nil {
		return nil, errNotFound("Event not found.")
	}
	if q.r.URL.Query().Get("format") == "event" {
		return s.servedLocked(ev, time.Now()), nil
	}
	return ev.Content, nil
}

func (s *Server) handleStatePut(q *request) (any, *matrixError) {
	var content map[string]any
	if e := q.decode(&content, false); e != nil {
		return nil, e
	}
	typ, key := q.param("eventType"), q.param("stateKey")
	s.mu.Lock()
	defer s.mu.Unlock()
	r, e := s.lookupRoomLocked(q.param("roomId"), q.who.userID)
	if e != nil {
		return nil, e
	}
	if typ == "m.room.member" {
		m, _ := content["membership"].(string)
		action := m
		if m == "leave" && key != q.who.userID {
			action = "kick"
			if r.membership(key) == "ban" {
				action = "unban"
			}
		}
		if _, ok := effective[action]; !ok || action == "kick" && m != "leave" {
			return nil, errBadJSON("Invalid membership %q", m)
		}
		reason, _ := content["reason"].(string)
		id, e := s.changeMembershipLocked(r, q.who, key, action, reason)
		if e != nil {
			return nil, e
		}
		return map[string]any{"event_id": id}, nil
	}
	// Synapse returns the current event when the same sender sets the same
	// content again, and sends nothing.
	if cur := r.stateEvent(typ, key); cur != nil && cur.Sender == q.who.userID && jsonEqual(cur.Content, content) {
		return map[string]any{"event_id": cur.EventID}, nil
	}
	if e := s.authorizeEventLocked(r, q.who.userID, typ, &key, content); e != nil {
		return nil, e
	}
	if typ == "m.room.canonical_alias" {
		if e := s.checkCanonicalAliasLocked(r, content); e != nil {
			return nil, e
		}
	}
	ev := s.newEventLocked(r, q.who.userID, typ, &key, mustJSON(content))
	if e := checkEventSize(ev); e != nil {
		return nil, e
	}
	s.storeEventLocked(r, ev)
	return map[string]any{"event_id": ev.EventID}, nil
}

func jsonEqual(raw jsontext.Value, m map[string]any) bool {
	var a any
	if json.Unmarshal(raw, &a) != nil {
		return false
	}
	return jsonDeepEqual(a, any(normalize(m)))
}

func jsonDeepEqual(a, b any) bool {
	x, _ := json.Marshal(a) // map keys are sorted by encoding/json
	y, _ := json.Marshal(b)
	return string(x) == string(y)
}

// checkCanonicalAliasLocked: Synapse refuses aliases that do not point to
// the room (M_BAD_ALIAS).
func (s *Server) checkCanonicalAliasLocked(r *room, content map[string]any) *matrixError {
	var aliases []string
	if a, ok := content["alias"].(string); ok {
		aliases = append(aliases, a)
	}
	if alts, ok := content["alt_aliases"].([]any); ok {
		for _, a := range alts {
			if as, ok := a.(string); ok {
				aliases = append(aliases, as)
			}
		}
	}
	for _, a := range aliases {
		if e, ok := s.aliases[a]; !ok || e.roomID != r.id {
			return errf(http.StatusBadRequest, "M_BAD_ALIAS", "Room alias %s does not point to the room", a)
		}
	}
	return nil
}

func (s *Server) handleStateAll(q *request) (any, *matrixError) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, e := s.readViewLocked(q, true)
	if e != nil {
		return nil, e
	}
	return s.servedListLocked(stateOf(v.r, v.state())), nil
}

// stateOf lists the events of st (a view of r's state) in timeline order.
func stateOf(r *room, st map[StateKey]*event.Event) []*event.Event {
	var out []*event.Event
	for _, ev := range r.timeline {
		if ev.StateKey != nil && st[StateKey{ev.Type, *ev.StateKey}] == ev {
			out = append(out, ev)
		}
	}
	return out
}

// servedListLocked serves events as a JSON array (never null).
func (s *Server) servedListLocked(evs []*event.Event) []jsontext.Value {
	now := time.Now()
	out := make([]jsontext.Value, 0, len(evs))
	for _, ev := range evs {
		out = append(out, s.servedLocked(ev, now))
	}
	return out
}

// handleJoinedMembers answers current members only: Synapse refuses a
// former member, and lets an appservice in when one of the room's joined
// members is in its namespace, whoever it acts as.
func (s *Server) handleJoinedMembers(q *request) (any, *matrixError) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, e := s.lookupRoomLocked(q.param("roomId"), q.who.userID)
	if e != nil {
		return nil, e
	}
	if !s.mayListJoinedLocked(r, q.who) {
		return nil, errForbidden("Getting joined members while not being a current member of the room is forbidden.")
	}
	joined := map[string]any{}
	for _, m := range r.joinedMembers() {
		c := r.memberContent(m)
		entry := map[string]any{}
		if d, ok := c["displayname"]; ok {
			entry["display_name"] = d
		}
		if a, ok := c["avatar_url"]; ok {
			entry["avatar_url"] = a
		}
		joined[m] = entry
	}
	return map[string]any{"joined": joined}, nil
}

func (s *Server) handleMembers(q *request) (any, *matrixError) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, e := s.readViewLocked(q, true)
	if e != nil {
		return nil, e
	}
	want := q.r.URL.Query().Get("membership")
	var chunk []*event.Event
	for _, ev := range stateOf(v.r, v.state()) {
		if ev.Type != "m.room.member" {
			continue
		}
		if m, _ := contentMap(ev)["membership"].(string); want != "" && m != want {
			continue
		}
		chunk = append(chunk, ev)
	}
	return map[string]any{"chunk": s.servedListLocked(chunk)}, nil
}

// handleMessages pages the timeline. Tokens are "t<index>" positions; a
// former member pages only up to their leave, as Synapse clamps the token,
// and events the history visibility hides are left out.
func (s *Server) handleMessages(q *request) (any, *matrixError) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, e := s.readViewLocked(q, false)
	if e != nil {
		return nil, e
	}
	qs := q.r.URL.Query()
	dir := qs.Get("dir")
	if dir == "" {
		dir = "b"
	}
	if dir != "b" && dir != "f" {
		return nil, errf(http.StatusBadRequest, "M_INVALID_PARAM", "Unknown dir")
	}
	limit := 10
	if l := qs.Get("limit"); l != "" {
		n, err := strconv.Atoi(l)
		if err != nil || n < 0 {
			return nil, errf(http.StatusBadRequest, "M_INVALID_PARAM", "Bad limit")
		}
		limit = min(n, 1000)
	}
	pos := 0
	if dir == "b" {
		pos = v.until
	}
	if from := qs.Get("from"); from != "" {
		n, err := strconv.Atoi(strings.TrimPrefix(from, "t"))
		if err != nil || n < 0 || n > len(v.r.timeline) {
			return nil, errf(http.StatusBadRequest, "M_INVALID_PARAM", "Bad from token")
		}
		pos = min(n, v.until)
	}
	visible := visibleEvents(v, q.who.userID)
	var chunk []*event.Event
	start := pos
	for len(chunk) < limit {
		var i int
		if dir == "b" {
			if pos == 0 {
				break
			}
			pos--
			i = pos
		} else {
			if pos >= v.until {
				break
			}
			i = pos
			pos++
		}
		if visible[i] {
			chunk = append(chunk, v.r.timeline[i])
		}
	}
	resp := map[string]any{"chunk": s.servedListLocked(chunk), "start": "t" + strconv.Itoa(start)}
	if (dir == "b" && pos > 0) || (dir == "f" && pos < v.until) {
		resp["end"] = "t" + strconv.Itoa(pos)
	}
	return resp, nil
}

func (s *Server) handleRoomAliases(q *request) (any, *matrixError) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, e := s.readViewLocked(q, true)
	if e != nil {
		return nil, e
	}
	return map[string]any{"aliases": s.localAliasesLocked(v.r.id)}, nil
}

func (s *Server) localAliasesLocked(roomID string) []string {
	out := []string{}
	if r := s.rooms[roomID]; r != nil {
		for a := range r.aliases {
			out = append(out, a)
		}
	}
	slices.Sort(out)
	return out
}

func (s *Server) addAliasLocked(alias string, r *room, creator string) {
	s.aliases[alias] = aliasEntry{roomID: r.id, creator: creator}
	r.aliases[alias] = true
}

func (s *Server) handleDirectoryGet(q *request) (any, *matrixError) {
	id, e := s.resolveAlias(q.r.Context(), q.param("roomAlias"), false)
	if e != nil {
		return nil, e
	}
	return map[string]any{"room_id": id, "servers": []string{s.opts.ServerName}}, nil
}

func (s *Server) handleDirectoryPut(q *request) (any, *matrixError) {
	var b struct {
		RoomID string `json:"room_id"`
	}
	if e := q.decode(&b, false); e != nil {
		return nil, e
	}
	alias := q.param("roomAlias")
	a, err := mxid.ParseRoomAlias(alias)
	if err != nil {
		return nil, errf(http.StatusBadRequest, "M_INVALID_PARAM", "Invalid room alias")
	}
	if a.Server() != s.opts.ServerName {
		return nil, errf(http.StatusBadRequest, "M_INVALID_PARAM", "Room alias must be local")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.rooms[b.RoomID]
	if !ok {
		return nil, errNotFound("Room not found")
	}
	if q.who.as == nil && r.membership(q.who.userID) != "join" {
		return nil, errForbidden("You must be in the room to create an alias for it")
	}
	if _, taken := s.aliases[alias]; taken {
		return nil, errf(http.StatusConflict, "M_UNKNOWN", "Room alias %s already exists", alias)
	}
	if e := s.checkAliasCreateLocked(q.who, alias); e != nil {
		return nil, e
	}
	s.addAliasLocked(alias, r, q.who.userID)
	return map[string]any{}, nil
}

func (s *Server) handleDirectoryDelete(q *request) (any, *matrixError) {
	alias := q.param("roomAlias")
	s.mu.Lock()
	defer s.mu.Unlock()
	entry, ok := s.aliases[alias]
	if !ok {
		return nil, errNotFound("Room alias %s not found", alias)
	}
	if q.who.as != nil {
		if in, _ := q.who.as.match.Alias(alias); !in {
			return nil, errf(http.StatusBadRequest, "M_EXCLUSIVE", "This application service has not reserved this kind of alias.")
		}
	} else if entry.creator != q.who.userID {
		r := s.rooms[entry.roomID]
		pl := s.roomPowerLevels(r)
		if r.membership(q.who.userID) != "join" || pl.userLevel(q.who.userID) < pl.eventLevel("m.room.canonical_alias", true) {
			return nil, errForbidden("You don't have permission to delete the alias.")
		}
	}
	if e := s.checkAliasCreateLocked(q.who, alias); e != nil && q.who.as == nil {
		return nil, e
	}
	delete(s.aliases, alias)
	if r := s.rooms[entry.roomID]; r != nil {
		delete(r.aliases, alias)
	}
	return map[string]any{}, nil
}

func (s *Server) handleDirectoryListGet(q *request) (any, *matrixError) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.rooms[q.param("roomId")]
	if !ok {
		return nil, errNotFound("Unknown room")
	}
	vis := "private"
	if r.published {
		vis = "public"
	}
	return map[string]any{"visibility": vis}, nil
}

func (s *Server) handleDirectoryListPut(q *request) (any, *matrixError) {
	var b struct {
		Visibility string `json:"visibility"`
	}
	if e := q.decode(&b, false); e != nil {
		return nil, e
	}
	if b.Visibility != "public" && b.Visibility != "private" {
		return nil, errf(http.StatusBadRequest, "M_INVALID_PARAM", "Invalid visibility setting")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.rooms[q.param("roomId")]
	if !ok {
		return nil, errNotFound("Unknown room")
	}
	pl := s.roomPowerLevels(r)
	if r.membership(q.who.userID) != "join" || pl.userLevel(q.who.userID) < pl.eventLevel("m.room.canonical_alias", true) {
		return nil, errForbidden("You don't have permission to change the room's directory visibility")
	}
	r.published = b.Visibility == "public"
	return map[string]any{}, nil
}

func (s *Server) handleJoinedRooms(q *request) (any, *matrixError) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := []string{}
	for _, id := range s.roomOrder {
		if s.rooms[id].membership(q.who.userID) == "join" {
			out = append(out, id)
		}
	}
	return map[string]any{"joined_rooms": out}, nil
}
