package cache

import (
	"bytes"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/wharf-registry/wharf/cache/index/etcdindex"
	"github.com/wharf-registry/wharf/internal/etcdtest"
)

// TestSharedGCRaces: on a shared index, node A's collector and node B's
// pushes of the very content it collects. A link made on B between A's
// mark and its sweep keeps the blob; a push on B while A deletes the
// blob (its record a tombstone) waits, stores the bytes again and keeps
// them; what nobody pushed again is freed; fsck is clean.
func TestSharedGCRaces(t *testing.T) {
	c := etcdtest.Start(t, 1)
	blobs := t.TempDir()
	a, b := clusterNode(t, c, "gc", blobs), clusterNode(t, c, "gc", blobs)
	relinked, repushed, freed := []byte("linked again after the mark"), []byte("pushed again while deleted"), []byte("collected")
	for _, l := range [][]byte{relinked, repushed, freed} {
		if err := a.Uploads().PutBlob("team/old", digest.FromBytes(l), -1, bytes.NewReader(l)); err != nil {
			t.Fatal(err)
		}
		if err := a.DeleteBlob("team/old", digest.FromBytes(l)); err != nil {
			t.Fatal(err)
		}
	}
	a.afterMark = func() {
		// B pushes the same bytes: its link renews the record.
		pushImage(t, b, "team/new", "v1", relinked)
	}
	var pushErr error
	var wg sync.WaitGroup
	a.afterSweepRecords = func(tombs []digest.Digest) {
		for _, d := range tombs {
			if d == digest.FromBytes(repushed) {
				wg.Add(1)
				go func() { // waits for A to finish deleting
					defer wg.Done()
					pushErr = b.Uploads().PutBlob("team/new", d, -1, bytes.NewReader(repushed))
				}()
				time.Sleep(200 * time.Millisecond)
			}
		}
	}
	rep, err := a.Maintenance().GC(later(2 * time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	if pushErr != nil {
		t.Fatalf("push during the deletion: %v", pushErr)
	}
	if rep.Blobs != 2 || !bytes.Contains([]byte(fmt.Sprint(rep.Items)), []byte(digest.FromBytes(freed).String())) {
		t.Fatalf("collected %d blobs: %v (want the repushed one and the freed one)", rep.Blobs, rep.Items)
	}
	for _, l := range [][]byte{relinked, repushed} {
		for _, s := range []*Store{a, b} {
			if got := readBlob(t, s, "team/new", digest.FromBytes(l)); !bytes.Equal(got, l) {
				t.Fatalf("%q lost to the collector", l)
			}
		}
	}
	if _, err := b.StatBlob("team/old", digest.FromBytes(freed)); !errors.Is(err, ErrBlobUnknown) {
		t.Fatalf("freed blob still linked: %v", err)
	}
	if _, err := a.Maintenance().Blobs().Stat(digest.FromBytes(freed)); !errors.Is(err, ErrBlobUnknown) {
		t.Fatalf("freed blob still stored: %v", err)
	}
	if size, err := b.Maintenance().Size(); err != nil || size != int64(len(relinked)+len(repushed))+sizeOfImageRest(t, b) {
		t.Fatalf("store size after GC: %d %v", size, err)
	}
	for _, s := range []*Store{a, b} {
		if rep, err := s.Maintenance().Fsck(false); err != nil || !rep.Clean() {
			t.Fatalf("fsck: %v %v", rep.Problems, err)
		}
	}
}

// sizeOfImageRest is the size of team/new:v1's config and manifest.
func sizeOfImageRest(t *testing.T, s *Store) int64 {
	m, err := s.GetManifest("team/new", "v1")
	if err != nil {
		t.Fatal(err)
	}
	var n int64 = m.Size
	for _, r := range m.Refs {
		if sz, err := s.StatBlob("team/new", r); err == nil && r != digest.FromBytes([]byte("linked again after the mark")) {
			n += sz
		}
	}
	return n
}

// TestOneCollectorPerCluster: while one node holds the collector's lock,
// another node's GC and eviction skip with ErrCollectorElsewhere; when the
// holder's process ends without releasing it, the lock is free again
// after its lease.
func TestOneCollectorPerCluster(t *testing.T) {
	c := etcdtest.Start(t, 1)
	blobs := t.TempDir()
	a, b := clusterNode(t, c, "leader", blobs), clusterNode(t, c, "leader", blobs)
	release, err := a.Maintenance().collectorLock()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Maintenance().GC(later(2 * time.Hour)); !errors.Is(err, ErrCollectorElsewhere) {
		t.Fatalf("GC on B while A collects: %v", err)
	}
	if _, err := b.Maintenance().Evict(EvictOptions{MaxBytes: 1, GC: later(0)}); !errors.Is(err, ErrCollectorElsewhere) {
		t.Fatalf("eviction on B while A collects: %v", err)
	}
	release()
	if _, err := b.Maintenance().GC(later(2 * time.Hour)); err != nil {
		t.Fatalf("GC on B after A released: %v", err)
	}
	// A takes it and dies: its lease runs out.
	if _, err := a.Maintenance().collectorLock(); err != nil {
		t.Fatal(err)
	}
	a.idx.(*etcdindex.Index).Abandon()
	deadline := time.Now().Add(3 * 10 * time.Second)
	for {
		_, err := b.Maintenance().GC(later(2 * time.Hour))
		if err == nil {
			break
		}
		if !errors.Is(err, ErrCollectorElsewhere) || time.Now().After(deadline) {
			t.Fatalf("GC on B after A died: %v", err)
		}
		time.Sleep(500 * time.Millisecond)
	}
}
