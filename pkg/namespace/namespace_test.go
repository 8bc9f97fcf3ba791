package namespace

import (
	"errors"
	"strings"
	"testing"

	"golang.org/x/text/unicode/norm"

	"github.com/cactus-comments/appservice/pkg/mxid"
)

func TestParse(t *testing.T) {
	ours := Namespace{Prefix: "comments_", Server: "example.org"}
	anyServer := Namespace{Prefix: "comments_"}
	underscored := Namespace{Prefix: "comments_", Server: "my_server.example"}
	tests := []struct {
		name          string
		ns            Namespace
		alias         string
		kind          Kind
		site, section string
	}{
		{"spec example", ours, "#comments_blog.example.org_/posts/hello:example.org", Comments, "blog.example.org", "/posts/hello"},
		{"moderation", ours, "#comments_blog.example.org:example.org", Moderation, "blog.example.org", ""},
		{"section with dots and case", ours, "#comments_site_Post.HTML:example.org", Comments, "site", "Post.HTML"},
		{"unicode", ours, "#comments_café_ünï/😀:example.org", Comments, "café", "ünï/😀"},
		{"server with port", Namespace{Prefix: "comments_", Server: "example.org:8448"}, "#comments_s_x:example.org:8448", Comments, "s", "x"},
		{"ipv6 server", Namespace{Prefix: "comments_", Server: "[::1]:8448"}, "#comments_s_x:[::1]:8448", Comments, "s", "x"},
		// The original counted '_' over the whole alias: these broke it.
		{"server with underscore, comments", underscored, "#comments_blog_post:my_server.example", Comments, "blog", "post"},
		{"server with underscore, moderation", underscored, "#comments_blog:my_server.example", Moderation, "blog", ""},
		{"server with underscores, any server", anyServer, "#comments_blog_post:a_b_c.example", Comments, "blog", "post"},
		{"any server accepts others", anyServer, "#comments_s_x:other.org", Comments, "s", "x"},

		{"two underscores", ours, "#comments_a_b_c:example.org", NotOurs, "", ""},
		{"trailing underscore", ours, "#comments_a_:example.org", NotOurs, "", ""},
		{"empty site", ours, "#comments__x:example.org", NotOurs, "", ""},
		{"prefix only", ours, "#comments_:example.org", NotOurs, "", ""},
		{"other prefix", ours, "#blog_post:example.org", NotOurs, "", ""},
		{"prefix not at start", ours, "#xcomments_blog:example.org", NotOurs, "", ""},
		{"prefix case differs", ours, "#Comments_blog:example.org", NotOurs, "", ""},
		{"other server", ours, "#comments_blog_post:other.org", NotOurs, "", ""},
		{"server is a suffix", ours, "#comments_blog_post:evil-example.org", NotOurs, "", ""},
		{"server with other port", ours, "#comments_blog_post:example.org:8448", NotOurs, "", ""},
		// Characters that do not show make lookalike comment sections.
		{"right-to-left override", ours, "#comments_blog_abc\u202egpj.exe:example.org", NotOurs, "", ""},
		{"left-to-right isolate", ours, "#comments_blog_a\u2066b:example.org", NotOurs, "", ""},
		{"zero-width space", ours, "#comments_blog_po\u200bst:example.org", NotOurs, "", ""},
		{"zero-width joiner", ours, "#comments_blog_po\u200dst:example.org", NotOurs, "", ""},
		{"byte order mark", ours, "#comments_blog_\ufeffpost:example.org", NotOurs, "", ""},
		{"soft hyphen", ours, "#comments_blog_po\u00adst:example.org", NotOurs, "", ""},
		{"no-break space", ours, "#comments_blog_po\u00a0st:example.org", NotOurs, "", ""},
		{"ideographic space", ours, "#comments_blog_po\u3000st:example.org", NotOurs, "", ""},
		{"space", ours, "#comments_blog_po st:example.org", NotOurs, "", ""},
		{"Hangul filler", ours, "#comments_blog_\u3164:example.org", NotOurs, "", ""},
		{"variation selector", ours, "#comments_blog_\u2764\ufe0f:example.org", NotOurs, "", ""},
		{"combining grapheme joiner", ours, "#comments_blog_a\u034fb:example.org", NotOurs, "", ""},
		{"private use", ours, "#comments_blog_\ue000:example.org", NotOurs, "", ""},
		{"C1 control", ours, "#comments_blog_a\u0085b:example.org", NotOurs, "", ""},
		{"invisible in the site", ours, "#comments_bl\u200bog_post:example.org", NotOurs, "", ""},
		{"invisible in a moderation alias", ours, "#comments_bl\u200bog:example.org", NotOurs, "", ""},
		{"visible unicode stays", ours, "#comments_blog_\u2764:example.org", Comments, "blog", "\u2764"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := tt.ns.Parse(tt.alias)
			if err != nil {
				t.Fatalf("Parse(%q): %v", tt.alias, err)
			}
			if p.Kind != tt.kind || p.Site != tt.site || p.Section != tt.section {
				t.Fatalf("Parse(%q) = %v %q %q, want %v %q %q", tt.alias, p.Kind, p.Site, p.Section, tt.kind, tt.site, tt.section)
			}
			if p.Alias.String() != tt.alias {
				t.Fatalf("Parse(%q).Alias = %q", tt.alias, p.Alias)
			}
		})
	}
}

func TestParseInvalid(t *testing.T) {
	ns := Namespace{Prefix: "comments_", Server: "example.org"}
	for _, alias := range []string{"", "comments_a_b:example.org", "#comments_a_b", "#comments_a\x00_b:example.org", "#comments_a_b:exa mple.org", "#" + strings.Repeat("a", 300) + ":example.org"} {
		if _, err := ns.Parse(alias); !errors.Is(err, mxid.ErrInvalid) {
			t.Errorf("Parse(%q) err = %v, want mxid.ErrInvalid", alias, err)
		}
	}
}

func TestKindString(t *testing.T) {
	for k, want := range map[Kind]string{NotOurs: "not-ours", Moderation: "moderation", Comments: "comments", Kind(42): "not-ours"} {
		if k.String() != want {
			t.Errorf("Kind(%d).String() = %q, want %q", k, k.String(), want)
		}
	}
}

func TestBuildersRoundTrip(t *testing.T) {
	ns := Namespace{Prefix: "comments_", Server: "example.org"}
	if got := ns.ModerationLocalpart("blog"); got != "comments_blog" {
		t.Errorf("ModerationLocalpart = %q", got)
	}
	if got := ns.CommentsLocalpart("blog", "/p/1"); got != "comments_blog_/p/1" {
		t.Errorf("CommentsLocalpart = %q", got)
	}
	m, err := ns.ModerationAlias("blog.example.org")
	if err != nil || m.String() != "#comments_blog.example.org:example.org" {
		t.Fatalf("ModerationAlias = %v, %v", m, err)
	}
	if p := ns.ParseAlias(m); p.Kind != Moderation || p.Site != "blog.example.org" {
		t.Errorf("ParseAlias(ModerationAlias) = %+v", p)
	}
	c, err := ns.CommentsAlias("blog.example.org", "/posts/hello")
	if err != nil || c.String() != "#comments_blog.example.org_/posts/hello:example.org" {
		t.Fatalf("CommentsAlias = %v, %v", c, err)
	}
	if p := ns.ParseAlias(c); p.Kind != Comments || p.Site != "blog.example.org" || p.Section != "/posts/hello" {
		t.Errorf("ParseAlias(CommentsAlias) = %+v", p)
	}
	if _, err := ns.CommentsAlias("s", "bad\x00"); err == nil {
		t.Error("CommentsAlias accepted a NUL")
	}
}

func TestValidateSiteName(t *testing.T) {
	tests := []struct {
		site string
		why  string // substring of the refusal, "" if accepted
	}{
		{"blog", ""},
		{"blog.example.org", ""},
		{"My-Site.42", ""},
		{"café", ""},
		{"a*b.c", ""},
		{"a-b", ""},
		{"😀", ""},
		{"-.-b", ""},
		{strings.Repeat("a", MaxSiteNameLength), ""},

		{"", "empty"},
		{"bad\xffutf8", "UTF-8"},
		{strings.Repeat("a", MaxSiteNameLength+1), "longer than 100 bytes"},
		{strings.Repeat("é", MaxSiteNameLength/2+1), "longer than 100 bytes"},
		{"my_site", "“_”"},
		{"a:b", "“:”"},
		{"my site", "spaces"},
		{"my\tsite", "spaces"},
		{"my\u00a0site", "spaces"},
		{"my\x00site", "invisible"},
		{"my\x1bsite", "invisible"},
		{"my\x7fsite", "invisible"},
		{"my\ufffdsite", "invisible"},
		{"my\u202esite", "invisible"},
		{"my\u200bsite", "invisible"},
		{"my\ufe0fsite", "invisible"},
		{"#site", "“#”"},
		{"si@te", "“@”"},
		{"!site", "“!”"},
		{"$site", "“$”"},
		{"+site", "“+”"},
		{"a/b", "“/”"},
		{"a\\b", "“\\”"},
		{"a?b", "“?”"},
		{"100%", "“%”"},
		{"<mysite>", "without brackets or quotes"},
		{"a*b>c", "without brackets or quotes"},
		{`"quoted"`, "without brackets or quotes"},
		{"'q'", "without brackets or quotes"},
		{"“q”", "without brackets or quotes"},
		{"‘q’", "without brackets or quotes"},
		{".", "only punctuation"},
		{"..", "only punctuation"},
		{"-", "only punctuation"},
		{"-.*¿", "only punctuation"},
	}
	for _, tt := range tests {
		checkVerdict(t, "ValidateSiteName", tt.site, ValidateSiteName(tt.site), ErrBadSiteName, tt.why)
	}
}

// checkVerdict checks a validator's answer for s: nil when why is "",
// else an error wrapping target whose text mentions why.
func checkVerdict(t *testing.T, fn, s string, err, target error, why string) {
	t.Helper()
	switch {
	case why == "" && err != nil:
		t.Errorf("%s(%q) = %v, want nil", fn, s, err)
	case why != "" && (!errors.Is(err, target) || !strings.Contains(err.Error(), why)):
		t.Errorf("%s(%q) = %v, want a refusal (%v) mentioning %q", fn, s, err, target, why)
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"#comments_blog.example.org_/posts/hello:example.org", "#comments_a:example.org",
		"#comments_a_b_c:example.org", "#comments__:example.org", "#comments_a_b:my_server.org",
		"#x:y", "", "#comments_:example.org", "#comments_é_ü:[::1]:8448",
		"#comments_cafe\u0301_x:example.org", "#comments_s_\u0301:example.org", "#comments_s_a\u0334\u0334\u0334\u0334\u0334:example.org",
	} {
		f.Add(s)
	}
	namespaces := []Namespace{{Prefix: "comments_", Server: "example.org"}, {Prefix: "comments_"}, {Prefix: "c"}}
	f.Fuzz(func(t *testing.T, alias string) {
		for _, ns := range namespaces {
			p, err := ns.Parse(alias)
			if err != nil {
				if p.Kind != NotOurs {
					t.Fatalf("error %v with kind %v", err, p.Kind)
				}
				continue
			}
			if p.Kind == NotOurs {
				continue
			}
			if ns.Server != "" && p.Alias.Server() != ns.Server {
				t.Fatalf("%q classified %v on server %q", alias, p.Kind, p.Alias.Server())
			}
			if p.Site == "" || strings.Contains(p.Site, "_") || strings.Contains(p.Section, "_") {
				t.Fatalf("%q: site %q section %q", alias, p.Site, p.Section)
			}
			var local string
			switch p.Kind {
			case Moderation:
				local = ns.ModerationLocalpart(p.Site)
			case Comments:
				if p.Section == "" {
					t.Fatalf("%q: comments without a section", alias)
				}
				local = ns.CommentsLocalpart(p.Site, p.Section)
			}
			if local != p.Alias.Localpart() {
				t.Fatalf("%q: rebuilt localpart %q", alias, local)
			}
			// What is accepted is the one spelling of its name: composed,
			// and the same after a trip through the alias and back.
			if !norm.NFC.IsNormalString(p.Site) || !norm.NFC.IsNormalString(p.Section) {
				t.Fatalf("%q: accepted site %q section %q not in NFC", alias, p.Site, p.Section)
			}
			if p.Kind == Comments && ns.Server != "" {
				c, err := ns.CommentsAlias(p.Site, p.Section)
				if err != nil {
					t.Fatalf("%q: accepted section has no alias: %v", alias, err)
				}
				if q := ns.ParseAlias(c); q.Kind != Comments || q.Site != p.Site || q.Section != p.Section {
					t.Fatalf("%q: rebuilt alias %q parses as %+v", alias, c, q)
				}
			}
		}
	})
}

// FuzzValidateSiteName checks that every accepted site name yields valid
// aliases that parse back to the same site.
func FuzzValidateSiteName(f *testing.F) {
	for _, s := range []string{"blog", "blog.example.org", "a_b", "", "é", "e\u0301", "\u0301", "\x00", "a:b", strings.Repeat("x", 100)} {
		f.Add(s)
	}
	ns := Namespace{Prefix: "comments_", Server: "example.org"}
	f.Fuzz(func(t *testing.T, site string) {
		if ValidateSiteName(site) != nil {
			return
		}
		if !norm.NFC.IsNormalString(site) {
			t.Fatalf("accepted site %q is not in NFC", site)
		}
		m, err := ns.ModerationAlias(site)
		if err != nil {
			t.Fatalf("accepted site %q has no valid moderation alias: %v", site, err)
		}
		if p := ns.ParseAlias(m); p.Kind != Moderation || p.Site != site {
			t.Fatalf("site %q: moderation alias parses as %+v", site, p)
		}
		c, err := ns.CommentsAlias(site, "/posts/x")
		if err != nil {
			t.Fatalf("accepted site %q has no valid comments alias: %v", site, err)
		}
		if p := ns.ParseAlias(c); p.Kind != Comments || p.Site != site || p.Section != "/posts/x" {
			t.Fatalf("site %q: comments alias parses as %+v", site, p)
		}
	})
}

// Names that render alike must not name two sites or two comment
// sections: only the composed form (NFC) is accepted, and no name may
// begin with a combining mark or stack more than a few.
func TestComposition(t *testing.T) {
	ns := Namespace{Prefix: "comments_", Server: "example.org"}
	marks := func(n int) string { return strings.Repeat("\u0334", n) } // combining tilde overlay: composes with nothing
	tests := []struct {
		name  string
		site  string
		alias string
		why   string // substring of the refusal, "" if accepted
	}{
		{"composed", "café", "#comments_café_crème:example.org", ""},
		{"four marks", "a" + marks(4), "#comments_s_a" + marks(4) + ":example.org", ""},
		{"Hindi", "हिन्दी", "#comments_s_हिन्दी:example.org", ""},
		{"Vietnamese", "tiếng", "#comments_s_Việt:example.org", ""},
		{"Cyrillic lookalike is another name", "cаfe", "#comments_s_cаfe:example.org", ""},

		{"decomposed", "cafe\u0301", "#comments_s_cafe\u0301:example.org", "Normalization Form C"},
		{"decomposed site in an alias", "cafe\u0301", "#comments_cafe\u0301_x:example.org", "Normalization Form C"},
		{"leading mark", "\u0301a", "#comments_s_\u0301a:example.org", "combining mark"},
		{"only marks", "\u0301\u0302", "#comments_s_\u0301\u0302:example.org", "combining mark"},
		{"five marks", "a" + marks(5), "#comments_s_a" + marks(5) + ":example.org", "more than 4 combining marks"},
		{"many marks", "a" + marks(30), "#comments_s_a" + marks(50) + ":example.org", "more than 4 combining marks"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkVerdict(t, "ValidateSiteName", tt.site, ValidateSiteName(tt.site), ErrBadSiteName, tt.why)
			p, err := ns.Parse(tt.alias)
			if err != nil {
				t.Fatalf("Parse(%q): %v", tt.alias, err)
			}
			if tt.why == "" {
				if p.Kind != Comments || p.Refused != "" {
					t.Errorf("Parse(%q) = %+v, want a comment section", tt.alias, p)
				}
				return
			}
			if p.Kind != NotOurs || !strings.Contains(p.Refused, tt.why) {
				t.Errorf("Parse(%q) = %v, refused %q; want a refusal mentioning %q", tt.alias, p.Kind, p.Refused, tt.why)
			}
		})
	}
}

// A section id with ':' has no alias: the alias's server part starts at
// its first ':'.
func TestValidateSectionID(t *testing.T) {
	tests := []struct {
		section string
		why     string // substring of the refusal, "" if accepted
	}{
		{"/posts/hello", ""},
		{"Post.HTML", ""},
		{"été", ""},
		{"50%off?x=1#top", ""},

		{"", "empty"},
		{"a:b", "server name"},
		{"a_b", "separates the site"},
		{"po\u200bst", "invisible"},
		{"po st", "spaces"},
		{"cafe\u0301", "Normalization Form C"},
		{"bad\xff", "UTF-8"},
	}
	for _, tt := range tests {
		checkVerdict(t, "ValidateSectionID", tt.section, ValidateSectionID(tt.section), ErrBadSectionID, tt.why)
	}
	ns := Namespace{Prefix: "comments_", Server: "example.org"}
	if a, err := ns.CommentsAlias("blog", "a:b"); err == nil {
		t.Errorf("CommentsAlias with ':' in the section = %q, want an error", a)
	}
}

// Every character the rules refuse is one the descriptions list.
func TestReservedCharacters(t *testing.T) {
	for _, r := range SiteNameReserved {
		if err := ValidateSiteName("a" + string(r) + "b"); !errors.Is(err, ErrBadSiteName) {
			t.Errorf("site name with %q accepted", r)
		}
	}
	for _, r := range SectionIDReserved {
		if err := ValidateSectionID("a" + string(r) + "b"); !errors.Is(err, ErrBadSectionID) {
			t.Errorf("section id with %q accepted", r)
		}
	}
}

// FuzzValidateSectionID checks that every accepted section id is composed
// and yields an alias that parses back to the same section.
func FuzzValidateSectionID(f *testing.F) {
	for _, s := range []string{"/posts/hello", "a:b", "a_b", "", "e\u0301", "\u0301", "po\u200bst", "50%off?x=1#top"} {
		f.Add(s)
	}
	ns := Namespace{Prefix: "comments_", Server: "example.org"}
	f.Fuzz(func(t *testing.T, section string) {
		if ValidateSectionID(section) != nil {
			return
		}
		if !norm.NFC.IsNormalString(section) {
			t.Fatalf("accepted section %q is not in NFC", section)
		}
		c, err := ns.CommentsAlias("blog", section)
		if err != nil {
			if len("#comments_blog_"+section+":example.org") > mxid.MaxLength {
				return
			}
			t.Fatalf("accepted section %q has no alias: %v", section, err)
		}
		if p := ns.ParseAlias(c); p.Kind != Comments || p.Site != "blog" || p.Section != section || p.Refused != "" {
			t.Fatalf("section %q: alias %q parses as %+v", section, c, p)
		}
	})
}
