package mirror

import (
	"context"
	"io"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/wharf-registry/wharf/cache"
	"github.com/wharf-registry/wharf/upstream"
)

// The store methods each handler group needs; *cache.Store provides them.

type manifestStore interface {
	PutManifest(repo string, want digest.Digest, tags []string, contentType string, body []byte) (*cache.Manifest, error)
	GetManifest(repo, ref string) (*cache.Manifest, error)
	DeleteManifest(repo, ref string) error
}

type blobStore interface {
	StatBlob(repo string, d digest.Digest) (int64, error)
	OpenBlob(repo string, d digest.Digest) (io.ReadSeekCloser, int64, error)
	DeleteBlob(repo string, d digest.Digest) error
}

type uploadStore interface {
	NewUpload(repo string) (string, error)
	UploadStatus(repo, id string) (int64, error)
	AppendUpload(repo, id string, start int64, r io.Reader) (int64, error)
	FinishUpload(repo, id string, d digest.Digest, r io.Reader) (int64, error)
	CancelUpload(repo, id string) error
	PutBlob(repo string, d digest.Digest, size int64, r io.Reader) error
	MountBlob(from, to string, d digest.Digest) (int64, error)
}

type listStore interface {
	Tags(repo string, n int, last string) ([]string, bool, error)
	Catalog(n int, last string) ([]string, bool, error)
	Referrers(repo string, d digest.Digest, artifactType string) ([]cache.Descriptor, error)
}

type mirrorStore interface {
	TagInfo(repo, tag string) (digest.Digest, time.Time, error)
	TouchTag(repo, tag string, d digest.Digest, checked time.Time) error
	PutMirroredManifest(repo string, d digest.Digest, tag, mediaType string, body []byte, checked time.Time) (*cache.Manifest, error)
	HasRepository(repo string) (bool, error)
	Blobs() cache.Blobs
	NewFill(repo string, d digest.Digest) (*cache.Fill, error)
	LinkExisting(repo string, d digest.Digest) (int64, error)
	Touch(repo, ref string)
	Ping(write bool) error
}

// Store is everything the registry API needs from the content store.
type Store interface {
	manifestStore
	blobStore
	uploadStore
	listStore
	mirrorStore
}

// Upstream is what the pull-through mirror needs from upstream registries;
// *upstream.Client provides it.
type Upstream interface {
	Allowed(registry string) bool
	Resolve(ctx context.Context, registry, repo, ref string) (upstream.Descriptor, error)
	Manifest(ctx context.Context, registry, repo string, desc upstream.Descriptor, maxSize int64) ([]byte, error)
	Blob(ctx context.Context, registry, repo string, d digest.Digest) (io.ReadSeekCloser, int64, error)
	HasBlob(ctx context.Context, registry, repo string, d digest.Digest) error
}

var _ Upstream = (*upstream.Client)(nil)

var _ Store = (*cache.Store)(nil)
