// Package command parses what a site owner types to the bot.
//
// A command is a sequence of words separated by any Unicode white space.
// The first word names the command and is matched without regard to case;
// the arguments keep their case. An optional leading mention of the bot
// ("Cactus Comments: help", "@cactusbot:example.org, help") is dropped, so
// the bot can be addressed in rooms with other people in them, and a reply
// fallback (the quoted lines a client puts before a reply) is ignored.
package command

import (
	"strings"
	"unicode"
	"unicode/utf8"
)

// Kind is the command a message asks for.
type Kind int

const (
	// Unknown is anything that is not a command. In a direct chat the bot
	// answers it with a hint; elsewhere it stays silent.
	Unknown Kind = iota
	// Help asks what the bot does.
	Help
	// Register asks for a new site; Site holds the name as typed.
	Register
	// Sites asks for the sites the sender owns.
	Sites
)

func (k Kind) String() string {
	switch k {
	case Help:
		return "help"
	case Register:
		return "register"
	case Sites:
		return "sites"
	default:
		return "unknown"
	}
}

// Command is a parsed message.
type Command struct {
	Kind Kind
	// Site is the site name of a well-formed Register.
	Site string
	// Usage is set when the command word was recognised but its arguments
	// were not: the bot answers with the command's usage instead of
	// running it.
	Usage bool
	// Args are the words after the command word.
	Args []string
}

// MaxLength bounds the text looked at. Commands are a few words; a long
// message is a comment or a paste, not a command, and scanning it is waste.
const MaxLength = 1024

// Parse reads a message body. mentions are the ways the bot may be
// addressed at the start of a message (user id, localpart, display name);
// a mention followed by ':' or ',' is skipped.
func Parse(body string, mentions ...string) Command {
	body = stripReplyFallback(body)
	if len(body) > MaxLength || !utf8.ValidString(body) {
		return Command{Kind: Unknown}
	}
	body = strings.TrimLeftFunc(body, unicode.IsSpace)
	body = stripMention(body, mentions)
	words := strings.Fields(body)
	if len(words) == 0 {
		return Command{Kind: Unknown}
	}
	c := Command{Args: words[1:]}
	switch strings.ToLower(words[0]) {
	case "help":
		c.Kind = Help
	case "register":
		c.Kind = Register
		if len(c.Args) == 1 {
			c.Site = c.Args[0]
		} else {
			c.Usage = true
		}
	case "sites":
		c.Kind = Sites
		c.Usage = len(c.Args) != 0
	default:
		return Command{Kind: Unknown}
	}
	return c
}

// stripMention removes one leading "<mention>:" or "<mention>,".
func stripMention(body string, mentions []string) string {
	for _, m := range mentions {
		if m == "" || len(body) <= len(m) {
			continue
		}
		if !strings.EqualFold(body[:len(m)], m) {
			continue
		}
		rest := body[len(m):]
		if rest[0] == ':' || rest[0] == ',' {
			return strings.TrimLeftFunc(rest[1:], unicode.IsSpace)
		}
	}
	return body
}

// stripReplyFallback drops the quoted lines ("> ...") that clients put at
// the start of a reply's body, and the blank line after them.
func stripReplyFallback(body string) string {
	if !strings.HasPrefix(body, "> ") && !strings.HasPrefix(body, ">\n") && body != ">" {
		return body
	}
	rest := body
	for {
		line, after, found := strings.Cut(rest, "\n")
		if !strings.HasPrefix(line, ">") {
			return rest
		}
		if !found {
			return ""
		}
		rest = after
	}
}
