// Package namespace knows the shape of the comment service's room aliases:
// #<prefix><site>:<server> for a site's moderation room and
// #<prefix><site>_<section>:<server> for one comment section.
package namespace

import (
	"errors"
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"

	"golang.org/x/text/unicode/norm"

	"github.com/cactus-comments/appservice/pkg/mxid"
)

// Kind says what an alias names.
type Kind int

const (
	// NotOurs is an alias outside our namespace, or one with more than one
	// '_' after the prefix.
	NotOurs Kind = iota
	// Moderation is a site's moderation room: #<prefix><site>:<server>.
	Moderation
	// Comments is a comment section room: #<prefix><site>_<section>:<server>.
	Comments
)

func (k Kind) String() string {
	switch k {
	case Moderation:
		return "moderation"
	case Comments:
		return "comments"
	default:
		return "not-ours"
	}
}

// MaxSiteNameLength bounds a site name in bytes. The whole alias must fit in
// 255 bytes with the prefix, a section and the server name, so a site name
// has to leave room for them.
const MaxSiteNameLength = 100

// Namespace is our alias namespace on one homeserver.
type Namespace struct {
	// Prefix is CACTUS_NAMESPACE_PREFIX, e.g. "comments_".
	Prefix string
	// Server is the homeserver's server name, e.g. "example.org". Empty
	// accepts aliases of any server (the gateway cannot always know it).
	Server string
}

// Parsed is the result of Parse.
type Parsed struct {
	Kind    Kind
	Site    string
	Section string // only for Comments
	Alias   mxid.RoomAlias
	// Refused says why an alias shaped like ours is not ours (Kind is
	// then NotOurs): its site or section has a character that does not
	// show. "" otherwise.
	Refused string
}

// Parse classifies an alias. It works on the localpart only: the original
// appservice counted '_' over the whole alias, so a server name with '_'
// broke it.
func (n Namespace) Parse(alias string) (Parsed, error) {
	a, err := mxid.ParseRoomAlias(alias)
	if err != nil {
		return Parsed{}, err
	}
	return n.ParseAlias(a), nil
}

// ParseAlias classifies a validated alias.
func (n Namespace) ParseAlias(a mxid.RoomAlias) Parsed {
	p := Parsed{Alias: a}
	if n.Server != "" && a.Server() != n.Server {
		return p
	}
	rest, ok := strings.CutPrefix(a.Localpart(), n.Prefix)
	if !ok || rest == "" {
		return p
	}
	switch strings.Count(rest, "_") {
	case 0:
		p.Kind, p.Site = Moderation, rest
	case 1:
		site, section, _ := strings.Cut(rest, "_")
		if site == "" || section == "" {
			return p
		}
		p.Kind, p.Site, p.Section = Comments, site, section
	}
	if p.Kind != NotOurs {
		if r, ok := firstInvisible(rest); ok {
			// Lookalike sections: "abc\u202egpj.exe" shows as
			// "abcexe.jpg", "post\u200b" as "post". Refused before any
			// homeserver call.
			return Parsed{Alias: a, Refused: fmt.Sprintf("the site name or section id holds %U, an invisible or non-printing character", r)}
		}
		if why := composition(p.Site); why != "" {
			return Parsed{Alias: a, Refused: "the site name " + why}
		}
		if why := composition(p.Section); p.Kind == Comments && why != "" {
			return Parsed{Alias: a, Refused: "the section id " + why}
		}
	}
	return p
}

// MaxCombiningMarks bounds a run of combining marks. Real words of any
// script stack a few (Vietnamese two, Tibetan three or four); longer runs
// only serve to draw over neighbouring text.
const MaxCombiningMarks = 4

// composition says why s could render like another name ("" if it
// cannot): "café" typed with a composed é and with e + U+0301 shows the
// same, so only the composed form, Unicode Normalization Form C, names a
// site or a section. The text completes "the name ...".
func composition(s string) string {
	run := 0
	for i, r := range s {
		if !unicode.In(r, unicode.M) {
			run = 0
			continue
		}
		if i == 0 {
			return fmt.Sprintf("begins with %U, a combining mark that belongs on a letter before it", r)
		}
		if run++; run > MaxCombiningMarks {
			return fmt.Sprintf("has more than %d combining marks in a row", MaxCombiningMarks)
		}
	}
	if !norm.NFC.IsNormalString(s) {
		return "is not in Unicode Normalization Form C: type its accented letters as single characters (" + norm.NFC.String(s) + ")"
	}
	return ""
}

// Visible reports whether r may appear in a site name or a section id: a
// character that shows. Refused are controls, format characters
// (bidirectional overrides and isolates, zero-width spaces and joiners,
// the soft hyphen, the byte order mark), every space, private-use and
// unassigned code points, and the characters Unicode says to render as
// nothing (variation selectors, Hangul fillers, the combining grapheme
// joiner).
func Visible(r rune) bool {
	return unicode.IsPrint(r) && r != ' ' && r != utf8.RuneError &&
		!unicode.Is(unicode.Other_Default_Ignorable_Code_Point, r) &&
		!unicode.Is(unicode.Variation_Selector, r) &&
		r != '\u2800' // braille pattern blank: shows as a space
}

// firstInvisible returns the first character of s that is not Visible.
func firstInvisible(s string) (rune, bool) {
	for _, r := range s {
		if !Visible(r) {
			return r, true
		}
	}
	return 0, false
}

// ModerationLocalpart is the room_alias_name of a site's moderation room.
func (n Namespace) ModerationLocalpart(site string) string { return n.Prefix + site }

// CommentsLocalpart is the room_alias_name of a comment section room.
func (n Namespace) CommentsLocalpart(site, section string) string {
	return n.Prefix + site + "_" + section
}

// ModerationAlias is the full alias of a site's moderation room.
func (n Namespace) ModerationAlias(site string) (mxid.RoomAlias, error) {
	return mxid.NewRoomAlias(n.ModerationLocalpart(site), n.Server)
}

// CommentsAlias is the full alias of a comment section room.
func (n Namespace) CommentsAlias(site, section string) (mxid.RoomAlias, error) {
	if err := ValidateSectionID(section); err != nil {
		return mxid.RoomAlias{}, err
	}
	return mxid.NewRoomAlias(n.CommentsLocalpart(site, section), n.Server)
}

// ErrBadSiteName is wrapped by every ValidateSiteName refusal.
var ErrBadSiteName = errors.New("invalid site name")

// ErrBadSectionID is wrapped by every ValidateSectionID refusal.
var ErrBadSectionID = errors.New("invalid section id")

// SiteNameReserved are the characters, besides spaces and those that do
// not show, that a site name may not hold. Texts that describe the rules
// list them from here.
const SiteNameReserved = "_:#@!$+/\\?%<>\"'“”‘’"

// SectionIDReserved are the characters, besides spaces and those that do
// not show, that a section id may not hold: a section id is the rest of
// the alias's localpart, which ends at the first ':'.
const SectionIDReserved = "_:"

// Quote quotes a name for people: as typed, between typographic quotes.
// Go's %q would double every backslash and escape quotes, so the name
// shown would not be the name typed.
func Quote(name string) string { return "“" + name + "”" }

// reservedReason says why r is reserved ("" if it is not said).
func reservedReason(r rune) string {
	switch r {
	case '_':
		return ", which separates the site from the comment section in room aliases"
	case ':':
		return ", which separates an alias from its server name"
	case '#', '@', '!', '$', '+':
		return ", which Matrix uses as an identifier sigil"
	case '<', '>', '"', '\'', '“', '”', '‘', '’':
		// "register <sitename>" from the help, typed literally.
		return ": type the name without brackets or quotes"
	}
	return ""
}

// ValidateSiteName checks a site name before any homeserver call. The
// returned error's text is written for the person who typed the name.
func ValidateSiteName(site string) error {
	if len(site) > MaxSiteNameLength && utf8.ValidString(site) {
		return fmt.Errorf("%w: the name is longer than %d bytes", ErrBadSiteName, MaxSiteNameLength)
	}
	if why := nameProblem(site, SiteNameReserved); why != "" {
		return fmt.Errorf("%w: the name %s", ErrBadSiteName, why)
	}
	if strings.IndexFunc(site, func(r rune) bool { return !unicode.IsPunct(r) }) < 0 {
		// ".", ".." and "-" are what is left of a placeholder or a path.
		return fmt.Errorf("%w: the name is only punctuation: type the name itself, without brackets or quotes, with at least one letter, digit or symbol", ErrBadSiteName)
	}
	return nil
}

// ValidateSectionID checks a comment section id. The returned error's text
// is written for the person who chose the id.
func ValidateSectionID(section string) error {
	if why := nameProblem(section, SectionIDReserved); why != "" {
		return fmt.Errorf("%w: the id %s", ErrBadSectionID, why)
	}
	return nil
}

// nameProblem says what is wrong with a site name or section id ("" if
// nothing), completing "the name ...".
func nameProblem(s, reserved string) string {
	switch {
	case s == "":
		return "is empty"
	case !utf8.ValidString(s):
		return "is not valid UTF-8"
	}
	// The separators first: they explain the most common mistakes.
	for _, r := range "_:" {
		if strings.ContainsRune(reserved, r) && strings.ContainsRune(s, r) {
			return "may not contain " + Quote(string(r)) + reservedReason(r)
		}
	}
	for _, r := range s {
		switch {
		case unicode.IsSpace(r):
			return "may not contain spaces"
		case !Visible(r):
			return fmt.Sprintf("may not contain %U, an invisible or non-printing character", r)
		case strings.ContainsRune(reserved, r):
			return "may not contain " + Quote(string(r)) + reservedReason(r)
		}
	}
	return composition(s)
}
