package command

import (
	"slices"
	"strings"
	"testing"
	"unicode/utf8"
)

var mentions = []string{"@cactusbot:example.org", "cactusbot", "Cactus Comments"}

func TestParse(t *testing.T) {
	tests := []struct {
		name  string
		body  string
		kind  Kind
		site  string
		usage bool
	}{
		{"help", "help", Help, "", false},
		{"help upper case", "HELP", Help, "", false},
		{"help surrounded by space", "  \thelp \n", Help, "", false},
		{"help with words after", "help me please", Help, "", false},
		{"register", "register blog", Register, "blog", false},
		{"register mixed case keeps site case", "ReGiStEr MyBlog", Register, "MyBlog", false},
		{"register two spaces", "register  blog", Register, "blog", false},
		{"register tab and newline", "register\tblog\n", Register, "blog", false},
		{"register unicode space", "register\u00a0blog", Register, "blog", false},
		{"register ideographic space", "register\u3000bücher", Register, "bücher", false},
		{"register alone", "register", Register, "", true},
		{"register alone with space", "register   ", Register, "", true},
		{"register three words", "register my blog", Register, "", true},
		{"registerfoo is not register", "registerfoo bar", Unknown, "", false},
		{"register glued", "register_blog", Unknown, "", false},
		{"register invalid name still parsed", "register a_b", Register, "a_b", false},
		{"sites", "sites", Sites, "", false},
		{"sites with argument", "sites please", Sites, "", true},
		{"empty", "", Unknown, "", false},
		{"only space", " \n\t ", Unknown, "", false},
		{"chatter", "hello there", Unknown, "", false},
		{"mention by localpart", "cactusbot: register blog", Register, "blog", false},
		{"mention by id with comma", "@cactusbot:example.org, help", Help, "", false},
		{"mention by display name", "Cactus Comments: sites", Sites, "", false},
		{"mention case-insensitive", "CACTUSBOT: help", Help, "", false},
		{"mention without separator is not stripped", "cactusbot help", Unknown, "", false},
		{"mention alone", "cactusbot:", Unknown, "", false},
		{"reply fallback", "> <@cactusbot:example.org> Hello\n> more\n\nregister blog", Register, "blog", false},
		{"reply fallback only", "> quoted", Unknown, "", false},
		{"quote not a reply", ">help", Unknown, "", false},
		{"too long", "register " + strings.Repeat("a", MaxLength), Unknown, "", false},
		{"invalid utf-8", "register \xff", Unknown, "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := Parse(tt.body, mentions...)
			if c.Kind != tt.kind || c.Site != tt.site || c.Usage != tt.usage {
				t.Fatalf("Parse(%q) = %+v, want kind %v site %q usage %v", tt.body, c, tt.kind, tt.site, tt.usage)
			}
		})
	}
}

func TestKindString(t *testing.T) {
	for k, want := range map[Kind]string{Unknown: "unknown", Help: "help", Register: "register", Sites: "sites", Kind(99): "unknown"} {
		if got := k.String(); got != want {
			t.Errorf("Kind(%d).String() = %q, want %q", int(k), got, want)
		}
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"help", "register blog", "register  x", "registerfoo bar", "sites", "",
		"cactusbot: register bücher", "> <@a:b> q\n\nhelp", "register\u2003a b", "\xff\xfe",
		"Cactus Comments: help", "@cactusbot:example.org,register x",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, body string) {
		c := Parse(body, mentions...)
		switch c.Kind {
		case Unknown:
			if c.Site != "" || c.Usage || c.Args != nil {
				t.Fatalf("unknown command carries data: %+v", c)
			}
		case Register:
			if c.Usage == (c.Site != "") {
				t.Fatalf("register must have exactly one of site and usage: %+v", c)
			}
			if c.Site != "" {
				if !utf8.ValidString(c.Site) || strings.IndexFunc(c.Site, isSpace) >= 0 {
					t.Fatalf("site %q holds space or invalid UTF-8", c.Site)
				}
				if !strings.Contains(body, c.Site) {
					t.Fatalf("site %q not taken from the body %q", c.Site, body)
				}
			}
		case Help, Sites:
			if c.Site != "" {
				t.Fatalf("%v with a site: %+v", c.Kind, c)
			}
		default:
			t.Fatalf("unexpected kind %v", c.Kind)
		}
		if slices.ContainsFunc(c.Args, func(a string) bool { return a == "" }) {
			t.Fatalf("empty argument in %+v", c)
		}
	})
}

func isSpace(r rune) bool { return strings.TrimSpace(string(r)) == "" }
