package console

import "testing"

// TestSafeNext: after sign-in, next= leads only to a path on this site,
// whatever a browser would strip or rewrite in it.
func TestSafeNext(t *testing.T) {
	for _, bad := range []string{
		"//evil.example/x", "/\t/evil.example", "/\n/evil.example", "/\r/evil.example", "\t//evil.example",
		"/\\evil.example", "\\\\evil.example", "/%2F/evil.example", "/%2f%2fevil.example", "/%5Cevil.example",
		"https://evil.example/", "javascript:alert(1)", "evil.example", " //evil.example", "/\x00/evil.example",
		"/\x7f/evil.example", "",
	} {
		if got := safeNext(bad); got != "/" {
			t.Errorf("next=%q → %q", bad, got)
		}
	}
	for _, good := range []string{"/", "/repositories", "/repositories/team/app?tab=tags", "/gc#runs", "/repositories/a%20b"} {
		if got := safeNext(good); got != good {
			t.Errorf("next=%q → %q", good, got)
		}
	}
}
