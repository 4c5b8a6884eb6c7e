package cache

import (
	"bytes"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/wharf-registry/wharf/cache/blobs"
	"github.com/wharf-registry/wharf/cache/blobs/fileblobs"
	"github.com/wharf-registry/wharf/cache/index"
	"github.com/wharf-registry/wharf/cache/index/badgerindex"
)

func openStore(t *testing.T, dir string, opts ...func(*Options)) *Store {
	t.Helper()
	o := Options{Dir: dir, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	for _, f := range opts {
		f(&o)
	}
	s, err := testOpen(o)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// testOpen is Open with the single box's backends for what o leaves unset
// (stores.Local, which this package's tests cannot import).
func testOpen(o Options) (*Store, error) {
	if o.Index == nil && o.LocalIndex == nil {
		o.LocalIndex = func(dir string, readOnly bool) (index.Index, error) {
			return badgerindex.Open(dir, badgerindex.Options{Logger: o.Logger, NoSync: o.NoSync, ReadOnly: readOnly})
		}
	}
	if o.Blobs == nil && o.OpenBlobs == nil {
		o.OpenBlobs = func(env BlobsEnv) (blobs.Blobs, error) {
			return fileblobs.New(env.Dir, fileblobs.Options{NoSync: env.NoSync, Room: env.Room})
		}
	}
	return Open(o)
}

func readBlob(t *testing.T, s *Store, repo string, d digest.Digest) []byte {
	t.Helper()
	rc, _, err := s.OpenBlob(repo, d)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestUploadSurvivesRestart appends part of a blob, closes the store, and
// finishes the session after reopening, with sha256 (kept hash state) and
// sha512 (re-read of the session file).
func TestUploadSurvivesRestart(t *testing.T) {
	for _, alg := range []digest.Algorithm{digest.SHA256, digest.SHA512} {
		t.Run(alg.String(), func(t *testing.T) {
			dir := t.TempDir()
			content := bytes.Repeat([]byte("0123456789"), 50000)
			s := openStore(t, dir)
			id, err := s.Uploads().NewUpload("r")
			if err != nil {
				t.Fatal(err)
			}
			if off, err := s.Uploads().AppendUpload("r", id, 0, bytes.NewReader(content[:123456])); err != nil || off != 123456 {
				t.Fatalf("append: %d %v", off, err)
			}
			s.Close()
			s = openStore(t, dir)
			defer s.Close()
			if off, err := s.Uploads().UploadStatus("r", id); err != nil || off != 123456 {
				t.Fatalf("status after restart: %d %v", off, err)
			}
			var rng *RangeError
			if _, err := s.Uploads().AppendUpload("r", id, 5, strings.NewReader("x")); !errors.As(err, &rng) || rng.Offset != 123456 {
				t.Fatalf("out-of-order chunk: %v", err)
			}
			d := alg.FromBytes(content)
			if size, err := s.Uploads().FinishUpload("r", id, d, bytes.NewReader(content[123456:])); err != nil || size != int64(len(content)) {
				t.Fatalf("finish: %d %v", size, err)
			}
			if got := readBlob(t, s, "r", d); !bytes.Equal(got, content) {
				t.Fatal("blob content differs")
			}
			if _, err := s.Uploads().UploadStatus("r", id); !errors.Is(err, ErrUploadUnknown) {
				t.Fatalf("finished session still known: %v", err)
			}
		})
	}
}

// TestCleanIngests removes one-shot temp files and expired sessions at
// start-up and keeps live sessions.
func TestCleanIngests(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir)
	live, _ := s.Uploads().NewUpload("r")
	s.Uploads().AppendUpload("r", live, 0, strings.NewReader("live"))
	s.Close()
	os.WriteFile(filepath.Join(dir, "ingest", "tmp-leftover"), []byte("partial"), 0o600)
	os.WriteFile(filepath.Join(dir, "ingest", "up-nosession"), []byte("partial"), 0o600)

	s = openStore(t, dir)
	ids, _ := s.Maintenance().Blobs().Ingests()
	if len(ids) != 1 || ids[0] != live {
		t.Fatalf("after start-up cleanup ingest holds %v, want only %s", ids, live)
	}
	s.Close()

	s = openStore(t, dir, func(o *Options) { o.UploadTTL = time.Nanosecond })
	defer s.Close()
	if ids, _ := s.Maintenance().Blobs().Ingests(); len(ids) != 0 {
		t.Fatalf("expired session kept: %v", ids)
	}
	if _, err := s.Uploads().UploadStatus("r", live); !errors.Is(err, ErrUploadUnknown) {
		t.Fatalf("expired session still known: %v", err)
	}
}

func TestPutBlobRejects(t *testing.T) {
	s := openStore(t, t.TempDir())
	defer s.Close()
	content := []byte("content")
	d := digest.FromBytes(content)
	if err := s.Uploads().PutBlob("r", d, 3, bytes.NewReader(content)); !errors.Is(err, ErrSizeInvalid) {
		t.Fatalf("size mismatch: %v", err)
	}
	if err := s.Uploads().PutBlob("r", digest.FromString("other"), -1, bytes.NewReader(content)); !errors.Is(err, ErrDigestMismatch) {
		t.Fatalf("digest mismatch: %v", err)
	}
	if _, err := s.Maintenance().Blobs().Stat(d); !errors.Is(err, ErrBlobUnknown) {
		t.Fatalf("rejected blob was committed: %v", err)
	}
	if ids, _ := s.Maintenance().Blobs().Ingests(); len(ids) != 0 {
		t.Fatalf("rejected blob left ingest files %v", ids)
	}
}

// TestPutBlobFile takes a file on the data directory's filesystem in place
// (the same inode, nothing copied) once its bytes hash to the digest; a
// file that does not is refused, and the file itself stays untouched.
func TestPutBlobFile(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir)
	defer s.Close()
	src := filepath.Join(dir, "outside")
	content := bytes.Repeat([]byte("registry2"), 1000)
	if err := os.WriteFile(src, content, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Uploads().PutBlobFile("r", digest.FromString("other"), src); !errors.Is(err, ErrDigestMismatch) {
		t.Fatalf("a file that does not hash to the digest: %v", err)
	}
	if ids, _ := s.Maintenance().Blobs().Ingests(); len(ids) != 0 {
		t.Fatalf("a refused file left ingest entries %v", ids)
	}
	d := digest.FromBytes(content)
	linked, err := s.Uploads().PutBlobFile("r", d, src)
	if err != nil || !linked {
		t.Fatalf("PutBlobFile: linked %v, %v", linked, err)
	}
	if size, err := s.StatBlob("r", d); err != nil || size != int64(len(content)) {
		t.Fatalf("the blob after PutBlobFile: %d, %v", size, err)
	}
	a, _ := os.Stat(src)
	b, err := os.Stat(filepath.Join(dir, "blobs", "sha256", d.Encoded()[:2], d.Encoded()))
	if err != nil || !os.SameFile(a, b) {
		t.Fatalf("the blob is not the same file as its source (copied, not linked): %v", err)
	}
	if got, _ := os.ReadFile(src); !bytes.Equal(got, content) {
		t.Fatal("the source file changed")
	}
}

// TestConcurrentSameBlob pushes one digest from many writers into many
// repositories at once: all succeed, one file, every repo linked.
func TestConcurrentSameBlob(t *testing.T) {
	s := openStore(t, t.TempDir())
	defer s.Close()
	content := bytes.Repeat([]byte("layer"), 100000)
	d := digest.FromBytes(content)
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for i := 0; i < 16; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- s.Uploads().PutBlob("r"+string(rune('a'+i)), d, int64(len(content)), bytes.NewReader(content))
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < 16; i++ {
		if !bytes.Equal(readBlob(t, s, "r"+string(rune('a'+i)), d), content) {
			t.Fatalf("repo %d reads wrong content", i)
		}
	}
}

// TestTagPushKeepsSha512 checks that a tag pushed for bytes the repository
// already holds under their sha512 digest points at that digest.
func TestTagPushKeepsSha512(t *testing.T) {
	s := openStore(t, t.TempDir())
	defer s.Close()
	cfg := []byte("{}")
	if err := s.Uploads().PutBlob("r", digest.SHA512.FromBytes(cfg), -1, bytes.NewReader(cfg)); err != nil {
		t.Fatal(err)
	}
	body := []byte(`{"schemaVersion":2,"mediaType":"` + MediaTypeOCIManifest + `","config":{"mediaType":"application/json","digest":"` +
		digest.SHA512.FromBytes(cfg).String() + `","size":2},"layers":[]}`)
	want := digest.SHA512.FromBytes(body)
	if _, err := s.PutManifest("r", want, nil, MediaTypeOCIManifest, body); err != nil {
		t.Fatal(err)
	}
	m, err := s.PutManifest("r", "", []string{"v1"}, MediaTypeOCIManifest, body)
	if err != nil || m.Digest != want {
		t.Fatalf("tag push digest %v (%v), want %s", m, err, want)
	}
	if got, _ := s.ResolveTag("r", "v1"); got != want {
		t.Fatalf("tag points at %s", got)
	}
}

func TestExpireUploads(t *testing.T) {
	s := openStore(t, t.TempDir(), func(o *Options) { o.UploadTTL = time.Hour })
	defer s.Close()
	old, _ := s.Uploads().NewUpload("r")
	s.Uploads().AppendUpload("r", old, 0, strings.NewReader("stale"))
	fresh, _ := s.Uploads().NewUpload("r")
	n, err := s.Uploads().ExpireUploads(time.Now().Add(30 * time.Minute))
	if err != nil || n != 0 {
		t.Fatalf("nothing is idle for an hour yet: %d %v", n, err)
	}
	s.Uploads().AppendUpload("r", fresh, 0, strings.NewReader("active"))
	n, err = s.Uploads().ExpireUploads(time.Now().Add(61 * time.Minute))
	if err != nil || n != 2 {
		t.Fatalf("expired %d sessions (%v), want 2", n, err)
	}
	if _, err := s.Uploads().UploadStatus("r", old); !errors.Is(err, ErrUploadUnknown) {
		t.Fatalf("expired session still known: %v", err)
	}
	if ids, _ := s.Maintenance().Blobs().Ingests(); len(ids) != 0 {
		t.Fatalf("expired session files kept: %v", ids)
	}
}

func TestDataDirLocked(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir)
	if _, err := testOpen(Options{Dir: dir}); !errors.Is(err, ErrInUse) {
		t.Fatalf("second open: %v, want ErrInUse", err)
	}
	s.Close()
	s2, err := testOpen(Options{Dir: dir})
	if err != nil {
		t.Fatalf("open after close: %v", err)
	}
	s2.Close()
}
