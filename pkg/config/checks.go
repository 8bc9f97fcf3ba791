package config

import (
	"cmp"
	"fmt"
	"net"
	"net/url"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"unicode"

	"github.com/cactus-comments/appservice/pkg/mxid"
)

// Problem is one thing wrong with one variable.
type Problem struct {
	// Var is the variable's full name, CACTUS_....
	Var string
	// Why says what is wrong; it never quotes a secret.
	Why string
}

func (p Problem) Error() string { return p.Var + ": " + p.Why }

// Problems is everything wrong with a configuration, at most one problem
// per variable, in the order the variables are declared. Its Error is one
// line per problem.
type Problems []Problem

func (ps Problems) Error() string {
	lines := make([]string, len(ps))
	for i, p := range ps {
		lines[i] = p.Error()
	}
	return strings.Join(lines, "\n")
}

// collector gathers problems so that one run reports all of them: an
// operator fixes a configuration in one attempt, not one per variable.
type collector struct {
	ps Problems
}

// add records a problem of the variable Prefix_key, unless that variable
// already has one: the first reason is the one worth fixing.
func (c *collector) add(key, format string, args ...any) {
	if c.has(key) {
		return
	}
	c.ps = append(c.ps, Problem{Var: Prefix + "_" + key, Why: fmt.Sprintf(format, args...)})
}

func (c *collector) has(key string) bool {
	return slices.ContainsFunc(c.ps, func(p Problem) bool { return p.Var == Prefix+"_"+key })
}

func (c *collector) err() error {
	if len(c.ps) == 0 {
		return nil
	}
	order := map[string]int{}
	vars, _ := Variables()
	for i, v := range vars {
		order[v.Name] = i
	}
	ps := slices.Clone(c.ps)
	slices.SortStableFunc(ps, func(a, b Problem) int { return cmp.Compare(order[a.Var], order[b.Var]) })
	return ps
}

// checks are the validations a field names in its `check` tag, as
// `check:"name"` or `check:"name=argument"`. Each gets the field (settable,
// so a check may normalise the value) and says what is wrong, or "". A new
// variable usually needs only a tag naming one of these.
var checks = map[string]func(f reflect.Value, arg string) string{
	"token":    func(f reflect.Value, _ string) string { return checkToken(f.String()) },
	"secret":   func(f reflect.Value, _ string) string { return checkSecret(f.String()) },
	"httpurl":  checkHTTPURL,
	"natsurls": func(f reflect.Value, _ string) string { return checkNATSURLs(f.String()) },
	"mxc":      func(f reflect.Value, _ string) string { return checkMXC(f.String()) },
	"addr":     func(f reflect.Value, _ string) string { return checkAddr(f.String()) },
	"positive": checkPositive,
	"oneof":    checkOneOf,
}

// MinTokenLength is the shortest appservice token accepted. cactusctl
// registration makes 64 hex characters (256 bits); 32 still leaves far more
// than can be guessed.
const MinTokenLength = 32

// placeholders are the words example files and manifests put where a
// secret belongs. A value containing one was never replaced.
var placeholders = []string{"replace_me", "replace-me", "replaceme", "changeme", "change_me", "change-me", "placeholder"}

func isPlaceholder(s string) bool {
	l := strings.ToLower(s)
	return slices.ContainsFunc(placeholders, func(p string) bool { return strings.Contains(l, p) })
}

// checkToken refuses appservice tokens that were never set for real:
// placeholders, short values, and values with whitespace (a copy and paste
// that took a line break along). The value itself is never quoted.
func checkToken(s string) string {
	switch {
	case isPlaceholder(s):
		return "is a placeholder; set the token `cactusctl registration` wrote into the registration and cactus.env"
	case strings.ContainsFunc(s, unicode.IsSpace):
		return "contains whitespace (a line break copied along?)"
	case len(s) < MinTokenLength:
		return fmt.Sprintf("is %d characters long; tokens must have at least %d (cactusctl registration makes 64)", len(s), MinTokenLength)
	}
	return ""
}

func checkSecret(s string) string {
	if s != "" && isPlaceholder(s) {
		return "is a placeholder; set the real value"
	}
	return ""
}

// checkHTTPURL validates an http(s) base URL and stores its normal form,
// without a trailing slash, so paths can be appended. Empty is left to the
// required check.
func checkHTTPURL(f reflect.Value, _ string) string {
	if f.String() == "" {
		return ""
	}
	u, err := normalizeURL(f.String())
	if err != nil {
		return err.Error()
	}
	f.SetString(u)
	return ""
}

// checkNATSURLs: nats.go takes a comma-separated list; every entry must be
// a URL a NATS client can dial. Credentials in a URL are never quoted.
func checkNATSURLs(s string) string {
	if strings.TrimSpace(s) == "" {
		return "is empty; want nats://host:4222 (or tls://, ws://, wss://)"
	}
	for i, raw := range strings.Split(s, ",") {
		u, err := url.Parse(strings.TrimSpace(raw))
		if err != nil {
			return fmt.Sprintf("entry %d is not a URL", i+1)
		}
		switch strings.ToLower(u.Scheme) {
		case "nats", "tls", "ws", "wss":
		default:
			return fmt.Sprintf("%q: want nats://, tls://, ws:// or wss:// URLs", u.Redacted())
		}
		if u.Hostname() == "" {
			return fmt.Sprintf("%q has no host", u.Redacted())
		}
		if p := u.Port(); p != "" {
			if n, err := strconv.ParseUint(p, 10, 16); err != nil || n == 0 {
				return fmt.Sprintf("%q: port %q is not a number from 1 to 65535", u.Redacted(), p)
			}
		}
	}
	return ""
}

var mediaID = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)

// checkMXC validates mxc://<server-name>/<media-id>, the only form a
// homeserver takes as an avatar_url.
func checkMXC(s string) string {
	if s == "" {
		return ""
	}
	rest, ok := strings.CutPrefix(s, "mxc://")
	if !ok {
		return fmt.Sprintf("must be an mxc:// URI (upload the image to the homeserver first), got %q", s)
	}
	server, id, _ := strings.Cut(rest, "/")
	if err := mxid.ParseServerName(server); err != nil {
		return fmt.Sprintf("server name %q: %v", server, err)
	}
	if !mediaID.MatchString(id) {
		return fmt.Sprintf("media id %q: want A-Z, a-z, 0-9, _ and - only, at least one", id)
	}
	return ""
}

var hostName = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$`)

// checkAddr validates a listen address, host:port or :port.
func checkAddr(s string) string {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return fmt.Sprintf("must be host:port or :port, got %q", s)
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return fmt.Sprintf("port %q is not a number from 0 to 65535", port)
	}
	if host != "" && net.ParseIP(host) == nil && !hostName.MatchString(host) {
		return fmt.Sprintf("host %q is neither an IP address nor a host name", host)
	}
	return ""
}

func checkPositive(f reflect.Value, _ string) string {
	switch {
	case f.CanInt() && f.Int() > 0, f.CanUint() && f.Uint() > 0:
		return ""
	}
	return "must be positive"
}

// checkOneOf accepts one of the listed values, or empty: a variable never
// reads as empty unless set so, and code that builds a Config by hand
// leaves new fields empty, meaning their first value.
func checkOneOf(f reflect.Value, arg string) string {
	allowed := strings.Split(arg, "|")
	if f.String() == "" || slices.Contains(allowed, f.String()) {
		return ""
	}
	return fmt.Sprintf("must be %s or %s, got %q", strings.Join(allowed[:len(allowed)-1], ", "), allowed[len(allowed)-1], f.String())
}

// Unknown lists the CACTUS_* names in environ ("NAME=value" or "NAME")
// that no service reads, each as a one-line warning with the nearest known
// name when one is close: a misspelt variable otherwise leaves its default
// in force without a word. CACTUS_DEV_* belong to the dev runner.
func Unknown(environ []string) []string {
	vars, _ := Variables()
	known := make([]string, 0, len(vars))
	for _, v := range vars {
		known = append(known, v.Name)
	}
	var ours []string
	for _, kv := range environ {
		if !strings.HasPrefix(kv, Prefix+"_DEV_") {
			ours = append(ours, kv)
		}
	}
	return Misspelt(ours, Prefix+"_", known, "the services read")
}

// Misspelt is Unknown for any family of variables: the names in environ
// that start with prefix and are not known, each as a warning ("NAME is
// not a variable " + readers, e.g. "the services read"), with the nearest
// known name when one is close.
func Misspelt(environ []string, prefix string, known []string, readers string) []string {
	var out []string
	for _, kv := range environ {
		name, _, _ := strings.Cut(kv, "=")
		if !strings.HasPrefix(name, prefix) || slices.Contains(known, name) {
			continue
		}
		w := name + " is not a variable " + readers
		best, bestD := "", 3
		for _, k := range known {
			if d := distance(name, k); d < bestD {
				best, bestD = k, d
			}
		}
		if best != "" {
			w += "; did you mean " + best + "?"
		}
		out = append(out, w)
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// distance is the Levenshtein distance of a and b.
func distance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
