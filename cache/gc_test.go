package cache

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/wharf-registry/wharf/cache/blobs/fileblobs"
)

// pushImage stores a config and the given layers, then a manifest under
// tag (or untagged when tag is ""), and returns the manifest digest.
func pushImage(t testing.TB, s *Store, repo, tag string, layers ...[]byte) digest.Digest {
	t.Helper()
	cfg := []byte(`{"os":"linux","repo":"` + repo + `"}`)
	var descs []map[string]any
	for _, l := range append([][]byte{cfg}, layers...) {
		if err := s.Uploads().PutBlob(repo, digest.FromBytes(l), int64(len(l)), bytes.NewReader(l)); err != nil {
			t.Fatal(err)
		}
		descs = append(descs, map[string]any{"mediaType": "application/octet-stream", "digest": digest.FromBytes(l), "size": len(l)})
	}
	body, _ := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": MediaTypeOCIManifest, "config": descs[0], "layers": descs[1:]})
	var tags []string
	if tag != "" {
		tags = []string{tag}
	}
	m, err := s.PutManifest(repo, digest.FromBytes(body), tags, MediaTypeOCIManifest, body)
	if err != nil {
		t.Fatal(err)
	}
	return m.Digest
}

func later(d time.Duration) GCOptions { return GCOptions{Grace: time.Hour, Now: time.Now().Add(d)} }

// TestGCRemovesUnreferenced: a tagged image survives; an untagged
// manifest, a loose blob and the content of a deleted tag go, after the
// grace period only; a dry run changes nothing.
func TestGCRemovesUnreferenced(t *testing.T) {
	s := openStore(t, t.TempDir())
	defer s.Close()
	shared := []byte("shared layer")
	kept := pushImage(t, s, "team/app", "v1", shared, []byte("app layer"))
	untagged := pushImage(t, s, "team/app", "", []byte("untagged layer"))
	pushImage(t, s, "team/old", "v0", shared, []byte("old layer"))
	if err := s.DeleteManifest("team/old", "v0"); err != nil {
		t.Fatal(err)
	}
	loose := []byte("uploaded, never referenced")
	s.Uploads().PutBlob("team/app", digest.FromBytes(loose), -1, bytes.NewReader(loose))

	if rep, err := s.Maintenance().GC(GCOptions{Grace: time.Hour}); err != nil || rep.Manifests+rep.Links+rep.Blobs != 0 {
		t.Fatalf("within the grace period GC removed %+v (%v)", rep, err)
	}
	dry, err := s.Maintenance().GC(GCOptions{DryRun: true, Grace: time.Hour, Now: time.Now().Add(2 * time.Hour)})
	if err != nil || dry.Manifests != 2 || dry.Blobs == 0 {
		t.Fatalf("dry run: %+v %v", dry, err)
	}
	if _, err := s.GetManifest("team/app", untagged.String()); err != nil {
		t.Fatal("a dry run removed something")
	}
	rep, err := s.Maintenance().GC(later(2 * time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	// Gone: both manifests' own bytes, the untagged layer, the loose blob,
	// the old config and the old layer; the layer shared with v1 stays.
	if rep.Manifests != 2 || rep.Blobs != 6 {
		t.Fatalf("GC report %+v\n%v", rep, rep.Items)
	}
	if m, err := s.GetManifest("team/app", "v1"); err != nil || m.Digest != kept {
		t.Fatalf("tagged image lost: %v", err)
	}
	for _, l := range [][]byte{shared, []byte("app layer")} {
		if got := readBlob(t, s, "team/app", digest.FromBytes(l)); !bytes.Equal(got, l) {
			t.Fatal("kept layer damaged")
		}
	}
	for _, l := range [][]byte{loose, []byte("untagged layer"), []byte("old layer")} {
		if _, err := s.Maintenance().Blobs().Stat(digest.FromBytes(l)); !errors.Is(err, ErrBlobUnknown) {
			t.Fatalf("unreferenced blob %q kept: %v", l, err)
		}
	}
	if fr, err := s.Maintenance().Fsck(false); err != nil || !fr.Clean() {
		t.Fatalf("fsck after GC: %v %v", fr.Problems, err)
	}
}

// TestGCReaderKeepsReading: a reader that opened a blob before the
// collector removed it still reads every byte.
func TestGCReaderKeepsReading(t *testing.T) {
	s := openStore(t, t.TempDir())
	defer s.Close()
	content := bytes.Repeat([]byte("x"), 1<<20)
	d := digest.FromBytes(content)
	s.Uploads().PutBlob("r", d, -1, bytes.NewReader(content))
	rc, _, err := s.OpenBlob("r", d)
	if err != nil {
		t.Fatal(err)
	}
	head := make([]byte, 1000)
	io.ReadFull(rc, head)
	s.DeleteBlob("r", d)
	if rep, err := s.Maintenance().GC(later(2 * time.Hour)); err != nil || rep.Blobs != 1 {
		t.Fatalf("GC: %+v %v", rep, err)
	}
	rest, err := io.ReadAll(rc)
	rc.Close()
	if err != nil || !bytes.Equal(append(head, rest...), content) {
		t.Fatalf("reader lost bytes to the collector: %v", err)
	}
}

// TestGCRacingPushes: 1,000 pushes while the collector runs flat out. In
// 10 rounds, each round's content is left unreferenced and aged past the
// grace period, and the next round pushes the same layers again while the
// collector is removing them. Every push is readable at once, and at the
// end every tag is complete and fsck is clean.
func TestGCRacingPushes(t *testing.T) {
	s := openStore(t, t.TempDir())
	defer s.Close()
	const grace = 300 * time.Millisecond
	stop := make(chan struct{})
	var collections atomic.Int64
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := s.Maintenance().GC(GCOptions{Grace: grace}); err != nil {
				t.Error(err)
				return
			}
			collections.Add(1)
		}
	}()
	check := func(i int, tag string) {
		m, err := s.GetManifest("race/app", tag)
		if err != nil {
			t.Fatalf("push %d: %v", i, err)
		}
		for _, ref := range m.Refs {
			rc, _, err := s.OpenBlob("race/app", ref)
			if err != nil {
				t.Fatalf("push %d: blob %s lost: %v", i, ref, err)
			}
			got, _ := digest.FromReader(rc)
			rc.Close()
			if got != ref {
				t.Fatalf("push %d: blob %s corrupt", i, ref)
			}
		}
	}
	for round := 0; round < 10; round++ {
		for j := 0; j < 100; j++ {
			i := round*100 + j
			tag := fmt.Sprintf("t%d", j%10)
			pushImage(t, s, "race/app", tag, []byte(fmt.Sprintf("layer %d", j%20)), []byte(fmt.Sprintf("unique %d", i)))
			check(i, tag)
		}
		if round < 9 {
			for j := 0; j < 10; j++ { // leave the whole round unreferenced
				s.DeleteManifest("race/app", fmt.Sprintf("t%d", j))
			}
			time.Sleep(grace + 50*time.Millisecond)
		}
	}
	close(stop)
	wg.Wait()
	if collections.Load() < 10 {
		t.Fatalf("only %d collections ran", collections.Load())
	}
	for j := 0; j < 10; j++ {
		check(900+j, fmt.Sprintf("t%d", j))
	}
	if rep, err := s.Maintenance().Fsck(false); err != nil || !rep.Clean() {
		t.Fatalf("fsck after the race: %v %v", rep.Problems, err)
	}
}

// TestFsckRepair: a blob whose bytes were flipped on disk is found,
// quarantined, and the index no longer offers it.
func TestFsckRepair(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir)
	defer s.Close()
	layer := []byte("will be corrupted")
	pushImage(t, s, "team/app", "v1", layer)
	healthy := pushImage(t, s, "team/other", "v1", []byte("healthy"))
	d := digest.FromBytes(layer)
	path := s.Maintenance().Blobs().(*fileblobs.Files).Path(d)
	b, _ := os.ReadFile(path)
	b[0] ^= 0xff
	os.WriteFile(path, b, 0o640)
	rep, err := s.Maintenance().Fsck(false)
	if err != nil || rep.Clean() {
		t.Fatalf("fsck missed a flipped byte: %v", err)
	}
	rep, err = s.Maintenance().Fsck(true)
	if err != nil || rep.Repaired == 0 {
		t.Fatalf("repair: %+v %v", rep, err)
	}
	if _, err := os.Stat(dir + "/quarantine/sha256-" + d.Encoded()); err != nil {
		t.Fatalf("corrupt blob not quarantined: %v", err)
	}
	if _, err := s.StatBlob("team/app", d); !errors.Is(err, ErrBlobUnknown) {
		t.Fatalf("corrupt blob still linked: %v", err)
	}
	if _, err := s.GetManifest("team/app", "v1"); !errors.Is(err, ErrManifestUnknown) {
		t.Fatalf("manifest needing the corrupt blob still served: %v", err)
	}
	if m, err := s.GetManifest("team/other", "v1"); err != nil || m.Digest != healthy {
		t.Fatalf("healthy image damaged by the repair: %v", err)
	}
	if rep, err := s.Maintenance().Fsck(false); err != nil || !rep.Clean() {
		t.Fatalf("fsck after repair: %v %v", rep.Problems, err)
	}
}

func TestUsage(t *testing.T) {
	s := openStore(t, t.TempDir())
	defer s.Close()
	shared := bytes.Repeat([]byte("s"), 1000)
	pushImage(t, s, "a", "v1", shared)
	pushImage(t, s, "b", "v1", shared, bytes.Repeat([]byte("b"), 500))
	usage, total, err := s.Maintenance().Usage()
	if err != nil || len(usage) != 2 || usage[0].Repo != "b" || usage[0].Tags != 1 || usage[0].Blobs != 3 {
		t.Fatalf("usage %+v %v", usage, err)
	}
	if total >= usage[0].Bytes+usage[1].Bytes {
		t.Fatalf("shared content counted twice in the store total: %d", total)
	}
}

// TestGCRecommitDuringSweep: a push of content the collector is removing,
// landing between the removal of its record and of its file, keeps the
// blob.
func TestGCRecommitDuringSweep(t *testing.T) {
	s := openStore(t, t.TempDir())
	defer s.Close()
	layer := []byte("collected, then pushed again")
	d := digest.FromBytes(layer)
	s.Uploads().PutBlob("team/app", d, -1, bytes.NewReader(layer))
	s.DeleteBlob("team/app", d)
	pushed := false
	s.afterSweepRecords = func(doomed []digest.Digest) {
		for _, x := range doomed {
			if x == d && !pushed {
				pushed = true
				pushImage(t, s, "team/app", "v1", layer)
			}
		}
	}
	if _, err := s.Maintenance().GC(later(2 * time.Hour)); err != nil {
		t.Fatal(err)
	}
	if !pushed {
		t.Fatal("the blob was never selected for removal")
	}
	if got := readBlob(t, s, "team/app", d); !bytes.Equal(got, layer) {
		t.Fatal("pushed content lost to the collector")
	}
	if rep, err := s.Maintenance().Fsck(false); err != nil || !rep.Clean() {
		t.Fatalf("fsck: %v %v", rep.Problems, err)
	}
}

// TestGCLargeSweep: a collection that frees more blobs than one Badger
// transaction can delete (with the appliance's small memtables) frees them
// all, in batches.
func TestGCLargeSweep(t *testing.T) {
	s := openStore(t, t.TempDir(), func(o *Options) { o.NoSync = true })
	defer s.Close()
	n := 4 * s.idx.MaxOps()
	for i := range n {
		b := []byte(fmt.Sprintf("loose blob %d", i))
		if err := s.Uploads().PutBlob("team/app", digest.FromBytes(b), int64(len(b)), bytes.NewReader(b)); err != nil {
			t.Fatal(err)
		}
	}
	rep, err := s.Maintenance().GC(later(2 * time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if rep.Blobs != n || rep.Links != n {
		t.Fatalf("GC freed %d blobs and %d links, want %d of each", rep.Blobs, rep.Links, n)
	}
	if size, err := s.Maintenance().Size(); err != nil || size != 0 {
		t.Fatalf("store holds %d bytes after the sweep (%v)", size, err)
	}
}
