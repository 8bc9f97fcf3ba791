package botworker

import (
	"encoding/json"
	"errors"
	"fmt"
	"html"
	"strings"

	"github.com/cactus-comments/appservice/pkg/matrix"
	"github.com/cactus-comments/appservice/pkg/namespace"
	"github.com/cactus-comments/appservice/pkg/registry"
)

// message is what the bot says: a plain-text body every client shows, and
// optionally an HTML rendering of the same text.
type message struct {
	Body string
	HTML string
}

// texts writes the bot's messages. Everything a message mentions about this
// deployment (server name, public homeserver URL, alias namespace, limits)
// comes from here so that the facts are the same in every message.
type texts struct {
	ServerName   string
	PublicURL    string // homeserver URL web browsers use
	Namespace    namespace.Namespace
	Limit        int
	DocsURL      string
	ClientScript string
	ClientStyle  string
}

const (
	defaultDocsURL      = "https://cactus.chat/docs/getting-started/quick-start/"
	defaultClientScript = "https://latest.cactus.chat/cactus.js"
	defaultClientStyle  = "https://latest.cactus.chat/style.css"
)

func (t *texts) help() message {
	body := strings.Join([]string{
		"Hi! I run comment sections for websites. The comments of each web page live in a Matrix room on " + t.ServerName + ", so anyone with a Matrix account (or as a guest) can join the discussion, and you moderate it from any Matrix client.",
		"",
		"To get started, choose a short name for your website and send:",
		"    register <sitename>",
		"The name may use letters, digits and punctuation such as . or -, but no spaces and none of these characters: " + charList(namespace.SiteNameReserved) + " (type the name without brackets or quotes). I will create a moderation room for the site, invite you to it as its administrator, and send you the snippet to paste into your web pages.",
		"",
		"Other commands:",
		"    sites    lists the sites you have registered",
		"    help     shows this message",
		"",
		"Embedding the comment section in a page is documented at " + t.DocsURL,
	}, "\n")
	return message{Body: body}
}

func (t *texts) registerUsage() message {
	return message{Body: "To register a site, send exactly two words: register <sitename>\nFor example: register myblog"}
}

func (t *texts) sitesUsage() message {
	return message{Body: "The sites command takes no arguments: send just \"sites\" to see the sites you own."}
}

func (t *texts) unknownHint() message {
	return message{Body: "I did not understand that. Send \"help\" to see what I can do."}
}

// invalidName explains why ValidateSiteName refused name.
func (t *texts) invalidName(name string, err error) message {
	why := err.Error()
	why = strings.TrimPrefix(why, namespace.ErrBadSiteName.Error()+": ")
	return message{Body: fmt.Sprintf("I cannot register %s: %s. Please choose another name.", namespace.Quote(name), why)}
}

func (t *texts) taken(site string) message {
	return message{Body: fmt.Sprintf("The site name %s is already taken on %s. Please choose another name.", namespace.Quote(site), t.ServerName)}
}

func (t *texts) alreadyYours(site string) message {
	return message{Body: fmt.Sprintf("You have already registered %s; its moderation room is %s. Send \"sites\" to list your sites.", namespace.Quote(site), t.moderationAlias(site))}
}

func (t *texts) limitReached(site string) message {
	return message{Body: fmt.Sprintf("I cannot register %s: you already have %d sites, which is the most one person may register here. Ask the administrator of %s if you need more.", namespace.Quote(site), t.Limit, t.ServerName)}
}

// homeserverRefused reports a createRoom error the homeserver gave, with
// its message (never anything of ours, such as a token).
func (t *texts) homeserverRefused(site string, err error) message {
	return message{Body: fmt.Sprintf("The homeserver would not create the moderation room for %s: %s", namespace.Quote(site), homeserverMessage(err))}
}

func (t *texts) homeserverUnavailable(site string) message {
	return message{Body: fmt.Sprintf("I could not reach the homeserver to register %s, even after several attempts. Please try again in a few minutes.", namespace.Quote(site))}
}

// charList lists characters for a reader, separated by spaces: quoting
// them would be ambiguous, as quotes are among them.
func charList(chars string) string {
	return strings.Join(strings.Split(chars, ""), " ")
}

func (t *texts) moderationAlias(site string) string {
	return "#" + t.Namespace.ModerationLocalpart(site) + ":" + t.ServerName
}

// snippet is the HTML that embeds the Cactus web client in a page, with
// this deployment's values filled in. Values are written as JSON strings,
// which are valid JavaScript literals and, with Go's HTML-safe escaping of
// '<', '>' and '&', cannot end the script element early.
func (t *texts) snippet(site string) string {
	js := func(s string) string {
		b, _ := json.Marshal(s)
		return string(b)
	}
	return strings.Join([]string{
		`<script type="text/javascript" src="` + t.ClientScript + `"></script>`,
		`<link rel="stylesheet" href="` + t.ClientStyle + `" type="text/css">`,
		`<div id="comment-section"></div>`,
		`<script>`,
		`initComments({`,
		`  node: document.getElementById("comment-section"),`,
		`  defaultHomeserverUrl: ` + js(t.PublicURL) + `,`,
		`  serverName: ` + js(t.ServerName) + `,`,
		`  siteName: ` + js(site) + `,`,
		`  commentSectionId: "my-first-post"`,
		`})`,
		`</script>`,
	}, "\n")
}

func (t *texts) created(site string) message {
	alias := t.moderationAlias(site)
	snippet := t.snippet(site)
	intro := fmt.Sprintf("Done: the site %s is registered. I have invited you to its moderation room %s, where you are administrator (power level 100).", namespace.Quote(site), alias)
	howto := "To show comments on a web page, paste this where the comments should appear:"
	section := "Give every page its own commentSectionId (for example the page's slug), without spaces and without any of these characters: " + charList(namespace.SectionIDReserved) + "\n" +
		"Each id gets its own comment room, " + "#" + t.Namespace.CommentsLocalpart(site, "<commentSectionId>") + ":" + t.ServerName +
		", created the first time someone opens the page."
	more := "More options of the web client are described at " + t.DocsURL
	body := intro + "\n\n" + howto + "\n\n" + snippet + "\n\n" + section + "\n" + more
	h := html.EscapeString
	htmlBody := "<p>" + h(intro) + "</p><p>" + h(howto) + "</p><pre><code class=\"language-html\">" + h(snippet) +
		"</code></pre><p>" + h(section) + "<br>" + h(more) + "</p>"
	return message{Body: body, HTML: htmlBody}
}

// moderationIntro is posted in a new moderation room.
func (t *texts) moderationIntro(site, owner string) message {
	body := strings.Join([]string{
		fmt.Sprintf("This is the moderation room of the site %s, registered by %s.", namespace.Quote(site), owner),
		"",
		"How moderation works:",
		"- Every comment section of the site is a room of its own, with the alias #" + t.Namespace.CommentsLocalpart(site, "<section>") + ":" + t.ServerName + ".",
		"- Power levels set here apply to every comment section: raise someone to 50 to make them a moderator, or to 100 to make them an administrator. I copy every change to all comment rooms.",
		"- Banning someone here bans them from every comment section of the site, and lifting the ban here lifts it everywhere.",
		"- Banning someone in a comment section also bans them here, and so from the whole site.",
		"- Moderators can remove single comments directly in the comment section's room.",
		"",
		"Please keep me in this room with my power level: I need it to apply your moderation to the comment sections.",
	}, "\n")
	return message{Body: body}
}

func (t *texts) sites(sites []*registry.Site) message {
	if len(sites) == 0 {
		return message{Body: "You have not registered any sites yet. Send \"register <sitename>\" to create one."}
	}
	var b strings.Builder
	if len(sites) == 1 {
		b.WriteString("You own 1 site:")
	} else {
		fmt.Fprintf(&b, "You own %d sites:", len(sites))
	}
	for _, s := range sites {
		fmt.Fprintf(&b, "\n- %s (moderation room %s)", s.Name, t.moderationAlias(s.Name))
	}
	return message{Body: b.String()}
}

// homeserverMessage extracts what the homeserver said from a client error.
func homeserverMessage(err error) string {
	var e *matrix.Error
	if !errors.As(err, &e) {
		return "no usable answer"
	}
	switch {
	case e.Message != "" && e.ErrCode != "":
		return e.Message + " (" + e.ErrCode + ")"
	case e.Message != "":
		return e.Message
	case e.ErrCode != "":
		return e.ErrCode
	}
	return fmt.Sprintf("HTTP status %d", e.Status)
}

func (t *texts) followingUpgrade(site string) message {
	return message{Body: fmt.Sprintf("Thanks for the invite. I moderate %s from this room now: power levels and bans set here apply to all of its comment sections.", site)}
}
