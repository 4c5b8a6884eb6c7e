// Package blobs declares the byte store behind the content store's index
// and the capabilities an implementation may add. It imports nothing of
// Wharf: the store (package cache) uses it, each backend (fileblobs,
// s3blobs) implements it, and cmd chooses one. blobstest holds the
// conformance suite every implementation runs.
package blobs

import (
	"errors"
	"io"
	"time"

	"github.com/opencontainers/go-digest"
)

// Blobs is the byte store behind the index: committed content addressed by
// digest, and named ingest files that become content on Commit. It knows
// nothing of repositories or verification; the Store hashes what it writes.
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

// Errors a backend returns; the store's errors of the same names are these.
var (
	ErrBlobUnknown    = errors.New("blob unknown")
	ErrDigestInvalid  = errors.New("digest invalid")
	ErrDigestMismatch = errors.New("digest does not match content")
	ErrSizeInvalid    = errors.New("size does not match content")
	// ErrStorageFull: the filesystem holding the data directory is full.
	ErrStorageFull = errors.New("storage full")
	// ErrStoreUnavailable: the object store holding the blobs did not
	// answer (or failed); nothing was stored.
	ErrStoreUnavailable = errors.New("object store unavailable")
)

// ValidDigest checks that d is well formed and of an algorithm the store
// keeps (sha256, sha512): only such digests name files or objects.
func ValidDigest(d digest.Digest) error {
	if err := d.Validate(); err != nil {
		return ErrDigestInvalid
	}
	if a := d.Algorithm(); a != digest.SHA256 && a != digest.SHA512 {
		return ErrDigestInvalid
	}
	return nil
}

// Room is the data directory's free-space guard: a backend writing there
// asks it before each write of blob bytes (cache's space.go).
type Room interface {
	// BlobWrite refuses (ErrStorageFull) a write of n bytes that would
	// leave less than the floor free.
	BlobWrite(n int64) error
}

// Linker is a store on a filesystem that can take in a file that is there
// already without copying its bytes (a hard link): the import of
// registry:2's storage in place.
type Linker interface {
	// LinkIngest makes ingest file id another name of the file at path.
	// An error (another filesystem, no permission) leaves nothing behind;
	// the caller copies instead.
	LinkIngest(id, path string) error
}

// The capabilities below are what a store of blobs shared by a cluster
// adds; the content store asks for them once, when it opens.

// LocalCommitter keeps a blob another node stores as a local copy only.
type LocalCommitter interface {
	CommitLocal(id string, d digest.Digest) error
}

// LocalCopies is a remote store that keeps local copies of its blobs.
type LocalCopies interface {
	// TrimLocal keeps the local copies within max bytes (least recently
	// used go first) and returns the bytes freed.
	TrimLocal(max int64) (int64, error)
	// LocalBytes is how many bytes the local copies take.
	LocalBytes() (int64, error)
}

// Remote is a store on the network: it says where it is and whether it
// answers.
type Remote interface {
	String() string // where, without credentials
	Ping() error
}
