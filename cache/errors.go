package cache

import (
	"errors"
	"fmt"

	"github.com/opencontainers/go-digest"
	"github.com/wharf-registry/wharf/cache/blobs"
)

// Error categories returned by the store. Callers test them with errors.Is;
// the HTTP layer maps each to one OCI error code.
var (
	ErrBlobUnknown     = blobs.ErrBlobUnknown
	ErrManifestUnknown = errors.New("manifest unknown")
	ErrNameUnknown     = errors.New("repository unknown")
	ErrUploadUnknown   = errors.New("upload unknown")
	ErrDigestInvalid   = blobs.ErrDigestInvalid
	ErrDigestMismatch  = blobs.ErrDigestMismatch
	ErrSizeInvalid     = blobs.ErrSizeInvalid
	ErrManifestInvalid = errors.New("manifest invalid")
	ErrManifestTooBig  = errors.New("manifest too large")
	// ErrStorageFull: the filesystem holding the data directory is full.
	ErrStorageFull = blobs.ErrStorageFull
	// ErrBlobStoreUnavailable: the object store holding the blobs did
	// not answer (or failed); nothing was stored.
	ErrBlobStoreUnavailable = blobs.ErrStoreUnavailable
	// ErrInUse: another process holds the data directory.
	ErrInUse = errors.New("data directory is in use by another process")
	// ErrManifestBlobUnknown is wrapped by *MissingRefError.
	ErrManifestBlobUnknown = errors.New("manifest references unknown content")
)

// RangeError reports an upload chunk that does not start where the session
// currently ends.
type RangeError struct{ Offset int64 }

func (e *RangeError) Error() string {
	return fmt.Sprintf("chunk out of order: upload is at offset %d", e.Offset)
}

// MissingRefError names the first descriptor of a manifest whose content is
// not in the repository.
type MissingRefError struct{ Digest digest.Digest }

func (e *MissingRefError) Error() string {
	return fmt.Sprintf("manifest references unknown content %s", e.Digest)
}

func (e *MissingRefError) Unwrap() error { return ErrManifestBlobUnknown }

func invalidManifest(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrManifestInvalid, fmt.Sprintf(format, args...))
}
