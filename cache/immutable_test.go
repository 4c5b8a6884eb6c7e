package cache

import (
	"errors"
	"strings"
	"sync"
	"testing"
)

// TestImmutableTags: a fixed tag does not move (nothing written: the
// refused manifest is not stored), the same manifest may be pushed again,
// other tags move; of two racing pushes of a new fixed tag to different
// manifests exactly one wins.
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
	// Racing pushes of a new fixed tag: one wins, the other is refused.
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i, m := range []*Manifest{body1, body2} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = s.PutManifestKeeping("team/app", m.Digest, []string{"v2"}, MediaTypeOCIManifest, m.Body, fixed)
		}()
	}
	wg.Wait()
	if (errs[0] == nil) == (errs[1] == nil) {
		t.Fatalf("racing pushes of v2: %v, %v; want exactly one refused", errs[0], errs[1])
	}
}
