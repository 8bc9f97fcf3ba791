package hssim

import (
	"net/http"
	"slices"
	"strings"

	"github.com/cactus-comments/appservice/pkg/mxid"
)

type upgradeBody struct {
	NewVersion         any `json:"new_version"`
	AdditionalCreators any `json:"additional_creators"`
}

// upgradeCopiedState is the state Synapse copies into the replacement room,
// in its order.
var upgradeCopiedState = []string{
	"m.room.join_rules", "m.room.name", "m.room.topic", "m.room.history_visibility", "m.room.guest_access",
	"m.room.avatar", "m.room.encryption", "m.room.server_acl", "m.room.power_levels",
}

// handleUpgrade is Synapse's room upgrade: a replacement room of the new
// version with the old one's state and bans, a tombstone in the old room,
// the local aliases moved, and the old room silenced.
func (s *Server) handleUpgrade(q *request) (any, *matrixError) {
	var b upgradeBody
	if e := q.decode(&b, false); e != nil {
		return nil, e
	}
	if b.NewVersion == nil {
		return nil, errf(http.StatusBadRequest, "M_MISSING_PARAM", "Missing params: ['new_version']")
	}
	version, _ := b.NewVersion.(string)
	rv, ok := parseRoomVersion(version)
	if !ok {
		return nil, errUnsupportedVersion()
	}
	var extra []string
	extraGiven := rv.privilegedCreators() && b.AdditionalCreators != nil
	if extraGiven {
		list, e := checkAdditionalCreators(b.AdditionalCreators)
		if e != nil {
			return nil, e
		}
		extra = list
	}
	user := q.who.userID

	s.mu.Lock()
	defer s.mu.Unlock()
	old, ok := s.rooms[q.param("roomId")]
	if !ok {
		return nil, errNotFound("Unknown room id %s", q.param("roomId"))
	}
	createID, newID := s.newRoomIDs(rv)
	empty := ""
	tombstone := map[string]any{"body": "This room has been replaced", "replacement_room": newID}
	// Whoever may send the tombstone may upgrade: by default the room's
	// admins before version 12, only its creators from 12 on.
	if e := s.authorizeEventLocked(old, user, "m.room.tombstone", &empty, tombstone); e != nil {
		return nil, e
	}
	oldPL := old.stateContent("m.room.power_levels", "")
	if oldPL == nil {
		return nil, errf(http.StatusInternalServerError, "M_UNKNOWN", "Internal server error")
	}
	tombID := s.newEventID()

	oldCreate := old.stateContent("m.room.create", "")
	create := map[string]any{"room_version": version, "predecessor": map[string]any{"room_id": old.id}}
	if !rv.hashRoomIDs() {
		// The replacement of a v12 room is created before its tombstone.
		create["predecessor"].(map[string]any)["event_id"] = tombID
	}
	if extraGiven {
		create["additional_creators"] = extra
	}
	if f, ok := oldCreate["m.federate"]; ok && f != true {
		create["m.federate"] = false
	}
	if t, ok := oldCreate["type"]; ok {
		create["type"] = t
	}
	if rv.creatorInContent() {
		create["creator"] = user
	}

	initial := map[string]map[string]any{}
	for _, typ := range upgradeCopiedState {
		if c := old.stateContent(typ, ""); c != nil {
			initial[typ] = c
		}
	}
	pl := fixupLevels(oldPL)
	initial["m.room.power_levels"] = pl
	// The upgrader gets the power to copy every piece of state; the final
	// power levels, sent last, put them back where they were.
	needed := max(intOr(pl["state_default"], 50), intOr(pl["ban"], 50))
	if ev, ok := pl["events"].(map[string]any); ok {
		for _, v := range ev {
			needed = max(needed, intOr(v, 0))
		}
	}
	users, ok := pl["users"].(map[string]any)
	if !ok {
		users = map[string]any{}
		pl["users"] = users
	}
	current := intOr(pl["users_default"], 0)
	if v, ok := users[user]; ok {
		current = intOr(v, 0)
	}
	if current < needed {
		users[user] = needed
	}
	if rv.privilegedCreators() {
		removeCreators(users, user, extra)
	}
	batch := []pendingState{{"m.room.power_levels", "", pl}}
	defaults := map[string]map[string]any{
		"m.room.join_rules":         {"join_rule": "invite"},
		"m.room.history_visibility": {"history_visibility": "shared"},
		"m.room.guest_access":       {"guest_access": "can_join"},
	}
	for _, typ := range []string{"m.room.join_rules", "m.room.history_visibility", "m.room.guest_access"} {
		c, ok := initial[typ]
		if !ok {
			c = defaults[typ]
		}
		batch = append(batch, pendingState{typ, "", c})
	}
	for _, typ := range upgradeCopiedState {
		if c, ok := initial[typ]; ok && defaults[typ] == nil && typ != "m.room.power_levels" {
			batch = append(batch, pendingState{typ, "", c})
		}
	}
	nr, e := s.createRoomLocked(q.who, rv, version, createID, newID, create, batch, "")
	if e != nil {
		return nil, e
	}
	for _, target := range sortedMembers(old, "ban") {
		if e := s.authMembershipLocked(nr, q.who, target, "ban", nr.membership(target)); e != nil {
			return nil, e
		}
		key := target
		s.appendEventLocked(nr, user, "m.room.member", &key, old.stateEvent("m.room.member", target).Content)
	}
	s.appendEventIDLocked(old, tombID, user, "m.room.tombstone", &empty, mustJSON(tombstone))
	s.moveAliasesLocked(old, nr, user)
	if old.published {
		old.published, nr.published = false, true
	}

	// Silence the old room: only moderators may speak or invite there.
	restricted := max(intOr(oldPL["users_default"], 0)+1, 50)
	silenced := fixupLevels(oldPL)
	changed := false
	for _, k := range []string{"invite", "events_default"} {
		if intOr(silenced[k], 0) < restricted {
			silenced[k] = restricted
			changed = true
		}
	}
	if changed && s.authorizeEventLocked(old, user, "m.room.power_levels", &empty, silenced) == nil {
		s.appendEventLocked(old, user, "m.room.power_levels", &empty, mustJSON(silenced))
	}
	final := fixupLevels(oldPL)
	if rv.privilegedCreators() {
		if u, ok := final["users"].(map[string]any); ok {
			removeCreators(u, user, extra)
		}
	}
	if e := s.authorizeEventLocked(nr, user, "m.room.power_levels", &empty, final); e != nil {
		return nil, e
	}
	s.appendEventLocked(nr, user, "m.room.power_levels", &empty, mustJSON(final))
	return map[string]any{"replacement_room": nr.id}, nil
}

// moveAliasesLocked points every local alias of old at nr and moves the
// local canonical alias and alt_aliases over, as Synapse does.
func (s *Server) moveAliasesLocked(old, nr *room, user string) {
	for a := range old.aliases {
		entry := s.aliases[a]
		entry.roomID = nr.id
		s.aliases[a] = entry
		nr.aliases[a] = true
		delete(old.aliases, a)
	}
	ev := old.stateEvent("m.room.canonical_alias", "")
	if ev == nil {
		return
	}
	local := func(alias string) bool {
		a, err := mxid.ParseRoomAlias(alias)
		return err == nil && a.Server() == s.opts.ServerName
	}
	oldContent := contentMap(ev)
	newContent := map[string]any{}
	if c, ok := oldContent["alias"].(string); ok && local(c) {
		newContent["alias"] = c
		delete(oldContent, "alias")
	}
	if alts, ok := oldContent["alt_aliases"].([]any); ok && len(alts) > 0 {
		var keep, moved []any
		for _, x := range alts {
			if a, ok := x.(string); ok && local(a) {
				moved = append(moved, a)
			} else {
				keep = append(keep, x)
			}
		}
		newContent["alt_aliases"] = append([]any{}, moved...)
		if len(keep) > 0 {
			oldContent["alt_aliases"] = keep
		} else {
			delete(oldContent, "alt_aliases")
		}
	}
	empty := ""
	// Synapse logs and goes on when either update is refused.
	for _, u := range []struct {
		r       *room
		content map[string]any
	}{{old, oldContent}, {nr, newContent}} {
		if s.authorizeEventLocked(u.r, user, "m.room.canonical_alias", &empty, u.content) == nil {
			s.appendEventLocked(u.r, user, "m.room.canonical_alias", &empty, mustJSON(u.content))
		}
	}
}

func removeCreators(users map[string]any, creator string, extra []string) {
	delete(users, creator)
	for _, c := range extra {
		delete(users, c)
	}
}

// sortedMembers lists the users with a membership, sorted.
func sortedMembers(r *room, membership string) []string {
	var out []string
	for u, m := range r.members {
		if m == membership {
			out = append(out, u)
		}
	}
	slices.Sort(out)
	return out
}

// fixupLevels copies power levels content with string levels turned into
// integers (Synapse's copy_and_fixup_power_levels_contents).
func fixupLevels(c map[string]any) map[string]any {
	out := normalize(c)
	for k, v := range out {
		switch {
		case slices.Contains(plTopLevel, k):
			if n, err := plInt(v, true); err == nil {
				out[k] = n
			}
		case k == "users" || k == "events" || k == "notifications":
			if m, ok := v.(map[string]any); ok {
				for kk, vv := range m {
					if n, err := plInt(vv, true); err == nil {
						m[kk] = n
					}
				}
			}
		}
	}
	return out
}

// intOr reads a level the way Synapse's int() does, with def for absent
// or unreadable values.
func intOr(v any, def int) int {
	if v == nil {
		return def
	}
	if s, ok := v.(string); ok {
		v = strings.TrimSpace(s)
	}
	n, err := plInt(v, true)
	if err != nil {
		return def
	}
	return n
}
