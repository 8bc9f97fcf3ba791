package registration

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const good = `id: cactus-comments
url: http://gateway:8080
as_token: astoken
hs_token: hstoken
sender_localpart: cactusbot
rate_limited: false
some_future_key: tolerated
namespaces:
  users:
    - exclusive: true
      regex: "@cactusbot:example\\.org"
  aliases:
    - exclusive: true
      regex: "#comments_.*"
`

func TestParse(t *testing.T) {
	tests := []struct {
		name    string
		doc     string
		wantErr string
		check   func(t *testing.T, r *Registration)
	}{
		{name: "recommended file", doc: good, check: func(t *testing.T, r *Registration) {
			if r.ID != "cactus-comments" || r.URL == nil || *r.URL != "http://gateway:8080" || r.SenderLocalpart != "cactusbot" {
				t.Fatalf("fields: %+v", r)
			}
			if r.RateLimitedOrDefault() {
				t.Fatal("rate_limited: false not honoured")
			}
			if len(r.Namespaces.Aliases) != 1 || !r.Namespaces.Aliases[0].Exclusive || r.Namespaces.Aliases[0].Regex != "#comments_.*" {
				t.Fatalf("aliases: %+v", r.Namespaces.Aliases)
			}
		}},
		{name: "explicit null url", doc: strings.Replace(good, "url: http://gateway:8080", "url: null", 1), check: func(t *testing.T, r *Registration) {
			if r.URL != nil {
				t.Fatal("url should be nil")
			}
			if !strings.Contains(string(mustMarshal(t, r)), "url: null") {
				t.Fatal("marshal lost the explicit null")
			}
		}},
		{name: "json document", doc: `{"id":"a","url":"http://x","as_token":"a","hs_token":"h","sender_localpart":"b","namespaces":{"users":[{"exclusive":false,"regex":"@b_.*"}]}}`, check: func(t *testing.T, r *Registration) {
			if !r.RateLimitedOrDefault() {
				t.Fatal("default must be rate limited")
			}
		}},
		{name: "missing url", doc: strings.Replace(good, "url: http://gateway:8080\n", "", 1), wantErr: "url is required"},
		{name: "url not a string", doc: strings.Replace(good, "url: http://gateway:8080", "url: [1]", 1), wantErr: "url must be"},
		{name: "missing id", doc: strings.Replace(good, "id: cactus-comments\n", "", 1), wantErr: "id is required"},
		{name: "missing as_token", doc: strings.Replace(good, "as_token: astoken\n", "", 1), wantErr: "as_token is required"},
		{name: "same tokens", doc: strings.Replace(good, "hs_token: hstoken", "hs_token: astoken", 1), wantErr: "must differ"},
		{name: "bad regex", doc: strings.Replace(good, `"#comments_.*"`, `"#comments_(("`, 1), wantErr: "regex"},
		{name: "exclusive missing", doc: strings.Replace(good, "    - exclusive: true\n      regex: \"#comments_.*\"", "    - regex: \"#comments_.*\"", 1), wantErr: "exclusive must be"},
		{name: "not yaml", doc: "id: [", wantErr: "invalid"},
		{name: "empty", doc: "", wantErr: "empty document"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r, err := Parse([]byte(tc.doc))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !errors.Is(err, ErrInvalid) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, r)
		})
	}
}

func mustMarshal(t *testing.T, r *Registration) []byte {
	t.Helper()
	b, err := r.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestRoundTripAndLoad(t *testing.T) {
	r, err := Parse([]byte(good))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "reg.yaml")
	if err := os.WriteFile(path, mustMarshal(t, r), 0o600); err != nil {
		t.Fatal(err)
	}
	back, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if back.ID != r.ID || *back.URL != *r.URL || back.Namespaces.Users[0] != r.Namespaces.Users[0] || *back.RateLimited != false {
		t.Fatalf("round trip changed it: %+v", back)
	}
	if _, err := Load(filepath.Join(t.TempDir(), "missing.yaml")); err == nil {
		t.Fatal("missing file must fail")
	}
}

func TestMatcherAnchoring(t *testing.T) {
	r := &Registration{Namespaces: Namespaces{
		Users:   []Namespace{{Exclusive: true, Regex: `@bot:example\.org`}, {Exclusive: false, Regex: `@shared_.*`}},
		Aliases: []Namespace{{Exclusive: true, Regex: `#comments_.*`}},
		Rooms:   []Namespace{{Regex: `!abc:example\.org`}},
	}}
	tests := []struct {
		name             string
		anchor           Anchoring
		kind             string
		id               string
		match, exclusive bool
	}{
		{"synapse exact", AnchorStart, "user", "@bot:example.org", true, true},
		{"synapse prefix only", AnchorStart, "user", "@bot:example.org.evil", true, true},
		{"synapse not in middle", AnchorStart, "user", "@robot@bot:example.org", false, false},
		{"dendrite in middle", Anywhere, "user", "@robot@bot:example.org", true, true},
		{"non exclusive", AnchorStart, "user", "@shared_1:x", true, false},
		{"alias", AnchorStart, "alias", "#comments_blog_x:example.org", true, true},
		{"alias other", AnchorStart, "alias", "#other:example.org", false, false},
		{"alias anywhere", Anywhere, "alias", "#a#comments_:x", true, true},
		{"room", AnchorStart, "room", "!abc:example.org", true, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m, err := r.Compile(tc.anchor)
			if err != nil {
				t.Fatal(err)
			}
			var got, excl bool
			switch tc.kind {
			case "user":
				got, excl = m.User(tc.id)
			case "alias":
				got, excl = m.Alias(tc.id)
			case "room":
				got, excl = m.Room(tc.id)
			}
			if got != tc.match || excl != tc.exclusive {
				t.Fatalf("got (%v,%v), want (%v,%v)", got, excl, tc.match, tc.exclusive)
			}
		})
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(good))
	f.Add([]byte("url: null\n"))
	f.Add([]byte(`{"id":"a","url":null,"as_token":"a","hs_token":"h","sender_localpart":"b","namespaces":{"users":[{"exclusive":true,"regex":"("}]}}`))
	f.Add([]byte("namespaces: {users: 3}\nurl: x"))
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := Parse(data)
		if err != nil {
			return
		}
		// Whatever parses must survive a write and a re-read unchanged in
		// the fields a homeserver uses.
		out, err := r.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		back, err := Parse(out)
		if err != nil {
			t.Fatalf("re-parse of marshalled registration failed: %v\n%s", err, out)
		}
		if back.ID != r.ID || back.ASToken != r.ASToken || (back.URL == nil) != (r.URL == nil) {
			t.Fatalf("round trip changed fields")
		}
		if _, err := r.Compile(AnchorStart); err != nil {
			t.Fatalf("validated registration does not compile: %v", err)
		}
	})
}
