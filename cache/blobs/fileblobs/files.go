// Package fileblobs keeps blobs as files under the data directory: the
// single box's store, and the ingest space and local copies of a remote one.
package fileblobs

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/opencontainers/go-digest"

	"github.com/wharf-registry/wharf/cache/blobs"
)

var (
	_ blobs.Blobs  = (*Files)(nil)
	_ blobs.Linker = (*Files)(nil)
)

// Files keeps blobs as files under a directory. All files, ingest and
// committed, are on one filesystem so that Commit is a rename. It is safe
// for concurrent use; callers serialise use of one ingest id.
type Files struct {
	root string
	o    Options
}

// Options configures Files.
type Options struct {
	// NoSync skips every fsync, for bulk loading by tools and benchmarks:
	// a crash may lose what was written. Never for serving.
	NoSync bool
	// Room refuses writes that would fill the filesystem; nil: none.
	Room blobs.Room
}

// New creates the blobs/ and ingest/ directories under root.
func New(root string, o Options) (*Files, error) {
	for _, d := range []string{"blobs", "ingest"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o750); err != nil {
			return nil, err
		}
	}
	return &Files{root: root, o: o}, nil
}

// Root is the directory the files are under.
func (f *Files) Root() string { return f.root }

// Path is where committed content d lives. d must be valid (digest.Parse),
// so that no path can be built from a hostile string.
func (f *Files) Path(d digest.Digest) string {
	h := d.Encoded()
	return filepath.Join(f.root, "blobs", string(d.Algorithm()), h[:2], h)
}

// IngestPath is where ingest file id lives.
func (f *Files) IngestPath(id string) (string, error) {
	if id == "" || strings.ContainsAny(id, `/\`) || id == "." || id == ".." {
		return "", fmt.Errorf("bad ingest id %q", id)
	}
	return filepath.Join(f.root, "ingest", id), nil
}

func (f *Files) Open(d digest.Digest) (io.ReadSeekCloser, int64, error) {
	if err := d.Validate(); err != nil {
		return nil, 0, blobs.ErrDigestInvalid
	}
	fh, err := os.Open(f.Path(d))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, 0, blobs.ErrBlobUnknown
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

func (f *Files) Stat(d digest.Digest) (int64, error) {
	if err := d.Validate(); err != nil {
		return 0, blobs.ErrDigestInvalid
	}
	st, err := os.Stat(f.Path(d))
	if errors.Is(err, fs.ErrNotExist) {
		return 0, blobs.ErrBlobUnknown
	} else if err != nil {
		return 0, err
	}
	return st.Size(), nil
}

type fileAppender struct {
	*os.File
	size int64
	room blobs.Room
}

func (a *fileAppender) Write(p []byte) (int, error) {
	if a.room != nil {
		if err := a.room.BlobWrite(int64(len(p))); err != nil {
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

// noSpace marks a full filesystem (or quota) as blobs.ErrStorageFull.
func noSpace(err error) error {
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return fmt.Errorf("%w: %w", blobs.ErrStorageFull, err)
	}
	return err
}

func (a *fileAppender) Size() int64 { return a.size }

func (f *Files) Append(id string) (blobs.Appender, error) {
	p, err := f.IngestPath(id)
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
	return &fileAppender{File: fh, size: st.Size(), room: f.o.Room}, nil
}

// LinkIngest hard-links the file at path as ingest file id.
func (f *Files) LinkIngest(id, path string) error {
	p, err := f.IngestPath(id)
	if err != nil {
		return err
	}
	return os.Link(path, p)
}

func (f *Files) ReadIngest(id string) (blobs.ReadAtCloser, error) {
	p, err := f.IngestPath(id)
	if err != nil {
		return nil, err
	}
	return os.Open(p)
}

func (f *Files) Commit(id string, d digest.Digest) error {
	if err := d.Validate(); err != nil {
		return blobs.ErrDigestInvalid
	}
	src, err := f.IngestPath(id)
	if err != nil {
		return err
	}
	dst := f.Path(d)
	if _, err := os.Stat(dst); err == nil {
		return f.Discard(id)
	}
	if !f.o.NoSync {
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
	if f.o.NoSync {
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

func (f *Files) Discard(id string) error {
	p, err := f.IngestPath(id)
	if err != nil {
		return err
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

func (f *Files) Ingests() ([]string, error) {
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
func (f *Files) Walk(fn func(blobs.BlobInfo) error) error {
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
		if blobs.ValidDigest(d) != nil || f.Path(d) != p {
			d = ""
		}
		return fn(blobs.BlobInfo{Digest: d, Name: p, Size: info.Size(), ModTime: info.ModTime()})
	})
}

// Quarantine moves d to <root>/quarantine/<alg>-<hex>.
func (f *Files) Quarantine(d digest.Digest) error {
	if err := d.Validate(); err != nil {
		return blobs.ErrDigestInvalid
	}
	q := filepath.Join(f.root, "quarantine", string(d.Algorithm())+"-"+d.Encoded())
	if err := os.MkdirAll(filepath.Dir(q), 0o750); err != nil {
		return err
	}
	return os.Rename(f.Path(d), q)
}

func (f *Files) Delete(d digest.Digest) error {
	if err := d.Validate(); err != nil {
		return blobs.ErrDigestInvalid
	}
	if err := os.Remove(f.Path(d)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}
