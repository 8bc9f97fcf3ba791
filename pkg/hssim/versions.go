package hssim

import (
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"slices"
	"strconv"

	"github.com/cactus-comments/appservice/pkg/mxid"
)

// CreatorLevel is PowerLevel's answer for a creator of a room of version 12
// or later: creators have infinite power, above any level a power-levels
// event can hold (at most 2^53-1).
const CreatorLevel = math.MaxInt

// supportedRoomVersions are the stable versions Synapse, Dendrite and
// continuwuity create; anything else is refused as they refuse it.
var supportedRoomVersions = []string{"1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12"}

// defaultRoomVersions is each server's default for new rooms: stock Synapse
// and Dendrite make version 10, continuwuity (since 0.5.7) version 12.
var defaultRoomVersions = map[Mode]string{Synapse: "10", Dendrite: "10", Conduit: "12"}

// SupportedRoomVersions lists the room versions the simulator creates.
func SupportedRoomVersions() []string { return slices.Clone(supportedRoomVersions) }

// DefaultRoomVersion is the room version a mode creates when neither
// Options.RoomVersion nor the createRoom request names one.
func DefaultRoomVersion(m Mode) string { return defaultRoomVersions[m] }

// CheckRoomVersion reports whether the simulator can create rooms of
// version v.
func CheckRoomVersion(v string) error {
	if _, ok := parseRoomVersion(v); !ok {
		return fmt.Errorf("unsupported room version %q (want one of 1 to 12)", v)
	}
	return nil
}

// roomVersion holds the rules of a room version the simulator implements.
type roomVersion struct{ n int }

func parseRoomVersion(v string) (roomVersion, bool) {
	if !slices.Contains(supportedRoomVersions, v) {
		return roomVersion{}, false
	}
	n, _ := strconv.Atoi(v)
	return roomVersion{n}, true
}

// versionOf is the rules of a stored room, whose version was checked when
// it was created.
func versionOf(v string) roomVersion {
	rv, _ := parseRoomVersion(v)
	return rv
}

// stringLevels: before version 10 power levels may be strings ("50").
func (v roomVersion) stringLevels() bool { return v.n < 10 }

// creatorInContent: before version 11 the create event names the creator.
func (v roomVersion) creatorInContent() bool { return v.n < 11 }

// redactsInContent: from version 11 a redaction's target is in content.
func (v roomVersion) redactsInContent() bool { return v.n >= 11 }

// privilegedCreators: from version 12 the create event's sender and
// content.additional_creators have infinite power and never appear in
// the power levels' users.
func (v roomVersion) privilegedCreators() bool { return v.n >= 12 }

// hashRoomIDs: from version 12 a room's id is its create event's id with
// '!' for '$', without a server name.
func (v roomVersion) hashRoomIDs() bool { return v.n >= 12 }

func errUnsupportedVersion() *matrixError {
	return errf(http.StatusBadRequest, "M_UNSUPPORTED_ROOM_VERSION", "Your homeserver does not support this room version")
}

// checkAdditionalCreators validates an additional_creators value (create
// content or upgrade request) with Synapse's checks and messages.
func checkAdditionalCreators(v any) ([]string, *matrixError) {
	list, ok := v.([]any)
	if !ok {
		return nil, errBadJSON("additional_creators must be an array")
	}
	out := make([]string, 0, len(list))
	for _, x := range list {
		s, ok := x.(string)
		if !ok {
			return nil, errBadJSON("entry in additional_creators is not a string")
		}
		if _, err := mxid.ParseUserID(s); err != nil {
			return nil, errBadJSON("entry in additional_creators is not a valid user ID")
		}
		out = append(out, s)
	}
	return out, nil
}

// errCreatorInUsers is how each server refuses power levels that list a
// creator of a version 12 room in users.
func (s *Server) errCreatorInUsers(creator string) *matrixError {
	switch s.opts.Mode {
	case Conduit:
		return errf(http.StatusBadRequest, "M_INVALID_PARAM", "creator user IDs are not allowed in the `users` field")
	case Dendrite:
		// Dendrite answers every failed authorization check with 403.
		return errForbidden("creator %s must not appear in the users of m.room.power_levels", creator)
	}
	return errf(http.StatusBadRequest, "M_UNKNOWN", "Creator user %s must not appear in content.users", creator)
}

// level shows a power level in error messages.
func level(n int) string {
	if n == CreatorLevel {
		return "infinite (room creator)"
	}
	return strconv.Itoa(n)
}

// handleCapabilities tells clients which room version new rooms get.
func (s *Server) handleCapabilities(*request) (any, *matrixError) {
	available := map[string]string{}
	for _, v := range supportedRoomVersions {
		available[v] = "stable"
	}
	return map[string]any{"capabilities": map[string]any{
		"m.room_versions":   map[string]any{"default": s.RoomVersion(), "available": available},
		"m.change_password": map[string]any{"enabled": true},
		"m.set_displayname": map[string]any{"enabled": true},
		"m.set_avatar_url":  map[string]any{"enabled": true},
	}}, nil
}

// CheckPowerLevelsChange applies the simulator's authorization rules (as
// Synapse answers them) to sender replacing the power levels content cur
// (nil: the room has none yet) with next, in a room of the given version
// created by creator with additionalCreators. It is the oracle for code
// that computes power levels without a homeserver at hand.
func CheckPowerLevelsChange(version, creator string, additionalCreators []string, sender string, cur, next json.RawMessage) error {
	rv, ok := parseRoomVersion(version)
	if !ok {
		return errUnsupportedVersion()
	}
	ra := roomAuth{creator: creator, stringLevels: rv.stringLevels()}
	if rv.privilegedCreators() {
		ra.creators = append([]string{creator}, additionalCreators...)
	}
	var curContent, nextContent map[string]any
	if cur != nil {
		if err := json.Unmarshal(cur, &curContent); err != nil || curContent == nil {
			return errBadJSON("current power levels are not an object")
		}
	}
	if err := json.Unmarshal(next, &nextContent); err != nil || nextContent == nil {
		return errBadJSON("new power levels are not an object")
	}
	old, err := parsePowerLevels(curContent, ra)
	if err != nil {
		return errBadJSON("current power levels: %v", err)
	}
	s := &Server{opts: Options{Mode: Synapse}}
	if old.exists {
		if have, need := old.userLevel(sender), old.eventLevel("m.room.power_levels", true); have < need {
			return errForbidden("You don't have permission to post that to the room. user_level (%s) < send_level (%d)", level(have), need)
		}
	}
	if e := s.checkPowerLevelsChange(old, ra, nextContent, sender); e != nil {
		return e
	}
	return nil
}
