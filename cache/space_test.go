package cache

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/opencontainers/go-digest"
)

// fakeFS is a statfs for tests: a filesystem of avail bytes free when
// the data directory was empty; what the directory holds (allocated
// blocks, as du counts them) is taken off.
type fakeFS struct{ avail, total atomic.Int64 }

func newFakeFS(avail, total int64) *fakeFS {
	f := &fakeFS{}
	f.avail.Store(avail)
	f.total.Store(total)
	return f
}

func (f *fakeFS) statfs(dir string) (int64, int64, error) {
	var used int64
	filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
		if err == nil && !e.IsDir() {
			if info, err := e.Info(); err == nil {
				used += info.Sys().(*syscall.Stat_t).Blocks * 512
			}
		}
		return nil
	})
	return f.avail.Load() - used, f.total.Load(), nil
}

const mib = 1 << 20

func withFS(f *fakeFS, minFree int64) func(*Options) {
	return func(o *Options) { o.Statfs, o.MinFree = f.statfs, minFree }
}

func ingestFiles(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(dir, "ingest"))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

// TestSpaceFloorRefusesBlobWrites: blob bytes that would leave less than
// the floor free are refused with ErrStorageFull and leave nothing; a
// chunk of an upload is stored whole or not at all; once space comes back
// the same session completes with the right digest.
func TestSpaceFloorRefusesBlobWrites(t *testing.T) {
	dir := t.TempDir()
	ffs := newFakeFS(40*mib, 1024*mib)
	s := openStore(t, dir, withFS(ffs, 32*mib))
	defer s.Close()

	small := bytes.Repeat([]byte("s"), 1*mib)
	if err := s.Uploads().PutBlob("r", digest.FromBytes(small), -1, bytes.NewReader(small)); err != nil {
		t.Fatalf("a blob that fits: %v", err)
	}
	big := bytes.Repeat([]byte("b"), 12*mib)
	err := s.Uploads().PutBlob("r", digest.FromBytes(big), -1, bytes.NewReader(big))
	if !errors.Is(err, ErrStorageFull) {
		t.Fatalf("a blob over the floor: %v, want ErrStorageFull", err)
	}
	if left := ingestFiles(t, dir); len(left) != 0 {
		t.Fatalf("refused blob left %v", left)
	}

	id, err := s.Uploads().NewUpload("r")
	if err != nil {
		t.Fatal(err)
	}
	first := big[:2*mib]
	if off, err := s.Uploads().AppendUpload("r", id, 0, bytes.NewReader(first)); err != nil || off != int64(len(first)) {
		t.Fatalf("first chunk: %d %v", off, err)
	}
	off, err := s.Uploads().AppendUpload("r", id, int64(len(first)), bytes.NewReader(big[len(first):]))
	if !errors.Is(err, ErrStorageFull) || off != int64(len(first)) {
		t.Fatalf("chunk over the floor: offset %d, %v; want %d and ErrStorageFull", off, err, len(first))
	}
	if st, err := os.Stat(filepath.Join(dir, "ingest", id)); err != nil || st.Size() != int64(len(first)) {
		t.Fatalf("session file after a refused chunk: %v %v, want %d bytes", st.Size(), err, len(first))
	}
	if got, _ := s.Uploads().UploadStatus("r", id); got != int64(len(first)) {
		t.Fatalf("session offset after a refused chunk: %d", got)
	}

	ffs.avail.Store(200 * mib) // an operator freed space
	s.Maintenance().Space()
	if off, err := s.Uploads().AppendUpload("r", id, int64(len(first)), bytes.NewReader(big[len(first):])); err != nil || off != int64(len(big)) {
		t.Fatalf("retried chunk: %d %v", off, err)
	}
	if _, err := s.Uploads().FinishUpload("r", id, digest.FromBytes(big), nil); err != nil {
		t.Fatalf("finishing: %v", err)
	}
	if got := readBlob(t, s, "r", digest.FromBytes(big)); !bytes.Equal(got, big) {
		t.Fatal("wrong bytes after the retried chunk")
	}
}

// TestSpaceIndexFloor: below the index floor ordinary index writes are
// refused (the process must never make Badger touch a page the filesystem
// cannot back), while deletions, which free space, go on.
func TestSpaceIndexFloor(t *testing.T) {
	ffs := newFakeFS(500*mib, 1024*mib)
	s := openStore(t, t.TempDir(), withFS(ffs, 16*mib))
	defer s.Close()
	pushImage(t, s, "app", "v1", []byte("layer"))
	ffs.avail.Store(8 * mib) // less the index's allocated log (4 MiB): below the floor
	s.Maintenance().Space()
	if err := s.Ping(true); !errors.Is(err, ErrStorageFull) {
		t.Fatalf("index write below its floor: %v", err)
	}
	if _, err := s.Uploads().NewUpload("app"); !errors.Is(err, ErrStorageFull) {
		t.Fatalf("new upload below the index floor: %v", err)
	}
	if err := s.DeleteManifest("app", "v1"); err != nil {
		t.Fatalf("a delete below the index floor: %v", err)
	}
	if err := s.Ping(false); err != nil {
		t.Fatalf("reads below the index floor: %v", err)
	}
}

// TestSpaceReserve: the reserve file is made when there is room, given back
// when something else eats into the floor, and made again later.
func TestSpaceReserve(t *testing.T) {
	dir := t.TempDir()
	ffs := newFakeFS(500*mib, 1024*mib)
	s := openStore(t, dir, withFS(ffs, 32*mib))
	defer s.Close()
	reserve := filepath.Join(dir, reserveName)
	if st, err := os.Stat(reserve); err != nil || st.Size() != reserveSize {
		t.Fatalf("no reserve after opening with room: %v", err)
	}
	ffs.avail.Store(10 * mib) // another process filled the disk
	if sp := s.Maintenance().Space(); sp.Reserve || !sp.Low() {
		t.Fatalf("space report with 10 MiB free: %+v", sp)
	}
	if _, err := os.Stat(reserve); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("reserve kept with the floor eaten: %v", err)
	}
	ffs.avail.Store(300 * mib)
	if sp := s.Maintenance().Space(); !sp.Reserve {
		t.Fatalf("reserve not made again: %+v", sp)
	}
	s.Close()
	// Opening on a full filesystem gives the reserve back first.
	ffs.avail.Store(1 * mib)
	s = openStore(t, dir, withFS(ffs, 32*mib))
	if _, err := os.Stat(reserve); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("reserve kept when opening on a full filesystem: %v", err)
	}
}

// TestUploadCrashLeftover: a crash in the middle of a chunk leaves the
// session file longer than its record; the next chunk cuts it back, and the
// upload completes with the right digest.
func TestUploadCrashLeftover(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir)
	content := bytes.Repeat([]byte("0123456789abcdef"), 100000)
	id, err := s.Uploads().NewUpload("r")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Uploads().AppendUpload("r", id, 0, bytes.NewReader(content[:500000])); err != nil {
		t.Fatal(err)
	}
	s.Close()
	// What a kill -9 during the next PATCH leaves: bytes past the offset.
	f, err := os.OpenFile(filepath.Join(dir, "ingest", id), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Write([]byte("half of a chunk that was never acknowledged"))
	f.Close()
	s = openStore(t, dir)
	defer s.Close()
	if off, _ := s.Uploads().UploadStatus("r", id); off != 500000 {
		t.Fatalf("offset after the crash: %d", off)
	}
	if off, err := s.Uploads().AppendUpload("r", id, 500000, bytes.NewReader(content[500000:])); err != nil || off != int64(len(content)) {
		t.Fatalf("resumed chunk: %d %v", off, err)
	}
	if _, err := s.Uploads().FinishUpload("r", id, digest.FromBytes(content), nil); err != nil {
		t.Fatalf("finishing after the crash: %v", err)
	}
}

// TestFillAsksForRoom: a download that does not fit above the floor asks
// for eviction first, and fails with ErrStorageFull, keeping nothing, when
// that does not free enough.
func TestFillAsksForRoom(t *testing.T) {
	dir := t.TempDir()
	ffs := newFakeFS(40*mib, 1024*mib)
	s := openStore(t, dir, withFS(ffs, 32*mib))
	defer s.Close()
	var asked atomic.Int32
	fills := s.NewFills(FillsOptions{MakeRoom: func(context.Context) error { asked.Add(1); return nil }})
	defer fills.Close()
	content := bytes.Repeat([]byte("L"), 10*mib)
	rd, _, err := fills.Get(t.Context(), "docker.io/library/x", MirroredFrom("docker.io"), digest.FromBytes(content), bytesSource(content, nil))
	if err != nil {
		t.Fatal(err)
	}
	err = rd.Wait(t.Context())
	rd.Close()
	if !errors.Is(err, ErrStorageFull) || asked.Load() != 1 {
		t.Fatalf("fill with no room: %v, eviction asked %d times", err, asked.Load())
	}
	// Eviction that frees space lets the next download through.
	fills2 := s.NewFills(FillsOptions{MakeRoom: func(context.Context) error { ffs.avail.Store(500 * mib); return nil }})
	defer fills2.Close()
	rd, _, err = fills2.Get(t.Context(), "docker.io/library/x", MirroredFrom("docker.io"), digest.FromBytes(content), bytesSource(content, nil))
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	if err := rd.Wait(t.Context()); err != nil {
		t.Fatalf("fill after eviction freed space: %v", err)
	}
}

// TestEvictFreesDeficit: with no quota, an eviction asked to free bytes
// removes least recently used mirrored images until it has.
func TestEvictFreesDeficit(t *testing.T) {
	s := openStore(t, t.TempDir())
	defer s.Close()
	for i, name := range []string{"a", "b", "c"} {
		mirrorImage(t, s, "docker.io/library/"+name, "docker.io", "1", bytes.Repeat([]byte{byte('a' + i)}, mib))
	}
	pushImage(t, s, "mine", "1", bytes.Repeat([]byte("p"), mib))
	rep, err := s.Maintenance().Evict(EvictOptions{Free: mib + mib/2, GC: later(0)})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Freed < mib+mib/2 || len(rep.Tags) < 2 {
		t.Fatalf("asked to free 1.5 MiB: freed %d, evicted %v", rep.Freed, rep.Tags)
	}
	if _, err := s.GetManifest("mine", "1"); err != nil {
		t.Fatalf("pushed image evicted: %v", err)
	}
}

// TestIndexLogsAllocated: the index's write-ahead logs, which Badger
// creates sparse and writes and replays through memory maps, have every
// block allocated, so that neither needs the filesystem again.
func TestIndexLogsAllocated(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir)
	defer s.Close()
	s.Maintenance().Space()
	logs, _ := filepath.Glob(filepath.Join(dir, "index", "*.mem"))
	if len(logs) == 0 {
		t.Fatal("no write-ahead log in the index directory")
	}
	for _, p := range logs {
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if blocks := st.Sys().(*syscall.Stat_t).Blocks * 512; blocks < st.Size() {
			t.Fatalf("%s: %d of %d bytes allocated", p, blocks, st.Size())
		}
	}
}
