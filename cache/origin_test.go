package cache

import (
	"bytes"
	"encoding/json"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

// mirrorImage stores an image as the mirror does: a mirrored manifest
// (tagged) and its blobs linked as mirrored content from registry.
func mirrorImage(t testing.TB, s *Store, repo, registry, tag string, layers ...[]byte) digest.Digest {
	t.Helper()
	cfg := []byte(`{"os":"linux","mirror":"` + repo + tag + `"}`)
	var descs []map[string]any
	fills := s.NewFills(FillsOptions{})
	defer fills.Close()
	for _, l := range append([][]byte{cfg}, layers...) {
		d := digest.FromBytes(l)
		rd, _, err := fills.Get(t.Context(), repo, MirroredFrom(registry), d, bytesSource(l, nil))
		if err != nil {
			t.Fatal(err)
		}
		if rd != nil {
			if err := rd.Wait(t.Context()); err != nil {
				t.Fatal(err)
			}
			rd.Close()
		}
		descs = append(descs, map[string]any{"mediaType": "application/octet-stream", "digest": d, "size": len(l)})
	}
	body, _ := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": MediaTypeOCIManifest, "config": descs[0], "layers": descs[1:]})
	m, err := s.PutMirroredManifest(repo, registry, digest.FromBytes(body), tag, MediaTypeOCIManifest, body, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return m.Digest
}

// TestOriginRecorded: the origin of a repository is what its writes said,
// whatever its name, survives a restart, and pushed content wins.
func TestOriginRecorded(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir)
	pushImage(t, s, "quay.io/org/app", "v1", []byte("pushed under a registry-named path"))
	mirrorImage(t, s, "docker.io/library/alpine", "docker.io", "3", []byte("mirrored layer"))
	mirrorImage(t, s, "team/shadow", "ghcr.io", "1", []byte("mirrored first"))
	pushImage(t, s, "team/shadow", "2", []byte("then pushed"))
	check := func(s *Store) {
		t.Helper()
		for repo, want := range map[string]Origin{
			"quay.io/org/app": Pushed, "docker.io/library/alpine": MirroredFrom("docker.io"), "team/shadow": Pushed,
		} {
			if got, ok := s.Origin(repo); !ok || got != want {
				t.Errorf("origin of %s = %v (%v), want %v", repo, got, ok, want)
			}
		}
		if _, ok := s.Origin("never/written"); ok {
			t.Error("an unknown repository has an origin")
		}
	}
	check(s)
	s.Close()
	s = openStore(t, dir)
	defer s.Close()
	check(s)
}

// TestOriginMigration: a data directory from before origins were recorded
// gets them derived once at start: checked (mirrored) tags under a
// registry-named path are mirrored, pushed tags are pushed whatever the name.
func TestOriginMigration(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir)
	pushImage(t, s, "quay.io/org/app", "v1", []byte("pushed"))
	mirrorImage(t, s, "docker.io/library/busybox", "docker.io", "1", []byte("mirrored"))
	// Make it look like an old directory: no o/ records, no marker, and a
	// mirrored tag in the old encoding (no registry).
	err := s.idx.Update(func(txn Txn) error {
		for _, k := range [][]byte{originKey("quay.io/org/app"), originKey("docker.io/library/busybox"), provenanceMarker} {
			if err := txn.Delete(k); err != nil {
				return err
			}
		}
		d, _, _ := s.TagInfo("docker.io/library/busybox", "1")
		return txn.Set(tagKey("docker.io/library/busybox", "1"), []byte(d.String()+"\x00"+"1700000000000000000"))
	})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	s = openStore(t, dir)
	defer s.Close()
	if o, ok := s.Origin("quay.io/org/app"); !ok || o.Mirrored() {
		t.Errorf("pushed quay.io/org/app migrated as %v", o)
	}
	if o, ok := s.Origin("docker.io/library/busybox"); !ok || o != MirroredFrom("docker.io") {
		t.Errorf("mirrored busybox migrated as %v (%v)", o, ok)
	}
}

// TestEvictNeverPushed: pushed content under a registry-named path is
// never evicted, however small the quota.
func TestEvictNeverPushed(t *testing.T) {
	s := openStore(t, t.TempDir())
	defer s.Close()
	pushImage(t, s, "quay.io/org/app", "v1", bytes.Repeat([]byte("p"), 64<<10))
	rep, err := s.Maintenance().Evict(EvictOptions{MaxBytes: 1024, GC: GCOptions{Grace: time.Hour}})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Tags) != 0 {
		t.Fatalf("evicted pushed tags: %v", rep.Tags)
	}
	if _, err := s.GetManifest("quay.io/org/app", "v1"); err != nil {
		t.Fatalf("pushed image gone: %v", err)
	}
}

// TestEvictBurstFreesSpace: three mirrored images written within a minute
// over the quota: one pass frees space down to the low-water mark and keeps
// the most recently used image (eviction does not wait for a grace period
// on what it untagged itself).
func TestEvictBurstFreesSpace(t *testing.T) {
	s := openStore(t, t.TempDir())
	defer s.Close()
	const mib = 1 << 20
	for i, name := range []string{"a", "b", "c"} {
		mirrorImage(t, s, "docker.io/library/"+name, "docker.io", "1", bytes.Repeat([]byte{byte('a' + i)}, mib))
		s.Touch("docker.io/library/"+name, "1")
		s.Maintenance().FlushAccess()
		time.Sleep(5 * time.Millisecond) // distinct use times
	}
	before, _ := s.Maintenance().Size()
	rep, err := s.Maintenance().Evict(EvictOptions{MaxBytes: 2 * mib, GC: GCOptions{Grace: time.Hour}})
	if err != nil {
		t.Fatal(err)
	}
	after, _ := s.Maintenance().Size()
	if rep.Freed <= 0 || after >= before || float64(after) > 0.85*2*mib {
		t.Fatalf("eviction freed %d bytes (%d → %d), tags %v", rep.Freed, before, after, rep.Tags)
	}
	if _, err := s.GetManifest("docker.io/library/c", "1"); err != nil {
		t.Fatalf("the most recently used image was evicted: %v (evicted %v)", err, rep.Tags)
	}
	if len(rep.Tags) != 2 {
		t.Fatalf("evicted %v, want the two older images", rep.Tags)
	}
}

// TestOriginConcurrentFirstWrites: a push and a mirrored write racing to
// be a repository's first content leave it pushed, in memory and in the
// index (after a restart).
func TestOriginConcurrentFirstWrites(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir)
	const n = 20
	for i := 0; i < n; i++ {
		repo := fmt.Sprintf("race/r%d", i)
		var wg sync.WaitGroup
		wg.Add(2)
		go func() {
			defer wg.Done()
			b := []byte("pushed " + repo)
			if err := s.Uploads().PutBlob(repo, digest.FromBytes(b), -1, bytes.NewReader(b)); err != nil {
				t.Error(err)
			}
		}()
		go func() {
			defer wg.Done()
			mirrorImage(t, s, repo, "docker.io", "1", []byte("mirrored "+repo))
		}()
		wg.Wait()
	}
	check := func(s *Store) {
		t.Helper()
		for i := 0; i < n; i++ {
			if o, ok := s.Origin(fmt.Sprintf("race/r%d", i)); !ok || o.Mirrored() {
				t.Fatalf("race/r%d: origin %v (%v), want pushed", i, o, ok)
			}
		}
	}
	check(s)
	s.Close()
	s = openStore(t, dir)
	defer s.Close()
	check(s)
}
