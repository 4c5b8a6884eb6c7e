package cache

import (
	"crypto/rand"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	"github.com/wharf-registry/wharf/cache/blobs"
	"github.com/wharf-registry/wharf/cache/blobs/blobstest"
	"github.com/wharf-registry/wharf/cache/blobs/fileblobs"
	"github.com/wharf-registry/wharf/cache/blobs/s3blobs"
	"github.com/wharf-registry/wharf/internal/s3test"
)

func commitBytes(t *testing.T, b Blobs, data []byte) digest.Digest {
	t.Helper()
	return blobstest.Commit(t, b, "test-"+digest.FromBytes(data).Encoded()[:12], data)
}

func startS3(t *testing.T) s3blobs.Options {
	srv := s3test.Start(t)
	return s3blobs.Options{Endpoint: srv.Addr, Bucket: srv.Bucket, Prefix: "node/", AccessKey: srv.AccessKey, SecretKey: srv.SecretKey,
		Insecure: true, PartSize: 5 << 20}
}

// s3Opener is stores.S3 (which this package's tests cannot import).
func s3Opener(o s3blobs.Options) func(BlobsEnv) (blobs.Blobs, error) {
	return func(env BlobsEnv) (blobs.Blobs, error) {
		local, err := fileblobs.New(env.Dir, fileblobs.Options{NoSync: env.NoSync, Room: env.Room})
		if err != nil {
			return nil, err
		}
		return s3blobs.New(local, o)
	}
}

// TestStoreOnS3: the Store with S3 set keeps what it commits in the
// bucket; a second data directory cannot take the same prefix (the index
// is per node until etcd), only a prefix of its own; a missing bucket and
// a marked directory opened without its bucket are refused.
func TestStoreOnS3(t *testing.T) {
	o := startS3(t)
	s, err := testOpen(Options{Dir: t.TempDir(), OpenBlobs: s3Opener(o)})
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	defer func() {
		if !closed {
			s.Close()
		}
	}()
	if _, ok := s.blobs.(*s3blobs.Store); !ok {
		t.Fatalf("store blobs are %T", s.blobs)
	}
	data := make([]byte, 3<<20)
	rand.Read(data)
	d := commitBytes(t, s.blobs, data)
	other, err := fileblobs.New(t.TempDir(), fileblobs.Options{})
	if err != nil {
		t.Fatal(err)
	}
	// Another directory may not take the same prefix (its GC would
	// collect this one's blobs) ...
	if _, err := s3blobs.New(other, o); err == nil || !strings.Contains(err.Error(), "another data directory") {
		t.Fatalf("a second directory on the same prefix: %v", err)
	}
	// ... it takes its own, and this one's bytes are not there.
	o2 := o
	o2.Prefix = "node2/"
	b2, err := s3blobs.New(other, o2)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b2.Stat(d); err != ErrBlobUnknown {
		t.Fatalf("second node's prefix: %v", err)
	}
	// The same directory opens again.
	if _, err := s3blobs.New(mustFiles(t, s.opts.Dir), o); err != nil {
		t.Fatalf("reopening the owner: %v", err)
	}
	// The directory remembers its bucket: opened without it, it refuses.
	dir := s.opts.Dir
	s.Close()
	closed = true
	if _, err := testOpen(Options{Dir: dir}); err == nil || !strings.Contains(err.Error(), "s3://wharf/node/") {
		t.Fatalf("S3-backed directory opened without the bucket: %v", err)
	}
	bad := o
	bad.Bucket = "no-such-bucket"
	if _, err := testOpen(Options{Dir: t.TempDir(), OpenBlobs: s3Opener(bad)}); err == nil || !strings.Contains(err.Error(), "no bucket") {
		t.Fatalf("missing bucket: %v", err)
	}
}

func mustFiles(t *testing.T, dir string) *fileblobs.Files {
	t.Helper()
	f, err := fileblobs.New(dir, fileblobs.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return f
}
