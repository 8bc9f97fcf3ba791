// Package docsync keeps generated blocks of a Markdown document in step
// with the program that measures them. A block sits between two HTML
// comments that Markdown does not render:
//
//	<!-- bench:NAME -->
//	... generated ...
//	<!-- /bench:NAME -->
//
// Everything outside the markers is written by hand and left alone.
package docsync

import (
	"fmt"
	"strings"
)

func openMarker(name string) string  { return "<!-- bench:" + name + " -->" }
func closeMarker(name string) string { return "<!-- /bench:" + name + " -->" }

// Block returns the content between the markers of name, without the
// newlines that follow the opening marker and precede the closing one.
func Block(doc, name string) (string, error) {
	start, end, err := find(doc, name)
	if err != nil {
		return "", err
	}
	return strings.Trim(doc[start:end], "\n"), nil
}

// Replace returns doc with the block name holding content.
func Replace(doc, name, content string) (string, error) {
	start, end, err := find(doc, name)
	if err != nil {
		return "", err
	}
	return doc[:start] + "\n" + strings.Trim(content, "\n") + "\n" + doc[end:], nil
}

// find returns the span between the end of the opening marker and the
// start of the closing one. Each marker must appear exactly once.
func find(doc, name string) (int, int, error) {
	o, c := openMarker(name), closeMarker(name)
	if n := strings.Count(doc, o); n != 1 {
		return 0, 0, fmt.Errorf("docsync: %d %q markers, want 1", n, o)
	}
	if n := strings.Count(doc, c); n != 1 {
		return 0, 0, fmt.Errorf("docsync: %d %q markers, want 1", n, c)
	}
	start := strings.Index(doc, o) + len(o)
	end := strings.Index(doc, c)
	if end < start {
		return 0, 0, fmt.Errorf("docsync: %q comes before %q", c, o)
	}
	return start, end, nil
}
