package cache

import (
	"errors"
	"strings"
	"sync"
	"testing"
)

// TestImmutableTags: a fixed tag does not move (nothing written: the
// refused manifest is not stored), the same manifest may be pushed again,
// other tags move; a push of a new fixed tag that another push takes
// between its first check and its commit is refused in the commit.
func TestImmutableTags(t *testing.T) {
	s := openStore(t, t.TempDir())
	defer s.Close()
	fixed := func(tag string) (string, bool) { return "rule 1", strings.HasPrefix(tag, "v") }
	m1 := pushImage(t, s, "team/app", "v1", []byte("layer one"))
	m2 := pushImage(t, s, "team/app", "", []byte("layer two"))
	body2, err := s.GetManifest("team/app", m2.String())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.PutManifestKeeping("team/app", m2, []string{"v1"}, MediaTypeOCIManifest, body2.Body, fixed); err == nil {
		t.Fatal("an immutable tag moved")
	} else if ie := new(TagImmutableError); !errors.As(err, &ie) || ie.Current != m1 || ie.Rule != "rule 1" || !strings.Contains(err.Error(), "tag v1 of team/app is immutable") {
		t.Fatalf("the refusal: %v", err)
	}
	if d, _ := s.ResolveTag("team/app", "v1"); d != m1 {
		t.Fatalf("v1 names %s after the refusal, want %s", d, m1)
	}
	body1, _ := s.GetManifest("team/app", m1.String())
	if _, err := s.PutManifestKeeping("team/app", m1, []string{"v1"}, MediaTypeOCIManifest, body1.Body, fixed); err != nil {
		t.Fatalf("the same manifest again: %v", err)
	}
	for range 2 { // dev is not fixed: it moves
		if _, err := s.PutManifestKeeping("team/app", m2, []string{"dev"}, MediaTypeOCIManifest, body2.Body, fixed); err != nil {
			t.Fatal(err)
		}
		if _, err := s.PutManifestKeeping("team/app", m1, []string{"dev"}, MediaTypeOCIManifest, body1.Body, fixed); err != nil {
			t.Fatal(err)
		}
	}
	// Racing pushes of a new fixed tag: A passes the check made before
	// writing while v2 is free, then B's push of v2 lands before A
	// commits. Only the check in A's committing transaction can refuse A.
	inCheck, bDone := make(chan struct{}), make(chan struct{})
	var once sync.Once
	slowFixed := func(tag string) (string, bool) {
		once.Do(func() { close(inCheck); <-bDone })
		return fixed(tag)
	}
	errA := make(chan error, 1)
	go func() {
		_, err := s.PutManifestKeeping("team/app", body1.Digest, []string{"v2"}, MediaTypeOCIManifest, body1.Body, slowFixed)
		errA <- err
	}()
	<-inCheck
	if _, err := s.PutManifestKeeping("team/app", body2.Digest, []string{"v2"}, MediaTypeOCIManifest, body2.Body, fixed); err != nil {
		t.Fatalf("B's push of v2: %v", err)
	}
	close(bDone)
	if err := <-errA; !errors.As(err, new(*TagImmutableError)) {
		t.Fatalf("A's push of v2 after B's landed between A's check and its commit: %v, want refused", err)
	}
	if d, _ := s.ResolveTag("team/app", "v2"); d != body2.Digest {
		t.Fatalf("v2 names %s, want B's %s", d, body2.Digest)
	}
}
