package docsync

import "testing"

func TestReplace(t *testing.T) {
	doc := "intro\n<!-- bench:t -->\nold\nlines\n<!-- /bench:t -->\noutro\n"
	got, err := Replace(doc, "t", "new\n")
	if err != nil {
		t.Fatal(err)
	}
	want := "intro\n<!-- bench:t -->\nnew\n<!-- /bench:t -->\noutro\n"
	if got != want {
		t.Errorf("got %q\nwant %q", got, want)
	}
	// Replacing twice with the same content changes nothing more.
	again, _ := Replace(got, "t", "new")
	if again != got {
		t.Errorf("not idempotent: %q", again)
	}
	if b, err := Block(got, "t"); err != nil || b != "new" {
		t.Errorf("Block = %q, %v", b, err)
	}
}

func TestReplaceRefuses(t *testing.T) {
	for name, doc := range map[string]string{
		"missing":   "no markers",
		"no close":  "<!-- bench:t -->\nx",
		"twice":     "<!-- bench:t -->a<!-- /bench:t --><!-- bench:t -->b<!-- /bench:t -->",
		"reversed":  "<!-- /bench:t -->x<!-- bench:t -->",
		"other one": "<!-- bench:u -->x<!-- /bench:u -->",
	} {
		if _, err := Replace(doc, "t", "y"); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}
