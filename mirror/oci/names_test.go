package oci

import (
	"regexp"
	"strings"
	"testing"
)

// The distribution reference grammar, as regexps: the oracle of the
// hand-written ValidName and ValidTag.
var (
	nameRE = regexp.MustCompile(`^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$`)
	tagRE  = regexp.MustCompile(`^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$`)
)

// TestNamesAgreeWithGrammar runs the hand-written checks against the
// regexps over every short string of a small alphabet.
func TestNamesAgreeWithGrammar(t *testing.T) {
	alphabet := []byte("a0._-/A")
	var walk func(prefix []byte)
	n := 0
	walk = func(prefix []byte) {
		s := string(prefix)
		n++
		if got, want := ValidName(s), nameRE.MatchString(s); got != want {
			t.Fatalf("name %q: hand-written %v, grammar %v", s, got, want)
		}
		if got, want := ValidTag(s), tagRE.MatchString(s); got != want {
			t.Fatalf("tag %q: hand-written %v, grammar %v", s, got, want)
		}
		if len(prefix) == 6 {
			return
		}
		for _, c := range alphabet {
			walk(append(prefix, c))
		}
	}
	walk(nil)
	for _, s := range []string{strings.Repeat("a", 255), strings.Repeat("a", 256), strings.Repeat("t", 128), strings.Repeat("t", 129), "a__b", "a___b", "a--b", "a._b"} {
		if got, want := ValidName(s), len(s) <= MaxNameLength && nameRE.MatchString(s); got != want {
			t.Fatalf("name of %d bytes %.12q: hand-written %v, grammar %v", len(s), s, got, want)
		}
		if got, want := ValidTag(s), tagRE.MatchString(s); got != want {
			t.Fatalf("tag of %d bytes: hand-written %v, grammar %v", len(s), got, want)
		}
	}
	if n < 100000 {
		t.Fatalf("only %d strings checked", n)
	}
}
