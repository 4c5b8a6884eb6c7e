package cache

import "github.com/wharf-registry/wharf/cache/blobs"

// The byte store the store is over (package blobs); a backend implements
// it.
type (
	Blobs        = blobs.Blobs
	BlobInfo     = blobs.BlobInfo
	Appender     = blobs.Appender
	ReadAtCloser = blobs.ReadAtCloser
)
