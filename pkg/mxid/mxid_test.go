package mxid

import (
	"encoding/json"
	"errors"
	"net/url"
	"strings"
	"testing"
	"unicode/utf8"
)

// pad returns a string of n bytes of c.
func pad(c byte, n int) string { return strings.Repeat(string(c), n) }

func TestParseUserID(t *testing.T) {
	tests := []struct {
		in            string
		ok            bool
		local, server string
	}{
		{"@alice:example.org", true, "alice", "example.org"},
		{"@cactusbot:example.org:8448", true, "cactusbot", "example.org:8448"},
		{"@a:[::1]", true, "a", "[::1]"},
		{"@a:[2001:db8::1]:8448", true, "a", "[2001:db8::1]:8448"},
		{"@a:127.0.0.1:80", true, "a", "127.0.0.1:80"},
		{"@a.b_c=d-e/f+g:example.org", true, "a.b_c=d-e/f+g", "example.org"},
		// Historical localparts: any printable ASCII but ':'.
		{"@Alice!~*'\"#:example.org", true, "Alice!~*'\"#", "example.org"},
		{"@" + pad('a', MaxLength-len("@:example.org")) + ":example.org", true, pad('a', MaxLength-len("@:example.org")), "example.org"},

		{"", false, "", ""},
		{"@", false, "", ""},
		{"alice:example.org", false, "", ""},
		{"#alice:example.org", false, "", ""},
		{"@alice", false, "", ""},
		{"@:example.org", false, "", ""},
		{"@alice:", false, "", ""},
		{"@al ice:example.org", false, "", ""},
		{"@al\x00ice:example.org", false, "", ""},
		{"@al\tice:example.org", false, "", ""},
		{"@al\x7fice:example.org", false, "", ""},
		{"@alïce:example.org", false, "", ""},
		{"@alice:exa_mple.org", true, "alice", "exa_mple.org"},
		{"@alice:exa*mple.org", false, "", ""},
		{"@alice:example.org:0", false, "", ""},
		{"@alice:example.org:65536", false, "", ""},
		{"@alice:example.org:+80", false, "", ""},
		{"@alice:example.org:", false, "", ""},
		{"@alice:example.org\x00", false, "", ""},
		{"@alice:[::1", false, "", ""},
		{"@" + pad('a', MaxLength-len("@:example.org")+1) + ":example.org", false, "", ""},
	}
	for _, tt := range tests {
		u, err := ParseUserID(tt.in)
		if (err == nil) != tt.ok {
			t.Errorf("ParseUserID(%q) err = %v, want ok=%v", tt.in, err, tt.ok)
			continue
		}
		if !tt.ok {
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("ParseUserID(%q) error %v does not wrap ErrInvalid", tt.in, err)
			}
			if !u.IsZero() {
				t.Errorf("ParseUserID(%q) returned a non-zero value with an error", tt.in)
			}
			continue
		}
		if u.Localpart() != tt.local || u.Server() != tt.server || u.String() != tt.in || u.IsZero() {
			t.Errorf("ParseUserID(%q) = (%q, %q, %q)", tt.in, u.Localpart(), u.Server(), u.String())
		}
	}
}

func TestParseRoomAlias(t *testing.T) {
	tests := []struct {
		in            string
		ok            bool
		local, server string
	}{
		{"#comments_blog:example.org", true, "comments_blog", "example.org"},
		{"#comments_blog.example.org_/posts/hello:example.org", true, "comments_blog.example.org_/posts/hello", "example.org"},
		{"#comments_café_ünïcødé😀:example.org", true, "comments_café_ünïcødé😀", "example.org"},
		{"#a b:example.org", true, "a b", "example.org"},
		{"#a:[::1]:8448", true, "a", "[::1]:8448"},
		{"#a:[2001:db8::dead:beef]", true, "a", "[2001:db8::dead:beef]"},
		{"#a:my_server.org:8448", true, "a", "my_server.org:8448"},
		{"#a:localhost:1", true, "a", "localhost:1"},
		{"#a:localhost:65535", true, "a", "localhost:65535"},
		{"#" + pad('x', MaxLength-len("#:example.org")) + ":example.org", true, pad('x', MaxLength-len("#:example.org")), "example.org"},

		{"#" + pad('x', MaxLength-len("#:example.org")+1) + ":example.org", false, "", ""},
		// 255 bytes counts bytes, not runes.
		{"#" + strings.Repeat("é", 122) + ":example.org", false, "", ""},
		{"", false, "", ""},
		{"#", false, "", ""},
		{"#:example.org", false, "", ""},
		{"#abc", false, "", ""},
		{"comments_x:example.org", false, "", ""},
		{"!comments_x:example.org", false, "", ""},
		{"#a\x00b:example.org", false, "", ""},
		{"#a\nb:example.org", false, "", ""},
		{"#a\x1bb:example.org", false, "", ""},
		{"#a\x7fb:example.org", false, "", ""},
		{"#a\xffb:example.org", false, "", ""},
		{"#a:", false, "", ""},
		{"#a:exa mple.org", false, "", ""},
		{"#a:[]", false, "", ""},
		{"#a:[x]", false, "", ""},
		{"#a:[::1]x", false, "", ""},
		{"#a:[::1]:", false, "", ""},
		{"#a:[::1]:99999", false, "", ""},
		{"#a:example.org:80:80", false, "", ""},
		{"#a:example.org/path", false, "", ""},
	}
	for _, tt := range tests {
		a, err := ParseRoomAlias(tt.in)
		if (err == nil) != tt.ok {
			t.Errorf("ParseRoomAlias(%q) err = %v, want ok=%v", tt.in, err, tt.ok)
			continue
		}
		if !tt.ok {
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("ParseRoomAlias(%q) error %v does not wrap ErrInvalid", tt.in, err)
			}
			continue
		}
		if a.Localpart() != tt.local || a.Server() != tt.server || a.String() != tt.in || a.IsZero() {
			t.Errorf("ParseRoomAlias(%q) = (%q, %q, %q)", tt.in, a.Localpart(), a.Server(), a.String())
		}
	}
}

func TestNewRoomAlias(t *testing.T) {
	a, err := NewRoomAlias("comments_blog_/p", "example.org")
	if err != nil || a.String() != "#comments_blog_/p:example.org" {
		t.Fatalf("NewRoomAlias = %v, %v", a, err)
	}
	for _, bad := range [][2]string{{"", "example.org"}, {"a:b", "example.org"}, {"a", ""}, {"a", "bad server"}} {
		if _, err := NewRoomAlias(bad[0], bad[1]); err == nil {
			t.Errorf("NewRoomAlias(%q, %q) accepted", bad[0], bad[1])
		}
	}
}

func TestParseRoomID(t *testing.T) {
	v12 := "!" + "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQ" // 43 base64url chars
	tests := []struct {
		in string
		ok bool
	}{
		// Room version 12: the create event's reference hash, url-safe
		// base64 with '-' and '_', no server name.
		{"!YLKG2pnFPOhe-59nNQBjnjsUMPXQVY3o7JfhLvHavoA", true},
		{"!_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_", true},
		{"!abc:example.org", true},
		{"!OGEhHVWSdvArJzumhm:matrix.org", true},
		{"!abc:example.org:8448", true},
		{"!abc:[::1]:8448", true},
		{v12, true},
		{"!a-b_c", true},
		{"!x", true},
		{"!" + pad('a', MaxLength-1), true},

		{"!" + pad('a', MaxLength), false},
		{"", false},
		{"!", false},
		{"abc:example.org", false},
		{"$abc:example.org", false},
		{"!:example.org", false},
		{"!abc:", false},
		{"!abc:bad/server", false},
		{"!ab c:example.org", false},
		{"!ab\x00c", false},
		{"!ab\nc", false},
		{"!ab\x7fc", false},
		{"!ab\xffc", false},
		{"!abc:example.org ", false},
		{"!YLKG2pnFPOhe-59nNQBjnjsUMPXQVY3o7JfhLvHavoA:", false},
		{"!YLKG2pnFPOhe-59nNQBjnjsUMPXQVY3o7JfhLvHavoA ", false},
	}
	for _, tt := range tests {
		r, err := ParseRoomID(tt.in)
		if (err == nil) != tt.ok {
			t.Errorf("ParseRoomID(%q) err = %v, want ok=%v", tt.in, err, tt.ok)
			continue
		}
		if !tt.ok {
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("ParseRoomID(%q) error %v does not wrap ErrInvalid", tt.in, err)
			}
			continue
		}
		if r.String() != tt.in || r.IsZero() {
			t.Errorf("ParseRoomID(%q).String() = %q", tt.in, r.String())
		}
	}
}

func TestParseEventID(t *testing.T) {
	tests := []struct {
		in string
		ok bool
	}{
		{"$143273582443PhrSn:example.org", true},               // room v1, v2
		{"$acR1l0raoZnm60CBwAVgqbZqoO/mYU81xysh1u7XcJk", true}, // v3: standard base64
		{"$Rqnc-F-dvnEYJTyHq_iKxU2bZ1CI92-kuZq3a5lr5Zg", true}, // v4+: url-safe base64
		{"$a+b/c=", true},
		{"$x", true},
		{"$" + pad('a', MaxLength-1), true},

		{"$" + pad('a', MaxLength), false},
		{"", false},
		{"$", false},
		{"!abc", false},
		{"$:example.org", false},
		{"$ab c", false},
		{"$ab\x00", false},
		{"$ab\r\n", false},
		{"$ab:exa mple.org", false},
		{"$ab\xc3", false},
	}
	for _, tt := range tests {
		e, err := ParseEventID(tt.in)
		if (err == nil) != tt.ok {
			t.Errorf("ParseEventID(%q) err = %v, want ok=%v", tt.in, err, tt.ok)
			continue
		}
		if !tt.ok {
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("ParseEventID(%q) error %v does not wrap ErrInvalid", tt.in, err)
			}
			continue
		}
		if e.String() != tt.in || e.IsZero() {
			t.Errorf("ParseEventID(%q).String() = %q", tt.in, e.String())
		}
	}
}

func TestParseServerName(t *testing.T) {
	tests := []struct {
		in string
		ok bool
	}{
		{"example.org", true},
		{"EXAMPLE.org", true},
		{"localhost", true},
		{"my-server", true},
		{"example.org:8448", true},
		{"example.org:1", true},
		{"example.org:65535", true},
		{"1.2.3.4", true},
		{"1.2.3.4:1234", true},
		{"[1234:5678::abcd]", true},
		{"[1234:5678::abcd]:5678", true},
		{"[::1]", true},
		{"[::ffff:1.2.3.4]", true},
		{pad('a', 255), true},
		{pad('a', 255) + ":80", true},

		{"", false},
		{pad('a', 256), false},
		{"exa_mple.org", true},
		{"exa*mple.org", false},
		{"exa>mple.org", false},
		{"exa mple.org", false},
		{"example.org/", false},
		{"ex\x00ample.org", false},
		{"exämple.org", false},
		{":80", false},
		{"example.org:", false},
		{"example.org:0", false},
		{"example.org:65536", false},
		{"example.org:1234567", false},
		{"example.org:-1", false},
		{"example.org:+1", false},
		{"example.org:8a", false},
		{"example.org:80:80", false},
		{"[", false},
		{"[::1", false},
		{"[]", false},
		{"[1]", false},
		{"[::g]", false},
		{"[::1]]", false},
		{"[::1]80", false},
		{"[::1]:", false},
		{"[" + strings.Repeat("1", 46) + "]", false},
		{"]", false},
	}
	for _, tt := range tests {
		err := ParseServerName(tt.in)
		if (err == nil) != tt.ok {
			t.Errorf("ParseServerName(%q) err = %v, want ok=%v", tt.in, err, tt.ok)
		}
		if err != nil && !errors.Is(err, ErrInvalid) {
			t.Errorf("ParseServerName(%q) error %v does not wrap ErrInvalid", tt.in, err)
		}
	}
}

func TestErrorsAreShortAndSingleLine(t *testing.T) {
	long := "#" + strings.Repeat("x\n", 400) + ":example.org"
	_, err := ParseRoomAlias(long)
	if err == nil {
		t.Fatal("accepted")
	}
	if strings.Contains(err.Error(), "\n") {
		t.Errorf("error spans lines: %q", err)
	}
	if len(err.Error()) > 300 {
		t.Errorf("error is %d bytes long, the input should be truncated", len(err.Error()))
	}
}

func TestMust(t *testing.T) {
	if MustUserID("@a:b").String() != "@a:b" || MustRoomID("!a:b").String() != "!a:b" || MustRoomAlias("#a:b").String() != "#a:b" {
		t.Fatal("Must* changed the value")
	}
	for name, f := range map[string]func(){
		"MustUserID":    func() { MustUserID("bad") },
		"MustRoomID":    func() { MustRoomID("bad") },
		"MustRoomAlias": func() { MustRoomAlias("bad") },
	} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("%s did not panic on a bad id", name)
				}
			}()
			f()
		}()
	}
}

func TestZeroValues(t *testing.T) {
	if (UserID{}).String() != "" || !(UserID{}).IsZero() {
		t.Error("zero UserID")
	}
	if (RoomAlias{}).String() != "" || !(RoomAlias{}).IsZero() {
		t.Error("zero RoomAlias")
	}
	if (RoomID{}).String() != "" || !(RoomID{}).IsZero() {
		t.Error("zero RoomID")
	}
	if (EventID{}).String() != "" || !(EventID{}).IsZero() {
		t.Error("zero EventID")
	}
}

func TestJSONRoundTripAndValidation(t *testing.T) {
	type doc struct {
		User  UserID    `json:"user"`
		Room  RoomID    `json:"room"`
		Alias RoomAlias `json:"alias"`
		Event EventID   `json:"event"`
	}
	in := doc{MustUserID("@a:example.org"), MustRoomID("!r:example.org"), MustRoomAlias("#comments_x:example.org"), EventID{"$e"}}
	v12 := struct{ Room RoomID }{MustRoomID("!YLKG2pnFPOhe-59nNQBjnjsUMPXQVY3o7JfhLvHavoA")}
	if b, err := json.Marshal(v12); err != nil || json.Unmarshal(b, &v12) != nil || v12.Room.String() != "!YLKG2pnFPOhe-59nNQBjnjsUMPXQVY3o7JfhLvHavoA" {
		t.Fatalf("v12 room id through JSON: %s %v", b, err)
	}
	b, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"user":"@a:example.org","room":"!r:example.org","alias":"#comments_x:example.org","event":"$e"}`
	if string(b) != want {
		t.Fatalf("marshal = %s, want %s", b, want)
	}
	var out doc
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	if out != in {
		t.Fatalf("round trip = %+v, want %+v", out, in)
	}
	for _, bad := range []string{
		`{"user":"alice"}`, `{"room":"r"}`, `{"alias":"#nope"}`, `{"event":"e"}`,
	} {
		var d doc
		if err := json.Unmarshal([]byte(bad), &d); !errors.Is(err, ErrInvalid) {
			t.Errorf("Unmarshal(%s) err = %v, want ErrInvalid", bad, err)
		}
	}
}

// Fuzz targets: parsing never panics; whatever parses has a String that
// reparses to the same value and respects the length limit.

var fuzzSeeds = []string{
	"", "@", "#", "!", "$", ":", "@a:b", "#a:b", "!a:b", "$a:b", "!a", "$a",
	"@alice:example.org:8448", "#comments_blog.example.org_/posts/hello:example.org",
	"#a:[::1]:8448", "@a:[2001:db8::1]", "!abc:[::1", "#a:[]", "#a\x00:b", "#é:b",
	"@" + pad('a', 300) + ":b", "#a:b:c", "$a:b:0", "[::1]", "[::1]:80", "a:65535",
	"#\xff:b", "!a b", "@a:b:",
	"!YLKG2pnFPOhe-59nNQBjnjsUMPXQVY3o7JfhLvHavoA", "$YLKG2pnFPOhe-59nNQBjnjsUMPXQVY3o7JfhLvHavoA", "!a/b", "!a%2Fb", "!a?b#c",
}

func FuzzParseUserID(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		u, err := ParseUserID(s)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error %v does not wrap ErrInvalid", err)
			}
			return
		}
		if u.String() != s || len(s) > MaxLength || strings.ContainsRune(u.Localpart(), ':') {
			t.Fatalf("ParseUserID(%q) = %q", s, u)
		}
		v, err := ParseUserID(u.String())
		if err != nil || v != u {
			t.Fatalf("reparse of %q = %v, %v", u, v, err)
		}
	})
}

func FuzzParseRoomAlias(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		a, err := ParseRoomAlias(s)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error %v does not wrap ErrInvalid", err)
			}
			return
		}
		if a.String() != s || len(s) > MaxLength || !utf8.ValidString(s) || strings.ContainsRune(s, 0) {
			t.Fatalf("ParseRoomAlias(%q) = %q", s, a)
		}
		b, err := ParseRoomAlias(a.String())
		if err != nil || b != a {
			t.Fatalf("reparse of %q = %v, %v", a, b, err)
		}
		c, err := NewRoomAlias(a.Localpart(), a.Server())
		if err != nil || c != a {
			t.Fatalf("NewRoomAlias(%q, %q) = %v, %v", a.Localpart(), a.Server(), c, err)
		}
	})
}

func FuzzParseRoomID(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := ParseRoomID(s)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error %v does not wrap ErrInvalid", err)
			}
			return
		}
		if r.String() != s || len(s) > MaxLength || strings.ContainsAny(s, " \x00\n") {
			t.Fatalf("ParseRoomID(%q) = %q", s, r)
		}
		q, err := ParseRoomID(r.String())
		if err != nil || q != r {
			t.Fatalf("reparse of %q = %v, %v", r, q, err)
		}
		// Clients put room ids in request paths (escaped, one segment);
		// the homeserver must read back the same id.
		seg := url.PathEscape(s)
		if back, err := url.PathUnescape(seg); err != nil || back != s || strings.Contains(seg, "/") {
			t.Fatalf("room id %q as a path segment %q reads back as %q (%v)", s, seg, back, err)
		}
		// Without a server name (room version 12) there is no ':' at all;
		// with one, it is a valid server name.
		if i := strings.IndexByte(s, ':'); i >= 0 && ParseServerName(s[i+1:]) != nil {
			t.Fatalf("ParseRoomID(%q) accepted a bad server name", s)
		}
	})
}

func FuzzParseEventID(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		e, err := ParseEventID(s)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error %v does not wrap ErrInvalid", err)
			}
			return
		}
		if e.String() != s || len(s) > MaxLength || strings.ContainsAny(s, " \x00\n") {
			t.Fatalf("ParseEventID(%q) = %q", s, e)
		}
		d, err := ParseEventID(e.String())
		if err != nil || d != e {
			t.Fatalf("reparse of %q = %v, %v", e, d, err)
		}
	})
}

func FuzzParseServerName(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		err := ParseServerName(s)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error %v does not wrap ErrInvalid", err)
			}
			return
		}
		// A server name: host up to 255 bytes plus ":65535" at most, ASCII
		// without whitespace, and usable inside every id kind.
		if len(s) > 255+6 {
			t.Fatalf("ParseServerName accepted %d bytes", len(s))
		}
		for i := 0; i < len(s); i++ {
			if s[i] <= ' ' || s[i] >= 0x7f {
				t.Fatalf("ParseServerName accepted byte %#x in %q", s[i], s)
			}
		}
		if len(s) <= MaxLength-3 {
			if u, err := ParseUserID("@a:" + s); err != nil || u.Server() != s {
				t.Fatalf("server %q accepted alone but not in a user id: %v", s, err)
			}
		}
	})
}
