// Package mxid provides typed Matrix identifiers (user ids, room ids, room
// aliases, event ids and server names), validated against the grammar of the
// Matrix specification's identifier appendix.
//
// Parsing is deliberately lenient where the spec is (historical user id
// localparts, room ids without a server name as in room version 12) and
// strict where a wrong value would be dangerous to us: control characters,
// NUL, whitespace in opaque ids, and the 255-byte length limit.
package mxid

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"
)

// MaxLength is the spec's limit, in bytes, for every identifier including
// its sigil and server name.
const MaxLength = 255

// ErrInvalid is wrapped by every parse error, so callers can test for it
// with errors.Is without caring which identifier kind failed.
var ErrInvalid = errors.New("invalid matrix identifier")

func invalid(kind, s, why string) error {
	if len(s) > 64 {
		s = s[:64] + "…"
	}
	return fmt.Errorf("%w: %s %q: %s", ErrInvalid, kind, s, why)
}

// UserID is a validated Matrix user id such as @alice:example.org.
type UserID struct{ localpart, server string }

// RoomID is a validated room id such as !abc:example.org, or a room version
// 12 id without a server name.
type RoomID struct{ s string }

// RoomAlias is a validated alias such as #comments_blog:example.org.
type RoomAlias struct{ localpart, server string }

// EventID is a validated event id ($opaque, or the old $opaque:server form).
type EventID struct{ s string }

// ParseUserID validates s as a user id. Historical localparts (any printable
// ASCII except ':') are accepted because servers still carry such users.
func ParseUserID(s string) (UserID, error) {
	local, server, err := splitSigil(s, '@', "user id")
	if err != nil {
		return UserID{}, err
	}
	if local == "" {
		return UserID{}, invalid("user id", s, "empty localpart")
	}
	for i := 0; i < len(local); i++ {
		c := local[i]
		if c < 0x21 || c > 0x7e {
			return UserID{}, invalid("user id", s, "localpart has a character outside printable ASCII")
		}
	}
	return UserID{localpart: local, server: server}, nil
}

// MustUserID is ParseUserID for constants in tests and examples.
func MustUserID(s string) UserID {
	u, err := ParseUserID(s)
	if err != nil {
		panic(err)
	}
	return u
}

// ParseRoomAlias validates s as a room alias. The localpart may hold any
// unicode except ':' and NUL.
func ParseRoomAlias(s string) (RoomAlias, error) {
	local, server, err := splitSigil(s, '#', "room alias")
	if err != nil {
		return RoomAlias{}, err
	}
	if local == "" {
		return RoomAlias{}, invalid("room alias", s, "empty localpart")
	}
	if !utf8.ValidString(local) {
		return RoomAlias{}, invalid("room alias", s, "localpart is not valid UTF-8")
	}
	for _, r := range local {
		if r < 0x20 || r == 0x7f {
			return RoomAlias{}, invalid("room alias", s, "localpart has a control character")
		}
	}
	return RoomAlias{localpart: local, server: server}, nil
}

// MustRoomAlias is ParseRoomAlias for constants in tests and examples.
func MustRoomAlias(s string) RoomAlias {
	a, err := ParseRoomAlias(s)
	if err != nil {
		panic(err)
	}
	return a
}

// NewRoomAlias builds #localpart:server and validates the result.
func NewRoomAlias(localpart, server string) (RoomAlias, error) {
	return ParseRoomAlias("#" + localpart + ":" + server)
}

// ParseRoomID validates s as a room id: '!' then an opaque part, optionally
// followed by ':' and a server name (absent in room version 12).
func ParseRoomID(s string) (RoomID, error) {
	if err := checkOpaque(s, '!', "room id"); err != nil {
		return RoomID{}, err
	}
	return RoomID{s: s}, nil
}

// MustRoomID is ParseRoomID for constants in tests and examples.
func MustRoomID(s string) RoomID {
	r, err := ParseRoomID(s)
	if err != nil {
		panic(err)
	}
	return r
}

// ParseEventID validates s as an event id.
func ParseEventID(s string) (EventID, error) {
	if err := checkOpaque(s, '$', "event id"); err != nil {
		return EventID{}, err
	}
	return EventID{s: s}, nil
}

// ParseServerName validates a server name: hostname, IPv4 or [IPv6], with
// an optional port. Its errors wrap ErrInvalid.
func ParseServerName(s string) error {
	if why := serverNameProblem(s); why != "" {
		return invalid("server name", s, why)
	}
	return nil
}

// serverNameProblem returns why s is not a server name, "" if it is one.
func serverNameProblem(s string) string {
	if s == "" {
		return "empty server name"
	}
	host, port := s, ""
	if strings.HasPrefix(s, "[") {
		end := strings.IndexByte(s, ']')
		if end < 0 {
			return "unterminated IPv6 literal"
		}
		host, port = s[:end+1], s[end+1:]
		inner := host[1 : len(host)-1]
		// The spec's grammar: IPv6address = 2*45IPv6char.
		if len(inner) < 2 || len(inner) > 45 {
			return "bad IPv6 literal length"
		}
		for i := 0; i < len(inner); i++ {
			c := inner[i]
			if !(isHex(c) || c == ':' || c == '.') {
				return "bad character in IPv6 literal"
			}
		}
	} else if i := strings.LastIndexByte(s, ':'); i >= 0 {
		host, port = s[:i], s[i:]
	}
	if port != "" {
		if port[0] != ':' || len(port) < 2 || len(port) > 6 {
			return "bad port"
		}
		n, err := strconv.Atoi(port[1:])
		if err != nil || n < 1 || n > 65535 || strings.ContainsAny(port[1:], "+-") {
			return "bad port"
		}
	}
	if !strings.HasPrefix(host, "[") {
		// '_' is outside the spec's grammar, but development setups (Docker
		// service names) run homeservers under such names, and the original
		// Cactus appservice's bug with them is one we promise to fix.
		if host == "" || len(host) > 255 {
			return "bad host name length"
		}
		for i := 0; i < len(host); i++ {
			c := host[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '-' || c == '_') {
				return "bad character in host name"
			}
		}
	}
	return ""
}

func isHex(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}

// splitSigil checks the sigil and length, then splits at the FIRST ':' (a
// localpart never contains one; an IPv6 server name may).
func splitSigil(s string, sigil byte, kind string) (local, server string, err error) {
	if len(s) > MaxLength {
		return "", "", invalid(kind, s, "longer than 255 bytes")
	}
	if len(s) == 0 || s[0] != sigil {
		return "", "", invalid(kind, s, fmt.Sprintf("must start with %q", sigil))
	}
	i := strings.IndexByte(s, ':')
	if i < 0 {
		return "", "", invalid(kind, s, "missing ':' and server name")
	}
	local, server = s[1:i], s[i+1:]
	if strings.IndexByte(local, 0) >= 0 {
		return "", "", invalid(kind, s, "contains NUL")
	}
	if why := serverNameProblem(server); why != "" {
		return "", "", invalid(kind, s, why)
	}
	return local, server, nil
}

func checkOpaque(s string, sigil byte, kind string) error {
	if len(s) > MaxLength {
		return invalid(kind, s, "longer than 255 bytes")
	}
	if len(s) < 2 || s[0] != sigil {
		return invalid(kind, s, fmt.Sprintf("must start with %q and have an opaque part", sigil))
	}
	if !utf8.ValidString(s) {
		return invalid(kind, s, "not valid UTF-8")
	}
	for _, r := range s {
		if r <= 0x20 || r == 0x7f {
			return invalid(kind, s, "contains whitespace or a control character")
		}
	}
	if i := strings.IndexByte(s, ':'); i >= 0 {
		if i == 1 {
			return invalid(kind, s, "empty opaque part")
		}
		if why := serverNameProblem(s[i+1:]); why != "" {
			return invalid(kind, s, why)
		}
	}
	return nil
}

// String returns the full identifier.
func (u UserID) String() string {
	if u.localpart == "" {
		return ""
	}
	return "@" + u.localpart + ":" + u.server
}

// Localpart returns the part between '@' and the first ':'.
func (u UserID) Localpart() string { return u.localpart }

// Server returns the server name.
func (u UserID) Server() string { return u.server }

// IsZero reports whether u is the zero value.
func (u UserID) IsZero() bool { return u.localpart == "" }

// String returns the full alias.
func (a RoomAlias) String() string {
	if a.localpart == "" {
		return ""
	}
	return "#" + a.localpart + ":" + a.server
}

// Localpart returns the part between '#' and the first ':'.
func (a RoomAlias) Localpart() string { return a.localpart }

// Server returns the server name.
func (a RoomAlias) Server() string { return a.server }

// IsZero reports whether a is the zero value.
func (a RoomAlias) IsZero() bool { return a.localpart == "" }

// String returns the room id.
func (r RoomID) String() string { return r.s }

// IsZero reports whether r is the zero value.
func (r RoomID) IsZero() bool { return r.s == "" }

// String returns the event id.
func (e EventID) String() string { return e.s }

// IsZero reports whether e is the zero value.
func (e EventID) IsZero() bool { return e.s == "" }

// MarshalText implements encoding.TextMarshaler.
func (u UserID) MarshalText() ([]byte, error) { return []byte(u.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler with validation.
func (u *UserID) UnmarshalText(b []byte) error {
	v, err := ParseUserID(string(b))
	if err != nil {
		return err
	}
	*u = v
	return nil
}

// MarshalText implements encoding.TextMarshaler.
func (r RoomID) MarshalText() ([]byte, error) { return []byte(r.s), nil }

// UnmarshalText implements encoding.TextUnmarshaler with validation.
func (r *RoomID) UnmarshalText(b []byte) error {
	v, err := ParseRoomID(string(b))
	if err != nil {
		return err
	}
	*r = v
	return nil
}

// MarshalText implements encoding.TextMarshaler.
func (a RoomAlias) MarshalText() ([]byte, error) { return []byte(a.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler with validation.
func (a *RoomAlias) UnmarshalText(b []byte) error {
	v, err := ParseRoomAlias(string(b))
	if err != nil {
		return err
	}
	*a = v
	return nil
}

// MarshalText implements encoding.TextMarshaler.
func (e EventID) MarshalText() ([]byte, error) { return []byte(e.s), nil }

// UnmarshalText implements encoding.TextUnmarshaler with validation.
func (e *EventID) UnmarshalText(b []byte) error {
	v, err := ParseEventID(string(b))
	if err != nil {
		return err
	}
	*e = v
	return nil
}
