package cache

import (
	"encoding/binary"
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
	if err := s.Maintenance().FlushAccess(); err != nil {
		t.Fatal(err)
	}
	check(s, 3, 4)
	s.Records().NotePull("team/app", "v1")
	check(s, 4, 5) // pending on top of flushed
	if err := s.Maintenance().FlushAccess(); err != nil {
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

// TestPullsMergedIntoUses: a data directory from before the use records
// kept pulls (p/ keys beside 8-byte a/ records) is moved over once at
// open: the counts, the last uses and the pins are what they were, the
// p/ keys are gone, and a use and a pull of one digest are one record.
// An evicted pin keeps its pulls.
func TestPullsMergedIntoUses(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir)
	d := pushImage(t, s, "docker.io/library/app", "", []byte("layer"))
	used := time.Now().Add(-time.Minute).Truncate(time.Second)
	pulled := time.Now().Add(-2 * time.Minute).Truncate(time.Second)
	at := func(t time.Time) []byte { return binary.BigEndian.AppendUint64(nil, uint64(t.UnixNano())) }
	old := map[string][]byte{
		"a/docker.io/library/app\x00" + d.String(): at(used),
		"a/docker.io/library/app\x00v1":            at(used),
		"p/docker.io/library/app\x00" + d.String(): encodePullStat(PullStat{Count: 7, Last: pulled}),
		"p/docker.io/library/app\x00":              encodePullStat(PullStat{Count: 9, Last: pulled}),
		"p/team/gone\x00v3":                        encodePullStat(PullStat{Count: 2}),
	}
	if err := s.idx.Update(func(txn Txn) error {
		if err := txn.Delete(pullsMerged); err != nil {
			return err
		}
		for k, v := range old {
			if err := txn.Set([]byte(k), v); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s = openStore(t, dir)
	defer s.Close()
	p, err := s.Records().Pulls("docker.io/library/app")
	if err != nil || p[d.String()].Count != 7 || !p[d.String()].Last.Equal(pulled) || p[""].Count != 9 {
		t.Fatalf("pulls after the move: %+v %v", p, err)
	}
	if g, _ := s.Records().Pulls("team/gone"); g["v3"].Count != 2 || !g["v3"].Last.IsZero() {
		t.Fatalf("a count without a time: %+v", g)
	}
	var left int
	s.idx.View(func(txn Txn) error {
		return txn.Scan([]byte("p/"), nil, true, func(k, _ []byte) error { left++; return nil })
	})
	if left != 0 {
		t.Fatalf("%d p/ keys left", left)
	}
	sn, err := s.Maintenance().snapshot(nil)
	if err != nil || !sn.used["docker.io/library/app"][d].Equal(used) {
		t.Fatalf("the pin's last use after the move: %v %v", sn.used, err)
	}
	// One record per reference: a new use and pull of the digest.
	s.Touch("docker.io/library/app", d.String())
	s.Records().NotePull("docker.io/library/app", d.String())
	if err := s.Maintenance().FlushAccess(); err != nil {
		t.Fatal(err)
	}
	var records int
	s.idx.View(func(txn Txn) error {
		return txn.Scan(useKey("docker.io/library/app", d.String()), nil, false, func(k, v []byte) error {
			records++
			if u := decodeUse(v); u.pulls.Count != 8 || u.at == 0 {
				t.Errorf("merged record %+v", u)
			}
			return nil
		})
	})
	if records != 1 {
		t.Fatalf("%d records for one digest", records)
	}
	// Evicting the pin forgets the use, not the pulls.
	if _, err := s.Maintenance().ForgetUses("docker.io/library/app"); err != nil {
		t.Fatal(err)
	}
	if sn, _ := s.Maintenance().snapshot(nil); len(sn.used["docker.io/library/app"]) != 0 {
		t.Fatalf("pins after ForgetUses: %v", sn.used)
	}
	if p, _ := s.Records().Pulls("docker.io/library/app"); p[d.String()].Count != 8 {
		t.Fatalf("pulls after ForgetUses: %+v", p)
	}
}
