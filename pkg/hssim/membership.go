package hssim

import (
	"net/http"
	"reflect"
	"strings"
)

// effective maps a membership action to the membership it writes.
var effective = map[string]string{"join": "join", "invite": "invite", "leave": "leave", "kick": "leave", "ban": "ban", "unban": "leave"}

// changeMembershipLocked checks and writes a membership change of target
// by who. It returns the id of the event that now holds the membership
// (an existing one when the change is a duplicate, as Synapse does).
func (s *Server) changeMembershipLocked(r *room, who *requester, target, action, reason string) (string, *matrixError) {
	return s.changeMembershipExtraLocked(r, who, target, action, reason, nil)
}

// changeMembershipExtraLocked is changeMembershipLocked with extra content
// keys, such as is_direct on the invites of a createRoom with is_direct.
func (s *Server) changeMembershipExtraLocked(r *room, who *requester, target, action, reason string, extra map[string]any) (string, *matrixError) {
	sender := who.userID
	membership := effective[action]
	old := r.stateEvent("m.room.member", target)
	oldMembership := r.membership(target)

	if who.guest && action != "join" && action != "leave" {
		return "", errf(http.StatusForbidden, "M_GUEST_ACCESS_FORBIDDEN", "Guests cannot perform this action")
	}
	if s.opts.Mode == Synapse && old != nil {
		if action == "unban" && oldMembership != "ban" {
			return "", errf(http.StatusForbidden, "M_BAD_STATE", "Cannot unban user who was not banned (membership=%s)", oldMembership)
		}
		if oldMembership == "ban" && action != "ban" && action != "unban" && action != "leave" {
			return "", errf(http.StatusForbidden, "M_BAD_STATE", "Cannot %s user who was banned", action)
		}
	}

	content := map[string]any{"membership": membership}
	for k, v := range extra {
		content[k] = v
	}
	if reason != "" {
		content["reason"] = reason
	}
	if membership == "join" || membership == "invite" {
		if u, ok := s.users[target]; ok {
			if u.displayName != "" {
				content["displayname"] = u.displayName
			}
			if u.avatarURL != "" {
				content["avatar_url"] = u.avatarURL
			}
		}
	}
	if old != nil && old.Sender == sender && reflect.DeepEqual(contentMap(old), normalize(content)) {
		return old.EventID, nil
	}
	if e := s.authMembershipLocked(r, who, target, membership, oldMembership); e != nil {
		return "", e
	}
	ev := s.appendEventLocked(r, sender, "m.room.member", &target, mustJSON(content))
	return ev.EventID, nil
}

// normalize round-trips through JSON so comparisons see float64 numbers.
func normalize(m map[string]any) map[string]any {
	var out map[string]any
	_ = jsonUnmarshal(mustJSON(m), &out)
	return out
}

// authMembershipLocked is the spec's authorization rule for m.room.member.
func (s *Server) authMembershipLocked(r *room, who *requester, target, membership, oldMembership string) *matrixError {
	sender := who.userID
	senderMembership := r.membership(sender)
	pl := s.roomPowerLevels(r)
	me, them := pl.userLevel(sender), pl.userLevel(target)
	notInRoom := errForbidden("User %s not in room %s", sender, r.id)
	switch membership {
	case "join":
		if sender != target {
			return errForbidden("Cannot force another user to join.")
		}
		if oldMembership == "ban" {
			return errForbidden("You are banned from this room")
		}
		if who.guest {
			ga, _ := r.stateContent("m.room.guest_access", "")["guest_access"].(string)
			if ga != "can_join" {
				return errf(http.StatusForbidden, "M_GUEST_ACCESS_FORBIDDEN", "Guest access not allowed")
			}
		}
		if oldMembership == "join" {
			return nil
		}
		switch r.joinRule() {
		case "public":
			return nil
		case "invite", "knock", "restricted", "knock_restricted":
			if oldMembership == "invite" {
				return nil
			}
		}
		return errForbidden("You are not invited to this room.")
	case "invite":
		if senderMembership != "join" {
			return notInRoom
		}
		if oldMembership == "ban" {
			return errForbidden("%s is banned from the room", target)
		}
		if oldMembership == "join" {
			return errForbidden("%s is already in the room.", target)
		}
		if me < pl.invite {
			return errForbidden("You don't have permission to invite users")
		}
		return nil
	case "leave":
		if sender == target {
			if oldMembership == "join" || oldMembership == "invite" || oldMembership == "knock" {
				return nil
			}
			return notInRoom
		}
		if senderMembership != "join" {
			return notInRoom
		}
		if oldMembership == "ban" && me < pl.ban {
			return errForbidden("You don't have permission to unban users (your level %s, ban level %d)", level(me), pl.ban)
		}
		if me >= pl.kick && them < me {
			return nil
		}
		return errForbidden("You cannot kick user %s.", target)
	case "ban":
		if senderMembership != "join" {
			return notInRoom
		}
		if me >= pl.ban && them < me {
			return nil
		}
		return errForbidden("You don't have permission to ban user %s (your level %s, theirs %s, ban level %d)", target, level(me), level(them), pl.ban)
	}
	return errf(http.StatusBadRequest, "M_BAD_JSON", "Invalid membership %q", membership)
}

// authorizeEventLocked is the authorization of non-member events.
func (s *Server) authorizeEventLocked(r *room, sender, typ string, stateKey *string, content map[string]any) *matrixError {
	if typ == "m.room.create" {
		return errForbidden("A room can only have one m.room.create event")
	}
	if r.membership(sender) != "join" {
		return errForbidden("User %s not in room %s", sender, r.id)
	}
	pl := s.roomPowerLevels(r)
	need, have := pl.eventLevel(typ, stateKey != nil), pl.userLevel(sender)
	if have < need {
		return errForbidden("You don't have permission to post that to the room. user_level (%s) < send_level (%d)", level(have), need)
	}
	if stateKey != nil && strings.HasPrefix(*stateKey, "@") && *stateKey != sender {
		return errForbidden("You are not allowed to set others state")
	}
	if typ == "m.room.power_levels" && stateKey != nil && *stateKey == "" {
		return s.checkPowerLevelsChange(pl, r.auth(), content, sender)
	}
	return nil
}
