package registration

import (
	"fmt"
	"regexp"
)

// Anchoring says how a homeserver applies a namespace regex to an id.
type Anchoring int

const (
	// AnchorStart is Synapse: Python re.match, anchored at the start only,
	// so "@bot:example\.org" also matches "@bot:example.org.evil".
	AnchorStart Anchoring = iota
	// Anywhere is Dendrite and continuwuity: an unanchored search, so
	// "bot" matches "@robot:x".
	Anywhere
)

type compiled struct {
	re        *regexp.Regexp
	exclusive bool
}

// Matcher answers namespace questions for one registration.
type Matcher struct {
	users, aliases, rooms []compiled
}

// Compile builds a Matcher with the given anchoring.
func (r *Registration) Compile(a Anchoring) (*Matcher, error) {
	var m Matcher
	var err error
	if m.users, err = compileList(r.Namespaces.Users, a); err != nil {
		return nil, fmt.Errorf("users namespace: %w", err)
	}
	if m.aliases, err = compileList(r.Namespaces.Aliases, a); err != nil {
		return nil, fmt.Errorf("aliases namespace: %w", err)
	}
	if m.rooms, err = compileList(r.Namespaces.Rooms, a); err != nil {
		return nil, fmt.Errorf("rooms namespace: %w", err)
	}
	return &m, nil
}

func compileList(list []Namespace, a Anchoring) ([]compiled, error) {
	out := make([]compiled, 0, len(list))
	for _, ns := range list {
		src := ns.Regex
		if a == AnchorStart {
			src = `^(?:` + src + `)`
		}
		re, err := regexp.Compile(src)
		if err != nil {
			return nil, fmt.Errorf("regex %q: %w", ns.Regex, err)
		}
		out = append(out, compiled{re: re, exclusive: ns.Exclusive})
	}
	return out, nil
}

func match(list []compiled, s string) (matched, exclusive bool) {
	for _, c := range list {
		if c.re.MatchString(s) {
			matched = true
			if c.exclusive {
				exclusive = true
			}
		}
	}
	return matched, exclusive
}

// User reports whether a user id is in the users namespace, and whether an
// exclusive entry claims it.
func (m *Matcher) User(userID string) (matched, exclusive bool) { return match(m.users, userID) }

// Alias reports whether a room alias is in the aliases namespace.
func (m *Matcher) Alias(alias string) (matched, exclusive bool) { return match(m.aliases, alias) }

// Room reports whether a room id is in the rooms namespace.
func (m *Matcher) Room(roomID string) (matched, exclusive bool) { return match(m.rooms, roomID) }
