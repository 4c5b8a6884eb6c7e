package cache

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/opencontainers/go-digest"
)

// Blobs is the byte store behind the index: committed content addressed by
// digest, and named ingest files that become content on Commit. It knows
// nothing of repositories or verification; the Store hashes what it writes.
// A future object-store backend implements the same methods.
type Blobs interface {
	// Open returns the content of d and its size, or ErrBlobUnknown.
	Open(d digest.Digest) (io.ReadSeekCloser, int64, error)
	// Stat returns the size of d, or ErrBlobUnknown.
	Stat(d digest.Digest) (int64, error)
	// Append opens ingest file id for appending, creating it when absent.
	Append(id string) (Appender, error)
	// ReadIngest opens ingest file id for reading. The handle stays valid
	// after the ingest is committed or discarded.
	ReadIngest(id string) (ReadAtCloser, error)
	// Commit makes ingest file id durable and visible as d. Content that is
	// already present is success (the ingest is dropped).
	Commit(id string, d digest.Digest) error
	// Discard removes ingest file id; a missing one is not an error.
	Discard(id string) error
	// Ingests lists the ids of all ingest files.
	Ingests() ([]string, error)
	// Delete removes committed content; a missing one is not an error.
	Delete(d digest.Digest) error
	// Walk calls fn for every piece of committed content (and for every
	// stray entry, with an empty Digest), in no particular order.
	Walk(fn func(BlobInfo) error) error
	// Quarantine moves committed content d aside, out of reach of Open,
	// for an operator to inspect.
	Quarantine(d digest.Digest) error
}

// BlobInfo describes one entry of a blob store's committed content.
type BlobInfo struct {
	Digest  digest.Digest // empty for an entry whose name is no digest
	Name    string        // where it is, for messages
	Size    int64
	ModTime time.Time
}

// ReadAtCloser reads an ingest file sequentially or at offsets.
type ReadAtCloser interface {
	io.Reader
	io.ReaderAt
	io.Closer
}

// Appender writes at the end of an ingest file.
type Appender interface {
	io.WriteCloser
	// Size is the ingest file's length, including what was written.
	Size() int64
	// Truncate cuts the ingest file back to size bytes (never longer):
	// what a failed write left is not kept.
	Truncate(size int64) error
}

var _ Blobs = (*FileBlobs)(nil)

// FileBlobs keeps blobs as files under a directory. All files, ingest and
// committed, are on one filesystem so that Commit is a rename. It is safe
// for concurrent use; callers serialise use of one ingest id.
type FileBlobs struct {
	root   string
	noSync bool   // see Options.NoSync
	space  *space // refuses writes that would fill the filesystem; nil: none
}

// NewFileBlobs creates the blobs/ and ingest/ directories under root.
func NewFileBlobs(root string) (*FileBlobs, error) {
	for _, d := range []string{"blobs", "ingest"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o750); err != nil {
			return nil, err
		}
	}
	return &FileBlobs{root: root}, nil
}

// Path is where committed content d lives. d must be valid (digest.Parse),
// so that no path can be built from a hostile string.
func (f *FileBlobs) Path(d digest.Digest) string {
	h := d.Encoded()
	return filepath.Join(f.root, "blobs", string(d.Algorithm()), h[:2], h)
}

func (f *FileBlobs) ingestPath(id string) (string, error) {
	if id == "" || strings.ContainsAny(id, `/\`) || id == "." || id == ".." {
		return "", fmt.Errorf("bad ingest id %q", id)
	}
	return filepath.Join(f.root, "ingest", id), nil
}

func (f *FileBlobs) Open(d digest.Digest) (io.ReadSeekCloser, int64, error) {
	if err := d.Validate(); err != nil {
		return nil, 0, ErrDigestInvalid
	}
	fh, err := os.Open(f.Path(d))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, 0, ErrBlobUnknown
	} else if err != nil {
		return nil, 0, err
	}
	st, err := fh.Stat()
	if err != nil {
		fh.Close()
		return nil, 0, err
	}
	return fh, st.Size(), nil
}

func (f *FileBlobs) Stat(d digest.Digest) (int64, error) {
	if err := d.Validate(); err != nil {
		return 0, ErrDigestInvalid
	}
	st, err := os.Stat(f.Path(d))
	if errors.Is(err, fs.ErrNotExist) {
		return 0, ErrBlobUnknown
	} else if err != nil {
		return 0, err
	}
	return st.Size(), nil
}

type fileAppender struct {
	*os.File
	size  int64
	space *space
}

func (a *fileAppender) Write(p []byte) (int, error) {
	if a.space != nil {
		if err := a.space.blobWrite(int64(len(p))); err != nil {
			return 0, err
		}
	}
	n, err := a.File.Write(p)
	a.size += int64(n)
	return n, noSpace(err)
}

func (a *fileAppender) Truncate(size int64) error {
	if size >= a.size {
		return nil
	}
	if err := a.File.Truncate(size); err != nil {
		return err
	}
	a.size = size
	return nil
}

// noSpace marks a full filesystem (or quota) as ErrStorageFull.
func noSpace(err error) error {
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return fmt.Errorf("%w: %w", ErrStorageFull, err)
	}
	return err
}

func (a *fileAppender) Size() int64 { return a.size }

func (f *FileBlobs) Append(id string) (Appender, error) {
	p, err := f.ingestPath(id)
	if err != nil {
		return nil, err
	}
	fh, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
	if err != nil {
		return nil, err
	}
	st, err := fh.Stat()
	if err != nil {
		fh.Close()
		return nil, err
	}
	return &fileAppender{File: fh, size: st.Size(), space: f.space}, nil
}

func (f *FileBlobs) ReadIngest(id string) (ReadAtCloser, error) {
	p, err := f.ingestPath(id)
	if err != nil {
		return nil, err
	}
	return os.Open(p)
}

func (f *FileBlobs) Commit(id string, d digest.Digest) error {
	if err := d.Validate(); err != nil {
		return ErrDigestInvalid
	}
	src, err := f.ingestPath(id)
	if err != nil {
		return err
	}
	dst := f.Path(d)
	if _, err := os.Stat(dst); err == nil {
		return f.Discard(id)
	}
	if !f.noSync {
		if err := syncFile(src); err != nil {
			return noSpace(err)
		}
	}
	dir := filepath.Dir(dst)
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return noSpace(err)
	}
	if err := os.Rename(src, dst); err != nil {
		return noSpace(err)
	}
	if f.noSync {
		return nil
	}
	return noSpace(syncFile(dir))
}

func syncFile(path string) error {
	fh, err := os.Open(path)
	if err != nil {
		return err
	}
	defer fh.Close()
	return fh.Sync()
}

func (f *FileBlobs) Discard(id string) error {
	p, err := f.ingestPath(id)
	if err != nil {
		return err
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

func (f *FileBlobs) Ingests() ([]string, error) {
	entries, err := os.ReadDir(filepath.Join(f.root, "ingest"))
	if err != nil {
		return nil, err
	}
	ids := make([]string, 0, len(entries))
	for _, e := range entries {
		ids = append(ids, e.Name())
	}
	return ids, nil
}

// Walk lists blobs/<alg>/<xx>/<hex>.
func (f *FileBlobs) Walk(fn func(BlobInfo) error) error {
	return filepath.WalkDir(filepath.Join(f.root, "blobs"), func(p string, e fs.DirEntry, err error) error {
		if err != nil || e.IsDir() {
			return err
		}
		info, err := e.Info()
		if errors.Is(err, fs.ErrNotExist) {
			return nil // removed while walking
		} else if err != nil {
			return err
		}
		alg := filepath.Base(filepath.Dir(filepath.Dir(p)))
		d := digest.NewDigestFromEncoded(digest.Algorithm(alg), e.Name())
		if ValidateDigest(d) != nil || f.Path(d) != p {
			d = ""
		}
		return fn(BlobInfo{Digest: d, Name: p, Size: info.Size(), ModTime: info.ModTime()})
	})
}

// Quarantine moves d to <root>/quarantine/<alg>-<hex>.
func (f *FileBlobs) Quarantine(d digest.Digest) error {
	if err := d.Validate(); err != nil {
		return ErrDigestInvalid
	}
	q := filepath.Join(f.root, "quarantine", string(d.Algorithm())+"-"+d.Encoded())
	if err := os.MkdirAll(filepath.Dir(q), 0o750); err != nil {
		return err
	}
	return os.Rename(f.Path(d), q)
}

func (f *FileBlobs) Delete(d digest.Digest) error {
	if err := d.Validate(); err != nil {
		return ErrDigestInvalid
	}
	if err := os.Remove(f.Path(d)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}
