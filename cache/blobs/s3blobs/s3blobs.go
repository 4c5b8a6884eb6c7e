// Package s3blobs keeps committed blobs in an S3-compatible bucket, with
// local files in front (ingest space and local copies). It implements
// blobs.Blobs and the capabilities a cluster uses: LocalCommitter,
// LocalCopies and Remote.
package s3blobs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/opencontainers/go-digest"
	"github.com/wharf-registry/wharf/cache/blobs"
)

var (
	_ blobs.Blobs          = (*Store)(nil)
	_ blobs.LocalCommitter = (*Store)(nil)
	_ blobs.LocalCopies    = (*Store)(nil)
	_ blobs.Remote         = (*Store)(nil)
)

// Store keeps committed blobs in an S3-compatible bucket, written once
// under their digest after the Store verified them and never overwritten,
// with local files (fileblobs) in front: ingest files live there, and so does a
// copy of every blob this node wrote or read (safe to wipe: a missing
// local copy is fetched again, and checked against its digest, on the
// next Open).
type Store struct {
	local Local
	cl    *minio.Client
	o     Options

	pingMu  sync.Mutex
	pinged  time.Time // last Ping's answer, kept pingCache
	pingErr error

	unconditional atomic.Bool // the store refused If-None-Match
	health        *s3Health

	usedMu sync.Mutex
	used   map[digest.Digest]time.Time // last use of local copies since start (else their file's time)
}

// pingCache is how long a Ping's answer stands: the status page and the
// metrics ask often.
const pingCache = 10 * time.Second

// Ping reports whether the bucket answers (within 3 s).
func (b *Store) Ping() error {
	if err := b.health.ready(); err != nil {
		return err
	}
	b.pingMu.Lock()
	defer b.pingMu.Unlock()
	if time.Since(b.pinged) < pingCache {
		return b.pingErr
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	_, err := b.cl.BucketExists(ctx, b.o.Bucket)
	if err != nil {
		err = fmt.Errorf("%w: %w", blobs.ErrStoreUnavailable, err)
	}
	b.pinged, b.pingErr = time.Now(), err
	return err
}

// s3Timeout bounds one metadata request to the object store.
const s3Timeout = 30 * time.Second

// New connects to the bucket of o (which must exist) with local in
// front.
func New(local Local, o Options) (*Store, error) {
	if o.PartSize == 0 {
		o.PartSize = 16 << 20
	}
	health := &s3Health{log: o.Logger}
	if health.log == nil {
		health.log = slog.Default()
	}
	cl, err := minio.New(o.Endpoint, &minio.Options{Creds: credentials.NewStaticV4(o.AccessKey, o.SecretKey, ""),
		Secure: !o.Insecure, Region: o.Region, Transport: newS3Transport(health),
		MaxRetries: 2}) // not minio's 10: an unreachable store must answer 503 in seconds
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), s3Timeout)
	defer cancel()
	ok, err := cl.BucketExists(ctx, o.Bucket)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", blobs.ErrStoreUnavailable, o.Endpoint, err)
	}
	if !ok {
		return nil, fmt.Errorf("object store %s: no bucket %q (create it first)", o.Endpoint, o.Bucket)
	}
	b := &Store{local: local, cl: cl, o: o, health: health}
	if err := b.claim(ctx); err != nil {
		return nil, err
	}
	health.probe = func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		_, err := cl.BucketExists(ctx, o.Bucket)
		return err
	}
	return b, nil
}

// claim makes the bucket's prefix this data directory's: until the index
// is shared, another node's GC would collect what it does not know, so
// two directories never share a prefix. The claim is an object holding
// an id kept in the directory.
func (b *Store) claim(ctx context.Context) error {
	idFile := filepath.Join(b.local.Root(), "blob-store-owner")
	id, err := os.ReadFile(idFile)
	if b.o.Owner != "" {
		id, err = []byte(b.o.Owner), nil
	} else if errors.Is(err, os.ErrNotExist) {
		id = []byte(uuid.NewString())
		if err = os.WriteFile(idFile, id, 0o640); err != nil {
			return err
		}
	} else if err != nil {
		return err
	}
	key := b.o.Prefix + "owner"
	obj, err := b.cl.GetObject(ctx, b.o.Bucket, key, minio.GetObjectOptions{})
	if err != nil {
		return fmt.Errorf("%w: %w", blobs.ErrStoreUnavailable, err)
	}
	held, err := io.ReadAll(io.LimitReader(obj, 256))
	obj.Close()
	switch {
	case err == nil && string(held) == string(id):
		return nil
	case err == nil:
		return fmt.Errorf("object store: s3://%s/%s belongs to another data directory or cluster (%s holds %q): give each its own prefix; nodes share a bucket's prefix only when they share the index", b.o.Bucket, b.o.Prefix, key, held)
	case !notFound(err):
		return fmt.Errorf("%w: %w", blobs.ErrStoreUnavailable, err)
	}
	_, err = b.cl.PutObject(ctx, b.o.Bucket, key, strings.NewReader(string(id)), int64(len(id)), minio.PutObjectOptions{ContentType: "text/plain"})
	return err
}

func (b *Store) key(d digest.Digest) string {
	return b.o.Prefix + "blobs/" + string(d.Algorithm()) + "/" + d.Encoded()
}

func notFound(err error) bool {
	code := minio.ToErrorResponse(err).Code
	return code == "NoSuchKey" || code == "NotFound"
}

// Open returns the local copy of d or, when there is none, the object
// streamed from the bucket as it arrives (and kept as the local copy once
// verified): the last bytes are held back until the whole object hashed
// to d, so a damaged object is an error, never content (see s3Stream).
func (b *Store) Open(d digest.Digest) (io.ReadSeekCloser, int64, error) {
	b.use(d)
	rc, n, err := b.local.Open(d)
	if !errors.Is(err, blobs.ErrBlobUnknown) {
		return rc, n, err
	}
	if err := b.health.ready(); err != nil {
		return nil, 0, err
	}
	obj, err := b.cl.GetObject(context.Background(), b.o.Bucket, b.key(d), minio.GetObjectOptions{})
	if err != nil {
		return nil, 0, fmt.Errorf("%w: %w", blobs.ErrStoreUnavailable, err)
	}
	info, err := obj.Stat()
	if err != nil {
		obj.Close()
		if notFound(err) {
			return nil, 0, blobs.ErrBlobUnknown
		}
		return nil, 0, fmt.Errorf("%w: %w", blobs.ErrStoreUnavailable, err)
	}
	st, err := b.openStream(d, obj, info.Size)
	if err != nil {
		return nil, 0, err
	}
	return st, info.Size, nil
}

func (b *Store) Stat(d digest.Digest) (int64, error) {
	if n, err := b.local.Stat(d); !errors.Is(err, blobs.ErrBlobUnknown) {
		return n, err
	}
	if err := b.health.ready(); err != nil {
		return 0, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), s3Timeout)
	defer cancel()
	info, err := b.cl.StatObject(ctx, b.o.Bucket, b.key(d), minio.StatObjectOptions{})
	if notFound(err) {
		return 0, blobs.ErrBlobUnknown
	} else if err != nil {
		return 0, fmt.Errorf("%w: %w", blobs.ErrStoreUnavailable, err)
	}
	return info.Size, nil
}

func (b *Store) Append(id string) (blobs.Appender, error)         { return b.local.Append(id) }
func (b *Store) ReadIngest(id string) (blobs.ReadAtCloser, error) { return b.local.ReadIngest(id) }
func (b *Store) Discard(id string) error                          { return b.local.Discard(id) }
func (b *Store) Ingests() ([]string, error)                       { return b.local.Ingests() }

// Commit uploads ingest file id as d (multipart above PartSize) unless
// the bucket already has d, then keeps it as the local copy. The bucket
// is written first: what the index will point at is durable there.
func (b *Store) Commit(id string, d digest.Digest) error {
	if err := blobs.ValidDigest(d); err != nil {
		return err
	}
	path, err := b.local.IngestPath(id)
	if err != nil {
		return err
	}
	if err := b.health.ready(); err != nil {
		return err
	}
	ctx := context.Background()
	scx, cancel := context.WithTimeout(ctx, s3Timeout)
	_, err = b.cl.StatObject(scx, b.o.Bucket, b.key(d), minio.StatObjectOptions{})
	cancel()
	switch {
	case err == nil: // written once, never overwritten
	case notFound(err):
		if err := b.putOnce(ctx, d, path); err != nil {
			return err
		}
	default:
		return fmt.Errorf("%w: %w", blobs.ErrStoreUnavailable, err)
	}
	b.use(d)
	return b.local.Commit(id, d)
}

// putOnce writes the file at path as d's object unless one is there by
// then: the write carries If-None-Match: *, so when two nodes store the
// same blob at once the second leaves the first's object alone (its
// 412 means the bytes are there). A store that does not implement
// conditional writes gets plain ones from then on (the same bytes would
// be written twice).
func (b *Store) putOnce(ctx context.Context, d digest.Digest, path string) error {
	opts := minio.PutObjectOptions{ContentType: "application/octet-stream", PartSize: b.o.PartSize}
	conditional := !b.unconditional.Load()
	if conditional {
		opts.SetMatchETagExcept("*")
	}
	_, err := b.cl.FPutObject(ctx, b.o.Bucket, b.key(d), path, opts)
	switch code := minio.ToErrorResponse(err).Code; {
	case err == nil, code == "PreconditionFailed":
		return nil
	case conditional && code == "NotImplemented":
		b.unconditional.Store(true)
		return b.putOnce(ctx, d, path)
	}
	return fmt.Errorf("%w: writing %s: %w", blobs.ErrStoreUnavailable, d, err)
}

// Delete removes d from the bucket and the local copy.
func (b *Store) Delete(d digest.Digest) error {
	if err := blobs.ValidDigest(d); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), s3Timeout)
	defer cancel()
	if err := b.cl.RemoveObject(ctx, b.o.Bucket, b.key(d), minio.RemoveObjectOptions{}); err != nil && !notFound(err) {
		return fmt.Errorf("%w: %w", blobs.ErrStoreUnavailable, err)
	}
	return b.local.Delete(d)
}

// Walk lists the bucket's blobs (the local copies are only a cache).
func (b *Store) Walk(fn func(blobs.BlobInfo) error) error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	prefix := b.o.Prefix + "blobs/"
	for obj := range b.cl.ListObjects(ctx, b.o.Bucket, minio.ListObjectsOptions{Prefix: prefix, Recursive: true}) {
		if obj.Err != nil {
			return fmt.Errorf("%w: %w", blobs.ErrStoreUnavailable, obj.Err)
		}
		info := blobs.BlobInfo{Name: "s3://" + b.o.Bucket + "/" + obj.Key, Size: obj.Size, ModTime: obj.LastModified}
		if alg, hex, ok := strings.Cut(strings.TrimPrefix(obj.Key, prefix), "/"); ok {
			if d := digest.NewDigestFromEncoded(digest.Algorithm(alg), hex); d.Validate() == nil {
				info.Digest = d
			}
		}
		if err := fn(info); err != nil {
			return err
		}
	}
	return nil
}

// Quarantine moves d in the bucket under quarantine/ and drops the local
// copy.
func (b *Store) Quarantine(d digest.Digest) error {
	if err := blobs.ValidDigest(d); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), s3Timeout)
	defer cancel()
	dst := minio.CopyDestOptions{Bucket: b.o.Bucket, Object: b.o.Prefix + "quarantine/" + string(d.Algorithm()) + "-" + d.Encoded() + "-" + strconv.FormatInt(time.Now().Unix(), 10)}
	if _, err := b.cl.CopyObject(ctx, dst, minio.CopySrcOptions{Bucket: b.o.Bucket, Object: b.key(d)}); err != nil && !notFound(err) {
		return fmt.Errorf("%w: %w", blobs.ErrStoreUnavailable, err)
	}
	if err := b.cl.RemoveObject(ctx, b.o.Bucket, b.key(d), minio.RemoveObjectOptions{}); err != nil && !notFound(err) {
		return fmt.Errorf("%w: %w", blobs.ErrStoreUnavailable, err)
	}
	if err := b.local.Delete(d); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// String names the bucket and prefix (blobs.Remote).
func (b *Store) String() string { return b.o.String() }
