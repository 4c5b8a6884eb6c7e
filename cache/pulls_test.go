package cache

import (
	"testing"
	"time"
)

// TestPullCounts: pulls are counted per tag and per repository, seen
// before and after a flush, added to what the index holds, and kept
// across a reopen.
func TestPullCounts(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir)
	before := time.Now()
	for range 3 {
		s.Records().NotePull("team/app", "v1")
	}
	s.Records().NotePull("team/app", "v2")
	s.Records().NotePull("team/other", "latest")
	check := func(s *Store, v1, total int64) {
		t.Helper()
		p, err := s.Records().Pulls("team/app")
		if err != nil {
			t.Fatal(err)
		}
		if p["v1"].Count != v1 || p["v2"].Count != 1 || p[""].Count != total || p["latest"].Count != 0 {
			t.Fatalf("pulls %+v, want v1 %d, v2 1, total %d", p, v1, total)
		}
		if p["v1"].Last.Before(before) || p[""].Last.Before(p["v2"].Last) {
			t.Fatalf("last pulls %+v", p)
		}
		all, err := s.Records().RepoPulls()
		if err != nil || all["team/app"].Count != total || all["team/other"].Count != 1 || len(all) != 2 {
			t.Fatalf("repository pulls %+v %v", all, err)
		}
	}
	check(s, 3, 4)
	if err := s.Records().FlushPulls(); err != nil {
		t.Fatal(err)
	}
	check(s, 3, 4)
	s.Records().NotePull("team/app", "v1")
	check(s, 4, 5) // pending on top of flushed
	if err := s.Records().FlushPulls(); err != nil {
		t.Fatal(err)
	}
	check(s, 4, 5)
	s.Records().NotePull("team/app", "v1")
	s.Close() // flushes
	s = openStore(t, dir)
	defer s.Close()
	check(s, 5, 6)
}

// TestGCWithout: a dry run "without" a tag reports what deleting it would
// free: its own layer and config, not a layer another tag shares, nor
// anything while a second tag names the same manifest.
func TestGCWithout(t *testing.T) {
	s := openStore(t, t.TempDir())
	defer s.Close()
	shared, own := []byte("shared layer"), []byte("layer only v1 has, 33 bytes long")
	d1 := pushImage(t, s, "team/app", "v1", shared, own)
	pushImage(t, s, "team/app", "v2", shared, []byte("v2's own layer"))
	base, err := s.Maintenance().GC(GCOptions{DryRun: true})
	if err != nil || base.Bytes != 0 {
		t.Fatalf("nothing is collectable yet: %+v %v", base, err)
	}
	rep, err := s.Maintenance().GC(GCOptions{DryRun: true, Without: map[string][]string{"team/app": {"v1"}}})
	if err != nil {
		t.Fatal(err)
	}
	m, _ := s.GetManifest("team/app", "v1")
	cfg := int64(len(`{"os":"linux","repo":"team/app"}`))
	// The config is the same blob for both images: it stays.
	if want := int64(len(own)) + m.Size; rep.Bytes != want || rep.Manifests != 1 {
		t.Fatalf("without v1: %+v, want %d bytes (config %d shared)", rep, want, cfg)
	}
	if _, err := s.GetManifest("team/app", "v1"); err != nil {
		t.Fatal("a dry run deleted the tag")
	}
	if _, err := s.PutManifest("team/app", d1, []string{"again"}, m.MediaType, m.Body); err != nil {
		t.Fatal(err)
	}
	if rep, err := s.Maintenance().GC(GCOptions{DryRun: true, Without: map[string][]string{"team/app": {"v1"}}}); err != nil || rep.Bytes != 0 {
		t.Fatalf("another tag names v1's manifest, yet deleting v1 frees %+v %v", rep, err)
	}
	if rep, err := s.Maintenance().GC(GCOptions{DryRun: true, Without: map[string][]string{"team/app": {d1.String()}}}); err != nil || rep.Bytes != int64(len(own))+m.Size {
		t.Fatalf("deleting the manifest by digest (both tags) frees %+v %v", rep, err)
	}
}
