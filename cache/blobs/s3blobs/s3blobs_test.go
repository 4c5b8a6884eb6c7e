package s3blobs

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/opencontainers/go-digest"

	"github.com/wharf-registry/wharf/cache/blobs"
	"github.com/wharf-registry/wharf/cache/blobs/blobstest"
	"github.com/wharf-registry/wharf/cache/blobs/fileblobs"
	"github.com/wharf-registry/wharf/internal/s3test"
)

func commitBytes(t *testing.T, b blobs.Blobs, data []byte) digest.Digest {
	t.Helper()
	return blobstest.Commit(t, b, "test-"+digest.FromBytes(data).Encoded()[:12], data)
}

func startS3(t *testing.T) (Options, *minio.Client) {
	srv := s3test.Start(t)
	return Options{Endpoint: srv.Addr, Bucket: srv.Bucket, Prefix: "node/", AccessKey: srv.AccessKey, SecretKey: srv.SecretKey,
		Insecure: true, PartSize: 5 << 20}, srv.Client
}

// newS3Blobs puts a new local directory in front of the bucket of o.
func newS3Blobs(t *testing.T, o Options) (string, *fileblobs.Files, *Store) {
	t.Helper()
	dir := t.TempDir()
	fb, err := fileblobs.New(dir, fileblobs.Options{})
	if err != nil {
		t.Fatal(err)
	}
	b, err := New(fb, o)
	if err != nil {
		t.Fatal(err)
	}
	return dir, fb, b
}

// TestS3Blobs against a real S3-compatible server: a commit lands in the
// bucket under its digest (a 12 MiB blob as a multipart upload); with the
// local copies wiped, Open fetches and verifies it again; a damaged object
// is an error, never content; an object already there is not overwritten;
// Walk lists the bucket; Delete and Quarantine act on it.
func TestS3Blobs(t *testing.T) {
	o, cl := startS3(t)
	ctx := context.Background()
	dir, fb, b := newS3Blobs(t, o)
	small := []byte("a small blob")
	big := make([]byte, 12<<20)
	rand.Read(big)
	ds, db := commitBytes(t, b, small), commitBytes(t, b, big)
	for _, c := range []struct {
		d    digest.Digest
		size int64
	}{{ds, int64(len(small))}, {db, int64(len(big))}} {
		info, err := cl.StatObject(ctx, "wharf", b.key(c.d), minio.StatObjectOptions{})
		if err != nil || info.Size != c.size {
			t.Fatalf("object %s: %+v %v", b.key(c.d), info, err)
		}
	}
	if info, _ := cl.StatObject(ctx, "wharf", b.key(db), minio.StatObjectOptions{}); !strings.Contains(info.ETag, "-") {
		t.Errorf("12 MiB in 5 MiB parts: ETag %q is not a multipart one", info.ETag)
	}

	// Wipe the local copies: Open fetches, verifies and keeps them again.
	os.RemoveAll(filepath.Join(dir, "blobs"))
	os.MkdirAll(filepath.Join(dir, "blobs"), 0o750)
	if got, err := blobstest.Read(t, b, db); err != nil || !bytes.Equal(got, big) {
		t.Fatalf("big blob after the local copy was wiped: %d bytes, %v", len(got), err)
	}
	if _, err := fb.Stat(db); err != nil {
		t.Fatalf("no local copy after the fetch: %v", err)
	}
	if n, err := b.Stat(ds); err != nil || n != int64(len(small)) {
		t.Fatalf("stat of a blob only in the bucket: %d %v", n, err)
	}

	// A damaged object in the bucket never comes back as content.
	if _, err := cl.PutObject(ctx, "wharf", b.key(ds), bytes.NewReader([]byte("a smell blob")), 12, minio.PutObjectOptions{}); err != nil {
		t.Fatal(err)
	}
	if got, err := blobstest.Read(t, b, ds); err == nil {
		t.Fatalf("damaged object read as %q", got)
	}
	if _, err := fb.Stat(ds); err == nil {
		t.Fatal("damaged object kept as a local copy")
	}

	// Written once: a commit of content the bucket has leaves it alone.
	before, _ := cl.StatObject(ctx, "wharf", b.key(db), minio.StatObjectOptions{})
	commitBytes(t, b, big)
	after, _ := cl.StatObject(ctx, "wharf", b.key(db), minio.StatObjectOptions{})
	if before.ETag != after.ETag || !before.LastModified.Equal(after.LastModified) {
		t.Fatalf("object rewritten: %s %v -> %s %v", before.ETag, before.LastModified, after.ETag, after.LastModified)
	}

	seen := map[digest.Digest]int64{}
	if err := b.Walk(func(i blobs.BlobInfo) error { seen[i.Digest] = i.Size; return nil }); err != nil {
		t.Fatal(err)
	}
	if len(seen) != 2 || seen[db] != int64(len(big)) {
		t.Fatalf("walk: %v", seen)
	}
	if err := b.Quarantine(ds); err != nil {
		t.Fatal(err)
	}
	if err := b.Delete(db); err != nil {
		t.Fatal(err)
	}
	for _, d := range []digest.Digest{ds, db} {
		if _, err := b.Stat(d); err != blobs.ErrBlobUnknown {
			t.Fatalf("%s after quarantine/delete: %v", d, err)
		}
	}
	var quarantined int
	for obj := range cl.ListObjects(ctx, "wharf", minio.ListObjectsOptions{Prefix: "node/quarantine/", Recursive: true}) {
		if obj.Err == nil {
			quarantined++
		}
	}
	if quarantined != 1 {
		t.Fatalf("%d objects in quarantine", quarantined)
	}
}

func TestParseS3URL(t *testing.T) {
	o, err := ParseURL("s3://images/wharf/node1?endpoint=127.0.0.1:7070&insecure=true&region=eu-1&part-size=8388608")
	if err != nil || o.Bucket != "images" || o.Prefix != "wharf/node1/" || o.Endpoint != "127.0.0.1:7070" || !o.Insecure || o.Region != "eu-1" || o.PartSize != 8<<20 {
		t.Fatalf("%+v %v", o, err)
	}
	// The endpoint as a URL (registry:2's regionendpoint): its scheme says
	// whether it is TLS.
	for raw, insecure := range map[string]bool{"s3://b?endpoint=http://127.0.0.1:7070": true, "s3://b?endpoint=https://s3.example:443/": false,
		"s3://b?endpoint=http://127.0.0.1:7070&insecure=true": true} {
		if o, err := ParseURL(raw); err != nil || o.Endpoint == "" || strings.Contains(o.Endpoint, "/") || o.Insecure != insecure {
			t.Errorf("%s: %+v %v", raw, o, err)
		}
	}
	for _, bad := range []string{"http://b?endpoint=x:1", "s3://b", "s3://b?endpoint=x:1&insecure=maybe", "s3://b?endpoint=x:1&part-size=1024", "s3:///?endpoint=x:1",
		"s3://b?endpoint=ftp://x:1", "s3://b?endpoint=http://x:1/path", "s3://b?endpoint=https://x:1&insecure=true"} {
		if _, err := ParseURL(bad); err == nil {
			t.Errorf("%s accepted", bad)
		}
	}
}

// TestS3Unreachable: with the object store gone, blobs with a local copy
// are still served; anything else is blobs.ErrStoreUnavailable (never
// "unknown", which would make a client give up on content that exists),
// and a commit fails saying so, within seconds.
func TestS3Unreachable(t *testing.T) {
	srv := s3test.Start(t)
	o := Options{Endpoint: srv.Addr, Bucket: srv.Bucket, AccessKey: srv.AccessKey, SecretKey: srv.SecretKey, Insecure: true}
	_, fb, b := newS3Blobs(t, o)
	local := commitBytes(t, b, []byte("kept locally"))
	remote := commitBytes(t, b, []byte("only in the bucket"))
	if err := fb.Delete(remote); err != nil {
		t.Fatal(err)
	}
	srv.Stop()
	if got, err := blobstest.Read(t, b, local); err != nil || string(got) != "kept locally" {
		t.Fatalf("local copy with the store down: %q %v", got, err)
	}
	start := time.Now()
	if _, err := b.Stat(remote); !errors.Is(err, blobs.ErrStoreUnavailable) {
		t.Fatalf("stat with the store down: %v", err)
	}
	if _, _, err := b.Open(remote); !errors.Is(err, blobs.ErrStoreUnavailable) {
		t.Fatalf("open with the store down: %v", err)
	}
	app, err := b.Append("down")
	if err != nil {
		t.Fatal(err)
	}
	app.Write([]byte("new"))
	app.Close()
	if err := b.Commit("down", digest.FromString("new")); !errors.Is(err, blobs.ErrStoreUnavailable) {
		t.Fatalf("commit with the store down: %v", err)
	}
	if took := time.Since(start); took > 45*time.Second {
		t.Fatalf("three calls to a dead store took %s", took)
	}
}

// TestS3LocalCopiesTrimmed: the local copies are kept within a size, the
// least recently used going first; a trimmed blob read again comes back
// from the bucket, whole and verified.
func TestS3LocalCopiesTrimmed(t *testing.T) {
	o, _ := startS3(t)
	_, fb, b := newS3Blobs(t, o)
	var ds []digest.Digest
	var datas [][]byte
	for range 5 {
		data := make([]byte, 1<<20)
		rand.Read(data)
		ds, datas = append(ds, commitBytes(t, b, data)), append(datas, data)
		time.Sleep(5 * time.Millisecond)
	}
	// The oldest write is read again: it is the most recently used now.
	rc, _, err := b.Open(ds[0])
	if err != nil {
		t.Fatal(err)
	}
	rc.Close()
	freed, err := b.TrimLocal(5<<19 + 1) // room for two and a half
	if err != nil || freed != 3<<20 {
		t.Fatalf("freed %d bytes, %v; want 3 MiB", freed, err)
	}
	for i, d := range ds {
		_, err := fb.Stat(d)
		if kept := err == nil; kept != (i == 0 || i == 4) {
			t.Errorf("blob %d: local copy kept %v (want the two most recently used)", i, kept)
		}
	}
	rc, n, err := b.Open(ds[2])
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(rc)
	rc.Close()
	if n != 1<<20 || !bytes.Equal(got, datas[2]) {
		t.Fatalf("a trimmed blob read again: %d bytes", len(got))
	}
	if freed, err := b.TrimLocal(10 << 20); err != nil || freed != 0 {
		t.Fatalf("under the limit: freed %d, %v", freed, err)
	}
}

// TestS3Stream: a blob without a local copy streams from the bucket; a
// damaged object gives its reader an error before the last bytes, never a
// complete body, and leaves no local copy; a seek into the middle
// completes and verifies the download first.
func TestS3Stream(t *testing.T) {
	o, cl := startS3(t)
	_, fb, b := newS3Blobs(t, o)
	data := make([]byte, 4<<20)
	rand.Read(data)
	d := commitBytes(t, b, data)
	if err := fb.Delete(d); err != nil {
		t.Fatal(err)
	}
	rc, n, err := b.Open(d)
	if err != nil || n != int64(len(data)) {
		t.Fatalf("open: %d %v", n, err)
	}
	if _, ok := rc.(*s3Stream); !ok {
		t.Fatalf("a blob without a local copy opened as %T", rc)
	}
	if _, err := rc.Seek(1<<20, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	rest, err := io.ReadAll(rc)
	rc.Close()
	if err != nil || !bytes.Equal(rest, data[1<<20:]) {
		t.Fatalf("after a seek: %d bytes, %v", len(rest), err)
	}
	if _, err := fb.Stat(d); err != nil {
		t.Fatalf("no local copy after a streamed read: %v", err)
	}

	// The object damaged in its last byte.
	bad := append([]byte(nil), data...)
	bad[len(bad)-1] ^= 1
	if _, err := cl.PutObject(context.Background(), o.Bucket, b.key(d), bytes.NewReader(bad), int64(len(bad)), minio.PutObjectOptions{}); err != nil {
		t.Fatal(err)
	}
	fb.Delete(d)
	rc, _, err = b.Open(d)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(rc)
	rc.Close()
	if !errors.Is(err, blobs.ErrDigestMismatch) || len(got) > len(data)-streamHold || !bytes.Equal(got, data[:len(got)]) {
		t.Fatalf("damaged object: %d of %d bytes handed out, err %v", len(got), len(data), err)
	}
	if _, err := fb.Stat(d); err == nil {
		t.Fatal("a damaged object kept as a local copy")
	}
}

// TestS3WrittenOnce: a commit that found no object but meets one written
// meanwhile (another node storing the same blob) leaves that object alone.
func TestS3WrittenOnce(t *testing.T) {
	o, cl := startS3(t)
	_, fb, b := newS3Blobs(t, o)
	data := []byte("the bytes this node stores")
	d := digest.FromBytes(data)
	first := []byte("what the other node wrote first")
	if _, err := cl.PutObject(context.Background(), o.Bucket, b.key(d), bytes.NewReader(first), int64(len(first)), minio.PutObjectOptions{}); err != nil {
		t.Fatal(err)
	}
	app, err := fb.Append("race")
	if err != nil {
		t.Fatal(err)
	}
	app.Write(data)
	app.Close()
	path, _ := fb.IngestPath("race")
	if err := b.putOnce(context.Background(), d, path); err != nil {
		t.Fatalf("a conditional write over an existing object: %v", err)
	}
	obj, err := cl.GetObject(context.Background(), o.Bucket, b.key(d), minio.GetObjectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(obj)
	obj.Close()
	if !bytes.Equal(got, first) {
		t.Fatalf("the object was overwritten: %q", got)
	}
	if b.unconditional.Load() {
		t.Error("versitygw's conditional writes were taken for unimplemented")
	}
}

func TestConformance(t *testing.T) {
	o, _ := startS3(t)
	n := 0
	blobstest.Run(t, func(t *testing.T) blobs.Blobs {
		n++
		o := o
		o.Prefix = fmt.Sprintf("conformance%d/", n)
		_, _, b := newS3Blobs(t, o)
		return b
	})
}
