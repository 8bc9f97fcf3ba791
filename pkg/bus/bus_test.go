package bus

import (
	"encoding/json"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/cactus-comments/appservice/pkg/event"
)

// subjectToken is what a single NATS subject token may hold; kvKey is
// JetStream's key-value key grammar.
var (
	subjectToken = regexp.MustCompile(`^[^.*>\s]+$`)
	kvKey        = regexp.MustCompile(`^[-/_=.a-zA-Z0-9]+$`)
)

var hostile = []string{
	"", ".", "..", "*", ">", " ", "\t", "\n", ":", "!", "a.b", "a*b", "a>b", "a b",
	"!room:example.org", "!Ab3.*>:[::1]:8448", "@user.name:example.org", "blog.example.org",
	"café ☕", "日本語", "\x00", "\xff\xfe", "=", "==", "-", "_", "foo", "foobar",
	strings.Repeat("x", 300),
}

func TestTokenRoundTrip(t *testing.T) {
	seen := map[string]string{}
	for _, s := range hostile {
		tok := Token(s)
		if !subjectToken.MatchString(tok) {
			t.Errorf("Token(%q) = %q is not one subject token", s, tok)
		}
		if !kvKey.MatchString(tok) || strings.Contains(tok, ".") {
			t.Errorf("Token(%q) = %q is not a key-value key part", s, tok)
		}
		got, err := ParseToken(tok)
		if err != nil || got != s {
			t.Errorf("ParseToken(Token(%q)) = %q, %v", s, got, err)
		}
		if prev, dup := seen[tok]; dup {
			t.Errorf("Token(%q) == Token(%q) == %q", s, prev, tok)
		}
		seen[tok] = s
	}
}

func TestParseTokenRejects(t *testing.T) {
	for _, tok := range []string{
		"", "a.b", "*", ">", "QQ\n", "Q\r\nQ", "QQ==", "Zm9v YmFy", "Zm9v+", "Zm9v/",
		"QR", // decodes to "A" leniently: not what Token("A") gives
		"Q",  // impossible length
		"==",
	} {
		if s, err := ParseToken(tok); err == nil {
			t.Errorf("ParseToken(%q) = %q, want an error", tok, s)
		}
	}
}

func FuzzToken(f *testing.F) {
	for _, s := range hostile {
		f.Add(s)
	}
	f.Add("QR")
	f.Add("QQ\n")
	f.Fuzz(func(t *testing.T, s string) {
		tok := Token(s)
		if !subjectToken.MatchString(tok) || !kvKey.MatchString(tok) || strings.Contains(tok, ".") {
			t.Fatalf("Token(%q) = %q is not subject and key safe", s, tok)
		}
		if got, err := ParseToken(tok); err != nil || got != s {
			t.Fatalf("ParseToken(Token(%q)) = %q, %v", s, got, err)
		}
		// Read the input as a token too: whatever parses must be canonical.
		if got, err := ParseToken(s); err == nil && Token(got) != s {
			t.Fatalf("ParseToken(%q) = %q, but Token of that is %q", s, got, Token(got))
		}
	})
}

func TestSubjects(t *testing.T) {
	for _, room := range hostile {
		for _, c := range []Class{ClassBot, ClassModeration, ClassOther} {
			subj := EventSubject(c, room)
			parts := strings.Split(subj, ".")
			if len(parts) != 4 || parts[0] != "cactus" || parts[1] != "ev" || parts[2] != string(c) {
				t.Fatalf("EventSubject(%s, %q) = %q", c, room, subj)
			}
			if !strings.HasPrefix(subj, strings.TrimSuffix(EventFilter(c), ">")) {
				t.Fatalf("EventSubject %q not under filter %q", subj, EventFilter(c))
			}
			got, err := RoomFromEventSubject(subj)
			if err != nil || got != room {
				t.Fatalf("RoomFromEventSubject(%q) = %q, %v, want %q", subj, got, err, room)
			}
			stored := (Topology{}).StoredSubject(c, room)
			if got, err := RoomFromEventSubject(stored); err != nil || got != room {
				t.Fatalf("RoomFromEventSubject(%q) = %q, %v, want %q", stored, got, err, room)
			}
			if !strings.HasPrefix(stored, strings.TrimSuffix(EventFilter(c), ">")) {
				t.Fatalf("stored subject %q not under filter %q", stored, EventFilter(c))
			}
		}
		g := (Topology{}).BotGroup()
		stored := (Topology{}).StoredSubject(ClassBot, room)
		if p := PartitionOf(room, g.Partitions); !strings.HasPrefix(stored, strings.TrimSuffix(g.Filter(p), ">")) {
			t.Fatalf("stored subject %q not under its partition's filter %q", stored, g.Filter(p))
		}
		job := JobSubject("ban", room, room)
		if parts := strings.Split(job, "."); len(parts) != 5 || parts[2] != "ban" {
			t.Fatalf("JobSubject = %q", job)
		}
		if parts := strings.Split(DLQSubject(room), "."); len(parts) != 3 || parts[1] != "dlq" {
			t.Fatalf("DLQSubject(%q) = %q", room, DLQSubject(room))
		}
	}
	for _, bad := range []string{
		"", "cactus.ev.bot", "cactus.ev.bot.a.b", "cactus.job.bot.QQ", "nats.ev.bot.QQ", "cactus.ev.bot.Q", "cactus.ev.bot.a*",
		"cactus.ev..QQ", "cactus.ev.bot.03.QQ", "cactus.ev.bot.-1.QQ", "cactus.ev.bot.+1.QQ", "cactus.ev.bot..QQ",
		"cactus.ev.bot.1.2.QQ", "cactus.ev.bot.1.QQ.", "cactus.ev.bot.9999999999.QQ", "cactus.ev.bot.1.Q",
	} {
		if r, err := RoomFromEventSubject(bad); err == nil {
			t.Errorf("RoomFromEventSubject(%q) = %q, want an error", bad, r)
		}
	}
}

// FuzzRoomFromEventSubject: a subject the parser accepts is exactly what
// the gateway publishes or the event stream stores for that room, so no
// two subjects name the same room in one partition.
func FuzzRoomFromEventSubject(f *testing.F) {
	for _, room := range hostile {
		f.Add(EventSubject(ClassBot, room))
		f.Add((Topology{}).StoredSubject(ClassBot, room))
	}
	f.Add("cactus.ev.bot.03.QQ")
	f.Add("cactus.ev.bot.7.QQ")
	f.Fuzz(func(t *testing.T, subject string) {
		room, err := RoomFromEventSubject(subject)
		if err != nil {
			return
		}
		parts := strings.Split(subject, ".")
		c := Class(parts[2])
		want := EventSubject(c, room)
		if len(parts) == 5 {
			want = "cactus.ev." + string(c) + "." + parts[3] + "." + Token(room)
			if n, err := strconv.Atoi(parts[3]); err != nil || strconv.Itoa(n) != parts[3] {
				t.Fatalf("accepted partition %q is not canonical", parts[3])
			}
		}
		if subject != want {
			t.Fatalf("RoomFromEventSubject(%q) = %q, but that room's subject is %q", subject, room, want)
		}
	})
}

func TestClassify(t *testing.T) {
	const bot = "@cactusbot:example.org"
	member := func(sender, target, membership string) *event.Event {
		content, _ := json.Marshal(map[string]string{"membership": membership})
		return &event.Event{EventID: "$e", Type: "m.room.member", RoomID: "!r:x", Sender: sender, StateKey: &target, Content: content}
	}
	plain := func(typ, stateKey string) *event.Event {
		e := &event.Event{EventID: "$e", Type: typ, RoomID: "!r:x", Sender: "@mod:x", Content: []byte(`{}`)}
		if stateKey != "-" {
			e.StateKey = &stateKey
		}
		return e
	}
	tests := []struct {
		name string
		ev   *event.Event
		want Class
		// ours is the class in one of our comment or moderation rooms;
		// "" for want.
		ours Class
	}{
		{"invite to the bot", member("@owner:x", bot, "invite"), ClassBot, ""},
		{"bot joins", member(bot, bot, "join"), ClassBot, ""},
		{"bot leaves", member(bot, bot, "leave"), ClassBot, ""},
		{"bot kicked", member("@owner:x", bot, "leave"), ClassBot, ""},
		{"bot banned", member("@owner:x", bot, "ban"), ClassBot, ""},
		{"ban", member("@mod:x", "@troll:x", "ban"), ClassModeration, ""},
		{"self-ban is still a ban", member("@troll:x", "@troll:x", "ban"), ClassModeration, ""},
		{"unban (leave by other)", member("@mod:x", "@troll:x", "leave"), ClassModeration, ""},
		{"self-leave", member("@visitor:x", "@visitor:x", "leave"), ClassOther, ""},
		{"join", member("@visitor:x", "@visitor:x", "join"), ClassOther, ""},
		{"invite to someone else", member("@owner:x", "@friend:x", "invite"), ClassOther, ""},
		{"knock", member("@visitor:x", "@visitor:x", "knock"), ClassOther, ""},
		{"member without state_key", plain("m.room.member", "-"), ClassOther, ""},
		// Content no membership can be read from goes to the moderation
		// consumer, which dead-letters it with its reason: taken as "not
		// a ban" it would vanish unseen.
		{"member with bad content", &event.Event{Type: "m.room.member", Sender: "@mod:x", StateKey: ptr("@t:x"), Content: []byte(`"ban"`)}, ClassModeration, ""},
		{"membership that is no string", &event.Event{Type: "m.room.member", Sender: "@mod:x", StateKey: ptr("@t:x"), Content: []byte(`{"membership":["ban"]}`)}, ClassModeration, ""},
		{"no membership", &event.Event{Type: "m.room.member", Sender: "@t:x", StateKey: ptr("@t:x"), Content: []byte(`{}`)}, ClassModeration, ""},
		{"ban whose reason is no string", &event.Event{Type: "m.room.member", Sender: "@mod:x", StateKey: ptr("@t:x"), Content: []byte(`{"membership":"ban","reason":7}`)}, ClassModeration, ""},
		{"unban whose reason is no string", &event.Event{Type: "m.room.member", Sender: "@mod:x", StateKey: ptr("@t:x"), Content: []byte(`{"membership":"leave","reason":{"a":1}}`)}, ClassModeration, ""},
		{"join whose displayname is no string", &event.Event{Type: "m.room.member", Sender: "@t:x", StateKey: ptr("@t:x"), Content: []byte(`{"membership":"join","displayname":5}`)}, ClassOther, ""},
		{"power levels", plain("m.room.power_levels", ""), ClassModeration, ""},
		{"canonical alias", plain("m.room.canonical_alias", ""), ClassModeration, ""},
		{"message (a command in a direct chat; a comment in our rooms)", plain("m.room.message", "-"), ClassBot, ClassOther},
		{"topic", plain("m.room.topic", ""), ClassOther, ""},
		{"create", plain("m.room.create", ""), ClassOther, ""},
		{"reaction", plain("m.reaction", "-"), ClassOther, ""},
		{"redaction", plain("m.room.redaction", "-"), ClassOther, ""},
		{"empty type", plain("", "-"), ClassOther, ""},
		{"bot's own ban (propagation echo)", member(bot, "@troll:x", "ban"), ClassOther, ""},
		{"bot's own unban (propagation echo)", member(bot, "@troll:x", "leave"), ClassOther, ""},
		{"bot's own power levels", func() *event.Event { e := plain("m.room.power_levels", ""); e.Sender = bot; return e }(), ClassOther, ""},
		{"tombstone (room upgraded)", plain("m.room.tombstone", ""), ClassModeration, ""},
		{"tombstone with a state key is not the room's", plain("m.room.tombstone", "x"), ClassOther, ""},
		{"tombstone the bot sent (an upgrade made with the as_token)", func() *event.Event { e := plain("m.room.tombstone", ""); e.Sender = bot; return e }(), ClassModeration, ""},
		{"bot's own message (its replies: the bot worker reads none)", func() *event.Event { e := plain("m.room.message", "-"); e.Sender = bot; return e }(), ClassOther, ""},
	}
	for _, tt := range tests {
		got := Classify(tt.ev, bot)
		if got != tt.want {
			t.Errorf("%s: Classify = %s, want %s", tt.name, got, tt.want)
		}
		want := tt.ours
		if want == "" {
			want = tt.want
		}
		if in := InOurRoom(got, tt.ev.Type); in != want {
			t.Errorf("%s: in our room = %s, want %s", tt.name, in, want)
		}
	}
	for c, stored := range map[Class]bool{ClassBot: true, ClassModeration: true, ClassOther: false} {
		if c.Stored() != stored {
			t.Errorf("%s.Stored() = %v, want %v", c, c.Stored(), stored)
		}
	}
}

func ptr(s string) *string { return &s }
