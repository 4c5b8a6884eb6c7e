package cache

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

// TestPreviewIsTheDryRun: a preview from the last collection's snapshot
// reports what a dry run would, with and without pretended deletes and
// as the clock moves past the grace; any write makes the snapshot stale,
// and a collection takes a new one.
func TestPreviewIsTheDryRun(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir)
	defer s.Close()
	shared := []byte("shared layer")
	pushImage(t, s, "team/app", "v1", shared, []byte("app layer"))
	pushImage(t, s, "team/app", "v2", shared, []byte("v2 layer"))
	pushImage(t, s, "team/app", "", []byte("untagged layer"))
	pushImage(t, s, "team/old", "v0", shared, []byte("old layer"))
	if err := s.DeleteReleasing("team/old", "v0"); err != nil {
		t.Fatal(err)
	}
	loose := []byte("uploaded, never referenced")
	s.Uploads().PutBlob("team/app", digest.FromBytes(loose), -1, bytes.NewReader(loose))
	// A file the index never recorded: the walk finds it, the preview
	// keeps the walk's finding.
	orphan := []byte("orphan")
	od := digest.FromBytes(orphan)
	path := filepath.Join(dir, "blobs", "sha256", od.Encoded()[:2], od.Encoded())
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, orphan, 0o644); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-3 * time.Hour)
	os.Chtimes(path, old, old)

	m := s.Maintenance()
	if _, _, ok := m.Preview(GCOptions{}); ok {
		t.Fatal("a preview before any collection")
	}
	same := func(what string, want, got GCReport) {
		t.Helper()
		slices.Sort(want.Items)
		slices.Sort(got.Items)
		if fmt.Sprint(want) != fmt.Sprint(got) {
			t.Fatalf("%s:\ndry run %+v\npreview %+v", what, want, got)
		}
	}
	now := time.Now()
	dry, err := m.GC(GCOptions{DryRun: true, Grace: time.Hour, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	if dry.Orphans != 1 || dry.Manifests == 0 {
		t.Fatalf("dry run %+v", dry)
	}
	for _, o := range []GCOptions{
		{Grace: time.Hour, Now: now},
		{Grace: time.Hour, Now: now.Add(2 * time.Hour)},
		{Grace: time.Hour, Now: now, Without: map[string][]string{"team/app": {"v2"}}},
		{Grace: time.Hour, Now: now.Add(2 * time.Hour), Without: map[string][]string{"team/app": {"v1", "v2"}}},
	} {
		got, at, ok := m.Preview(o)
		if !ok || at.IsZero() {
			t.Fatalf("no preview (ok %v, at %v)", ok, at)
		}
		o.DryRun = true
		want, err := m.GC(o)
		if err != nil {
			t.Fatal(err)
		}
		same(fmt.Sprintf("at +%v without %v", o.Now.Sub(now).Round(time.Hour), o.Without), want, got)
	}
	// Without the grace the preview takes the last collection's.
	if _, _, ok := m.Preview(GCOptions{}); !ok {
		t.Fatal("no preview with the last collection's grace")
	}
	// A write: stale until the next collection.
	pushImage(t, s, "team/new", "v1", []byte("new layer"))
	if _, _, ok := m.Preview(GCOptions{Grace: time.Hour}); ok {
		t.Fatal("a preview from a snapshot older than the last write")
	}
	if _, err := m.GC(GCOptions{DryRun: true, Grace: time.Hour}); err != nil {
		t.Fatal(err)
	}
	if _, _, ok := m.Preview(GCOptions{Grace: time.Hour}); !ok {
		t.Fatal("no preview after a new collection")
	}
	// A real collection that removed something leaves a stale snapshot.
	if rep, err := m.GC(GCOptions{Grace: time.Hour, Now: now.Add(2 * time.Hour)}); err != nil || rep.Manifests == 0 {
		t.Fatalf("collection %+v %v", rep, err)
	}
	if _, _, ok := m.Preview(GCOptions{Grace: time.Hour}); ok {
		t.Fatal("a preview from before a collection's removals")
	}
}
