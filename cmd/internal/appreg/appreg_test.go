package appreg

import (
	"regexp"
	"strings"
	"testing"

	"github.com/cactus-comments/appservice/cmd/internal/envconf"
	"github.com/cactus-comments/appservice/pkg/registration"
)

var tokenRE = regexp.MustCompile(`^[0-9a-f]{64}$`)

func TestGenerateParsesAndHasFreshTokens(t *testing.T) {
	p := Params{ServerName: "example.org", GatewayURL: "http://gateway:8080/"}
	seen := map[string]bool{}
	for range 3 {
		g, err := Generate(p)
		if err != nil {
			t.Fatal(err)
		}
		y, err := g.YAML()
		if err != nil {
			t.Fatal(err)
		}
		r, err := registration.Parse(y)
		if err != nil {
			t.Fatalf("generated YAML does not parse: %v\n%s", err, y)
		}
		for _, tok := range []string{r.ASToken, r.HSToken} {
			if !tokenRE.MatchString(tok) {
				t.Fatalf("token %q is not 64 hex", tok)
			}
			if seen[tok] {
				t.Fatal("token repeated across runs")
			}
			seen[tok] = true
		}
		if r.ID != DefaultID || r.SenderLocalpart != DefaultBotLocalpart || r.URL == nil || *r.URL != "http://gateway:8080" {
			t.Fatalf("unexpected registration %+v", r)
		}
		if r.RateLimited == nil || *r.RateLimited {
			t.Fatal("rate_limited must be false")
		}
		if !strings.Contains(string(y), "rate_limited: false") {
			t.Fatalf("rate_limited not written:\n%s", y)
		}
	}
}

func TestNamespaces(t *testing.T) {
	tests := []struct {
		server, prefix, bot string
		users, notUsers     []string
		aliases, notAliases []string
	}{
		{
			server: "example.org", prefix: "comments_", bot: "cactusbot",
			users:      []string{"@cactusbot:example.org"},
			notUsers:   []string{"@cactusbot:exampleXorg", "@cactusbotx:example.org", "@alice:example.org", "@cactusbot:example.org.evil"},
			aliases:    []string{"#comments_blog:example.org", "#comments_blog_/posts/1:example.org", "#comments_x.y_z:example.org"},
			notAliases: []string{"#comments_blog:exampleXorg", "#other_blog:example.org", "#comments_blog:example.org.evil"},
		},
		{
			server: "[::1]:8448", prefix: "c-", bot: "bot.x",
			users:      []string{"@bot.x:[::1]:8448"},
			notUsers:   []string{"@botXx:[::1]:8448", "@bot.x:::1:8448"},
			aliases:    []string{"#c-site:[::1]:8448"},
			notAliases: []string{"#c-site::1:8448", "#cXsite:[::1]:8448"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.server, func(t *testing.T) {
			g, err := Generate(Params{ServerName: tt.server, Prefix: tt.prefix, BotLocalpart: tt.bot, GatewayURL: "http://gw"})
			if err != nil {
				t.Fatal(err)
			}
			y, _ := g.YAML()
			r, err := registration.Parse(y)
			if err != nil {
				t.Fatal(err)
			}
			// Full-match semantics: stricter than both the start-anchored
			// (Synapse) and the unanchored (Dendrite) readings; those are
			// covered by registration.Matcher below.
			full := func(re, s string) bool { return regexp.MustCompile(`^(?:` + re + `)$`).MatchString(s) }
			for _, u := range tt.users {
				if !full(r.Namespaces.Users[0].Regex, u) {
					t.Errorf("users regex %q does not match %q", r.Namespaces.Users[0].Regex, u)
				}
			}
			for _, u := range tt.notUsers {
				if full(r.Namespaces.Users[0].Regex, u) {
					t.Errorf("users regex %q matches %q", r.Namespaces.Users[0].Regex, u)
				}
			}
			for _, a := range tt.aliases {
				if !full(r.Namespaces.Aliases[0].Regex, a) {
					t.Errorf("alias regex %q does not match %q", r.Namespaces.Aliases[0].Regex, a)
				}
			}
			for _, a := range tt.notAliases {
				if full(r.Namespaces.Aliases[0].Regex, a) {
					t.Errorf("alias regex %q matches %q", r.Namespaces.Aliases[0].Regex, a)
				}
			}
			// The homeserver's own readings accept every intended id.
			for _, anch := range []registration.Anchoring{registration.AnchorStart, registration.Anywhere} {
				m, err := r.Compile(anch)
				if err != nil {
					t.Fatal(err)
				}
				for _, u := range tt.users {
					if ok, excl := m.User(u); !ok || !excl {
						t.Errorf("anchoring %d: %q not exclusively ours", anch, u)
					}
				}
				for _, a := range tt.aliases {
					if ok, excl := m.Alias(a); !ok || !excl {
						t.Errorf("anchoring %d: %q not exclusively ours", anch, a)
					}
				}
				if ok, _ := m.User("@alice:" + tt.server); ok {
					t.Errorf("anchoring %d: claims @alice", anch)
				}
			}
		})
	}
}

func TestEnvFileLoads(t *testing.T) {
	g, err := Generate(Params{ServerName: "example.org", GatewayURL: "http://gw:8080", HomeserverURL: "https://matrix.example.org/"})
	if err != nil {
		t.Fatal(err)
	}
	m, err := envconf.ParseFile(g.EnvFile([2]string{"CACTUS_NATS_URL", "nats://n:4222"}))
	if err != nil {
		t.Fatal(err)
	}
	c, err := envconf.Load(envconf.Map(m))
	if err != nil {
		t.Fatalf("env file does not load: %v", err)
	}
	if c.ASToken.Reveal() != g.Registration.ASToken || c.HSToken.Reveal() != g.Registration.HSToken {
		t.Fatal("tokens differ between env and registration")
	}
	if c.UserID != "@cactusbot:example.org" || c.HomeserverURL != "https://matrix.example.org" || c.AppserviceID != DefaultID || c.NATSURL != "nats://n:4222" {
		t.Fatalf("unexpected config %+v", c)
	}
	if !c.InNamespace("#comments_blog_x:example.org") || c.InNamespace("#comments_blog:exampleXorg") {
		t.Fatal("CACTUS_NAMESPACE_REGEX does not match the registration")
	}
}

func TestGenerateRejects(t *testing.T) {
	tests := []struct {
		name    string
		p       Params
		wantSub string
	}{
		{"no server", Params{GatewayURL: "http://gw"}, "server name"},
		{"bad server", Params{ServerName: "exa mple", GatewayURL: "http://gw"}, "server name"},
		{"no gateway", Params{ServerName: "x.org"}, "gateway URL"},
		{"bad gateway", Params{ServerName: "x.org", GatewayURL: "gw:8080"}, "gateway URL"},
		{"bad localpart", Params{ServerName: "x.org", GatewayURL: "http://gw", BotLocalpart: "Bot"}, "localpart"},
		{"regex prefix", Params{ServerName: "x.org", GatewayURL: "http://gw", Prefix: "c.*"}, "prefix"},
		{"bad id", Params{ServerName: "x.org", GatewayURL: "http://gw", ID: "a b"}, "id"},
		{"bad token", Params{ServerName: "x.org", GatewayURL: "http://gw", ASToken: "short"}, "as_token"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Generate(tt.p)
			if err == nil || !strings.Contains(err.Error(), tt.wantSub) {
				t.Fatalf("err = %v, want %q", err, tt.wantSub)
			}
		})
	}
}

func TestGenerateKeepsGivenTokens(t *testing.T) {
	as, _ := NewToken()
	hs, _ := NewToken()
	g, err := Generate(Params{ServerName: "x.org", GatewayURL: "http://gw", ASToken: as, HSToken: hs})
	if err != nil {
		t.Fatal(err)
	}
	if g.Registration.ASToken != as || g.Registration.HSToken != hs {
		t.Fatal("tokens not kept")
	}
}

// FuzzNamespaces: for every server name the generator accepts, the
// namespaces match exactly our ids on that server, and no id on a server
// that differs from it in one character.
func FuzzNamespaces(f *testing.F) {
	for _, s := range []string{"example.org", "[::1]:8448", "localhost:8008", "my_host.example", "1.2.3.4", "a-b.c"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, server string) {
		g, err := Generate(Params{ServerName: server, GatewayURL: "http://gw"})
		if err != nil {
			return
		}
		users := regexp.MustCompile(`^(?:` + g.Registration.Namespaces.Users[0].Regex + `)$`)
		aliases := regexp.MustCompile(`^(?:` + g.Registration.Namespaces.Aliases[0].Regex + `)$`)
		if !users.MatchString("@cactusbot:"+server) || !aliases.MatchString("#comments_site_x:"+server) {
			t.Fatalf("server %q: own ids do not match", server)
		}
		for i := range len(server) {
			other := server[:i] + "X" + server[i+1:]
			if server[i] == 'X' {
				other = server[:i] + "Y" + server[i+1:]
			}
			if users.MatchString("@cactusbot:"+other) || aliases.MatchString("#comments_site_x:"+other) {
				t.Fatalf("server %q: namespaces match %q", server, other)
			}
		}
	})
}
