package e2e

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/opencontainers/go-digest"

	"github.com/wharf-registry/wharf/internal/faultproxy"
	"github.com/wharf-registry/wharf/internal/s3test"
	"github.com/wharf-registry/wharf/internal/testport"
)

// TestServeOnS3: `wharf serve --blob-store s3://…` against a real
// S3-compatible server (versitygw). A real dockerd pushes an image: its
// layers, config and manifest are objects in the bucket under their
// digests. With the node stopped and its local blob copies wiped, it
// starts again and dockerd pulls the image back (the bytes come from the
// bucket, verified, and are kept locally again). Started without
// --blob-store, the data directory refuses naming its bucket. With the
// object store gone, the image still pulls and a push gets 503.
func TestServeOnS3(t *testing.T) {
	srv := s3test.Start(t)
	t.Setenv("AWS_ACCESS_KEY_ID", srv.AccessKey)
	t.Setenv("AWS_SECRET_ACCESS_KEY", srv.SecretKey)
	store := "s3://" + srv.Bucket + "/e2e?endpoint=" + srv.Addr + "&insecure=true"
	data := t.TempDir()
	w := startWharf(t, data, "--mirror=false", "--blob-store", store)
	d := startDockerd(t)
	ref := w.addr + "/team/app:v1"
	d.buildImage(t, ref, "scratch", "a.bin", "b.bin")
	id := d.docker(t, "image", "inspect", "--format", "{{.Id}}", ref)
	d.docker(t, "push", ref)

	objects := map[string]int64{}
	for obj := range srv.Client.ListObjects(context.Background(), srv.Bucket, minio.ListObjectsOptions{Prefix: "e2e/blobs/", Recursive: true}) {
		if obj.Err != nil {
			t.Fatal(obj.Err)
		}
		objects[obj.Key] = obj.Size
	}
	// two layers, the config and the manifest
	if len(objects) < 4 || objects["e2e/blobs/"+strings.Replace(id, ":", "/", 1)] == 0 {
		t.Fatalf("bucket after the push: %v (config %s)", objects, id)
	}

	if err := w.stop(t); err != nil {
		t.Fatalf("stop: %v\n%s", err, w.log)
	}
	if err := os.RemoveAll(filepath.Join(data, "blobs")); err != nil {
		t.Fatal(err)
	}
	// Without the bucket the directory is refused, naming it.
	if out, err := runErr(30e9, nil, wharfBin, "serve", "--addr", testport.Pick(t), "--data", data, "--mirror=false"); err == nil || !strings.Contains(out, "s3://"+srv.Bucket+"/e2e/") {
		t.Fatalf("serve without --blob-store on an S3-backed directory: %v\n%s", err, out)
	}
	w = startWharf(t, data, "--mirror=false", "--blob-store", store)
	ref = w.addr + "/team/app:v1"
	d.docker(t, "rmi", "-f", id)
	d.docker(t, "pull", ref)
	if got := d.docker(t, "image", "inspect", "--format", "{{.Id}}", ref); got != id {
		t.Fatalf("pulled %s, pushed %s", got, id)
	}
	if n := countFiles(filepath.Join(data, "blobs")); n < 4 {
		t.Fatalf("%d local copies after the pull", n)
	}

	// The object store goes away: what the node holds is still pulled, a
	// push is refused with 503, saying so.
	srv.Stop()
	d.docker(t, "rmi", "-f", id)
	d.docker(t, "pull", ref)
	body := []byte("pushed while the object store is down")
	resp, err := http.Post(w.url("/v2/team/other/blobs/uploads/?digest="+digest.FromBytes(body).String()), "application/octet-stream", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	msg := readAll(t, resp)
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(msg, "object store") {
		t.Fatalf("push with the object store down: %s %s", resp.Status, msg)
	}
}

// TestS3BlackHoled: the object store (versitygw behind a fault proxy)
// accepts connections and answers nothing. A blob with no local copy gets
// 503 with Retry-After in bounded time, and the next requests that need
// the store fail at once; a push gets its answer in bounded time. A
// stream from the bucket that stalls midway ends in an error, never
// hangs. Once the store answers again, everything works without a
// restart.
func TestS3BlackHoled(t *testing.T) {
	srv := s3test.Start(t)
	proxy := faultproxy.Start(t, srv.Addr)
	t.Setenv("AWS_ACCESS_KEY_ID", srv.AccessKey)
	t.Setenv("AWS_SECRET_ACCESS_KEY", srv.SecretKey)
	store := "s3://" + srv.Bucket + "/hole?endpoint=" + proxy.Addr + "&insecure=true"
	data := t.TempDir()
	w := startWharf(t, data, "--mirror=false", "--blob-store", store)
	c := &http.Client{Timeout: 3 * time.Minute}
	small, status, err := pushRandom(c, w, "team/app", 1<<20)
	if err != nil || status != http.StatusCreated {
		t.Fatalf("push: %d %v", status, err)
	}
	big, status, err := pushRandom(c, w, "team/app", 24<<20)
	if err != nil || status != http.StatusCreated {
		t.Fatalf("push: %d %v", status, err)
	}
	// Without local copies, reads come from the bucket.
	if err := w.stop(t); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(filepath.Join(data, "blobs")); err != nil {
		t.Fatal(err)
	}
	w = startWharf(t, data, "--mirror=false", "--blob-store", store)
	timed := func(f func() (int, string)) (int, string, time.Duration) {
		start := time.Now()
		code, retry := f()
		return code, retry, time.Since(start)
	}
	get := func(d digest.Digest) (int, string) {
		resp, err := c.Get(w.url("/v2/team/app/blobs/" + d.String()))
		if err != nil {
			t.Fatalf("GET %s: %v", d, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode, resp.Header.Get("Retry-After")
	}

	proxy.BlackHole(true)
	code, retry, took := timed(func() (int, string) { return get(small) })
	if code != http.StatusServiceUnavailable || retry == "" || took > 35*time.Second {
		t.Fatalf("a blob from a black-holed store: %d (Retry-After %q) after %s\n%s", code, retry, took, w.log)
	}
	t.Logf("black hole: the first read got 503 after %s", took.Round(time.Millisecond))
	if code, _, took := timed(func() (int, string) { return get(big) }); code != http.StatusServiceUnavailable || took > 3*time.Second {
		t.Fatalf("the next read while the store is known down: %d after %s", code, took)
	}
	start := time.Now()
	if _, status, err := pushRandom(c, w, "team/app", 30<<20); err != nil || status != http.StatusServiceUnavailable || time.Since(start) > 35*time.Second {
		t.Fatalf("a 30 MiB push to a black-holed store: %d %v after %s", status, err, time.Since(start))
	}
	proxy.BlackHole(false)
	back := time.Now()
	for deadline := back.Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		if got, err := blobDigest(c, w, "team/app", small); err == nil && got == small {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("the store answers again, reads do not: %v\n%s", err, w.log)
		}
	}
	t.Logf("reads from the bucket again %s after it answered", time.Since(back).Round(time.Millisecond))

	// A stream that stalls after 4 MiB: the client's response ends short.
	proxy.Add(faultproxy.Rule{Match: []byte("GET /" + srv.Bucket + "/hole/blobs/sha256/" + big.Encoded()), Fault: faultproxy.Stall, After: 4 << 20})
	start = time.Now()
	if got, err := blobDigest(c, w, "team/app", big); err == nil && got == big {
		t.Fatal("a stream that stalled arrived whole")
	}
	if took := time.Since(start); took > 40*time.Second {
		t.Fatalf("a stream that stalled ended after %s", took)
	}
	if proxy.Applied.Load() != 1 {
		t.Fatalf("%d stalls applied", proxy.Applied.Load())
	}
	t.Logf("a bucket stream stalled midway: the response ended after %s", time.Since(start).Round(time.Millisecond))
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		if got, err := blobDigest(c, w, "team/app", big); err == nil && got == big {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("after the stall: %v\n%s", err, w.log)
		}
	}
}
