package cache

import (
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

// TestReleasedSurvivesRestart: what a delete released is recorded in the
// index with the delete: after a restart the next collection still frees
// it without the grace, a dry run leaves the record, a real run removes
// it, and a kept image is untouched.
func TestReleasedSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir)
	pushImage(t, s, "team/app", "v1", []byte("layer of v1"))
	pushImage(t, s, "team/app", "v2", []byte("layer of v2"))
	d3 := pushImage(t, s, "team/other", "v3", []byte("layer of v3"))
	if err := s.DeleteReleasing("team/app", "v1"); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteReleasing("team/other", d3.String()); err != nil {
		t.Fatal(err)
	}
	s.Close()

	s = openStore(t, dir)
	defer s.Close()
	m := s.Maintenance()
	if ok, err := m.Released(); err != nil || !ok {
		t.Fatalf("after a restart, released: %v %v", ok, err)
	}
	grace := GCOptions{Grace: time.Hour} // everything here is minutes old
	dry := grace
	dry.DryRun = true
	if rep, err := m.GC(dry); err != nil || rep.Manifests != 1 || rep.Blobs != 5 {
		t.Fatalf("dry run: %+v %v; want v1's manifest (v3's record went with its delete) and 5 blobs: both manifests' bytes, both layers, v3's config (v1 shares v2's)", rep, err)
	}
	if ok, _ := m.Released(); !ok {
		t.Fatal("a dry run removed the records")
	}
	rep, ran, err := m.CollectReleased(grace)
	if err != nil || !ran || rep.Manifests != 1 || rep.Blobs != 5 {
		t.Fatalf("collection: %+v ran %v, %v", rep, ran, err)
	}
	if ok, _ := m.Released(); ok {
		t.Fatal("the records outlived the collection that freed them")
	}
	if _, ran, _ := m.CollectReleased(grace); ran {
		t.Fatal("a second collection ran with nothing released")
	}
	if _, err := s.ResolveTag("team/app", "v2"); err != nil {
		t.Fatalf("the kept tag: %v", err)
	}
	if got := readBlob(t, s, "team/app", digest.FromString("layer of v2")); string(got) != "layer of v2" {
		t.Fatalf("the kept layer: %q", got)
	}
}

// TestReleasedThenLinkedAgain: a blob a deleted manifest referenced but a
// push linked again after that manifest was pushed — before or after the
// delete — keeps its grace (the push's manifest PUT needs it), while what
// stayed released goes at once.
func TestReleasedThenLinkedAgain(t *testing.T) {
	for _, relinkFirst := range []bool{true, false} {
		s := openStore(t, t.TempDir())
		d1 := pushImage(t, s, "team/app", "v1", []byte("shared layer"), []byte("only v1's layer"))
		shared := digest.FromString("shared layer")
		relink := func() {
			time.Sleep(2 * time.Millisecond) // strictly after v1's push (and the delete)
			if err := s.Uploads().PutBlob("team/app", shared, int64(len("shared layer")), strings.NewReader("shared layer")); err != nil {
				t.Fatal(err)
			}
		}
		if relinkFirst {
			relink()
		}
		if err := s.DeleteReleasing("team/app", d1.String()); err != nil {
			t.Fatal(err)
		}
		if !relinkFirst {
			relink()
		}
		rep, ran, err := s.Maintenance().CollectReleased(GCOptions{Grace: time.Hour})
		if err != nil || !ran {
			t.Fatalf("collection: %v %v", ran, err)
		}
		if _, err := s.StatBlob("team/app", shared); err != nil {
			t.Fatalf("relinked before the delete %v: a blob linked again after v1's push was collected: %v (%+v)", relinkFirst, err, rep)
		}
		if _, err := s.StatBlob("team/app", digest.FromString("only v1's layer")); err == nil {
			t.Fatalf("relinked before the delete %v: the released layer nothing linked again is still there: %+v", relinkFirst, rep)
		}
		s.Close()
	}
}
