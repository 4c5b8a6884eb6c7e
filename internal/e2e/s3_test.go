package e2e

import (
	"bytes"
	"context"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/minio/minio-go/v7"
	"github.com/opencontainers/go-digest"

	"github.com/wharf-registry/wharf/internal/s3test"
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
	if out, err := runErr(30e9, nil, wharfBin, "serve", "--addr", freeAddr(t), "--data", data, "--mirror=false"); err == nil || !strings.Contains(out, "s3://"+srv.Bucket+"/e2e/") {
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
