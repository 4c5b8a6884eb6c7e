package cache

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

// mirrorIndex stores a mirrored index, reached by digest only, over the
// given mirrored platform manifests.
func mirrorIndex(t *testing.T, s *Store, repo string, children ...digest.Digest) digest.Digest {
	t.Helper()
	var ms []map[string]any
	for _, c := range children {
		m, err := s.GetManifest(repo, c.String())
		if err != nil {
			t.Fatal(err)
		}
		ms = append(ms, map[string]any{"mediaType": MediaTypeOCIManifest, "digest": c, "size": len(m.Body),
			"platform": map[string]string{"os": "linux", "architecture": "amd64"}})
	}
	body, _ := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": MediaTypeOCIIndex, "manifests": ms})
	m, err := s.PutMirroredManifest(repo, "docker.io", digest.FromBytes(body), "", MediaTypeOCIIndex, body, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return m.Digest
}

// TestGCKeepsDigestPulls: a mirrored image and an index pulled only by
// digest are pinned like tags, through any number of collections long
// past their grace; an unused untagged manifest still goes; a platform
// manifest stays while its index is pinned and, once the index is
// evicted, follows it; eviction takes pins in least-recently-used order
// and by retention.
func TestGCKeepsDigestPulls(t *testing.T) {
	s := openStore(t, t.TempDir())
	defer s.Close()
	const repo = "docker.io/library/pinned"
	img := mirrorImage(t, s, repo, "docker.io", "", []byte("image layer"))
	child := mirrorImage(t, s, repo, "docker.io", "", []byte("platform layer"))
	idx := mirrorIndex(t, s, repo, child)
	unused := mirrorImage(t, s, repo, "docker.io", "", []byte("nobody pulls this"))
	s.Touch(repo, img.String())
	s.Touch(repo, idx.String())
	s.Touch(repo, child.String()) // fetched through the index, as clients do

	for i := 1; i <= 3; i++ { // GC does not need a flush first: it flushes
		rep, err := s.Maintenance().GC(GCOptions{Grace: time.Hour, Now: time.Now().Add(time.Duration(i) * 5 * time.Hour)})
		if err != nil {
			t.Fatal(err)
		}
		if i == 1 && rep.Manifests != 1 {
			t.Fatalf("first collection removed %d manifests, want only the unused one: %v", rep.Manifests, rep.Items)
		}
		if i > 1 && rep.Manifests+rep.Links+rep.Blobs != 0 {
			t.Fatalf("collection %d removed pinned content: %v", i, rep.Items)
		}
	}
	for _, d := range []digest.Digest{img, idx, child} {
		if _, err := s.GetManifest(repo, d.String()); err != nil {
			t.Fatalf("%s collected although pulled by digest: %v", d, err)
		}
	}
	if _, err := s.GetManifest(repo, unused.String()); err == nil {
		t.Fatal("an untagged manifest nobody pulled survived")
	}

	// Eviction by retention: the image was used long ago, the index now.
	time.Sleep(5 * time.Millisecond)
	s.Touch(repo, idx.String())
	s.Maintenance().FlushAccess()
	cut := time.Now()
	rep, err := s.Maintenance().Evict(EvictOptions{Retention: time.Millisecond, GC: GCOptions{Grace: time.Hour, Now: cut.Add(2 * time.Millisecond)}})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Tags) == 0 {
		t.Fatal("retention evicted nothing")
	}
	if _, err := s.GetManifest(repo, img.String()); err == nil {
		t.Fatalf("the image pinned by digest outlived its retention (evicted %v)", rep.Tags)
	}
	if _, err := s.GetManifest(repo, idx.String()); err == nil {
		t.Fatalf("the index outlived its retention (evicted %v)", rep.Tags)
	}
	// The platform manifest lost its index: it goes with it (released).
	if _, err := s.GetManifest(repo, child.String()); err == nil {
		t.Fatalf("the platform manifest of an evicted index stayed (evicted %v)", rep.Tags)
	}
	if n, _ := s.Maintenance().Size(); n != 0 {
		t.Fatalf("%d bytes left after every pin was evicted", n)
	}
}

// TestGCPlatformManifestFollowsMovedTag: a platform manifest pulled by
// digest through a tagged index is kept while the tag names the index;
// after the tag moved, it goes once unused for the grace (it is not pinned
// for ever by the pull that went through the index).
func TestGCPlatformManifestFollowsMovedTag(t *testing.T) {
	s := openStore(t, t.TempDir())
	defer s.Close()
	const repo = "docker.io/library/moving"
	child := mirrorImage(t, s, repo, "docker.io", "", []byte("old platform layer"))
	idx := mirrorIndex(t, s, repo, child)
	body, _ := s.GetManifest(repo, idx.String())
	if _, err := s.PutMirroredManifest(repo, "docker.io", idx, "latest", MediaTypeOCIIndex, body.Body, time.Now()); err != nil {
		t.Fatal(err)
	}
	s.Touch(repo, "latest")
	s.Touch(repo, child.String())
	if rep, err := s.Maintenance().GC(GCOptions{Grace: time.Hour, Now: time.Now().Add(3 * time.Hour)}); err != nil || rep.Manifests != 0 {
		t.Fatalf("collected %v (%v) while the tag names the index", rep.Items, err)
	}
	// The tag moves upstream to a new image.
	mirrorImage(t, s, repo, "docker.io", "latest", []byte("new layer"))
	if rep, err := s.Maintenance().GC(GCOptions{Grace: time.Hour, Now: time.Now().Add(30 * time.Minute)}); err != nil {
		t.Fatal(err)
	} else if _, err := s.GetManifest(repo, child.String()); err != nil {
		t.Fatalf("the platform manifest used 0 s ago went within the grace: %v (%v)", err, rep.Items)
	}
	rep, err := s.Maintenance().GC(GCOptions{Grace: time.Hour, Now: time.Now().Add(3 * time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Manifests != 2 {
		t.Fatalf("removed %d manifests (%v), want the old index and its platform manifest", rep.Manifests, rep.Items)
	}
}
