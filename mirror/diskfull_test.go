package mirror

import (
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"

	"github.com/wharf-registry/wharf/cache"
	"github.com/wharf-registry/wharf/cache/blobs/blobstest"
	"github.com/wharf-registry/wharf/cache/blobs/fileblobs"
	"github.com/wharf-registry/wharf/cache/stores"
	"github.com/wharf-registry/wharf/mirror/oci"
)

// TestDiskFull: with the disk full a push gets 507 in the OCI envelope, the
// storage-full hook runs, nothing partial is left, reads go on; once there
// is room again pushes work.
func TestDiskFull(t *testing.T) {
	dir := t.TempDir()
	fb, err := fileblobs.New(dir, fileblobs.Options{})
	if err != nil {
		t.Fatal(err)
	}
	disk := &blobstest.FullDisk{Blobs: fb}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	st, err := stores.Open(cache.Options{Dir: dir, Blobs: disk, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	var hook atomic.Int32
	srv := httptest.NewServer(New(st, Options{Logger: quiet, OnStorageFull: func() { hook.Add(1) }}))
	t.Cleanup(func() { srv.Close(); st.Close() })
	r := &testRegistry{srv: srv, store: st, dir: dir}
	r.pushImage(t, "team/app", "v1", nil)

	disk.Full.Store(true)
	for _, path := range []string{"/v2/team/app/blobs/uploads/?digest=sha256:" + fmt.Sprintf("%064x", 1), "/v2/team/app/blobs/uploads/"} {
		resp, body := r.do(t, "POST", path, []byte("a layer that does not fit"), nil)
		if path == "/v2/team/app/blobs/uploads/" && resp.StatusCode == http.StatusAccepted {
			loc := resp.Header.Get("Location")
			resp, body = r.do(t, "PATCH", loc, []byte("a chunk that does not fit"), nil)
		}
		if resp.StatusCode != http.StatusInsufficientStorage || ociError(t, body) != oci.CodeUnknown {
			t.Fatalf("write on a full disk (%s): %s %s", path, resp.Status, body)
		}
	}
	if hook.Load() < 2 {
		t.Fatalf("storage-full hook ran %d times, want 2", hook.Load())
	}
	if ids, _ := disk.Ingests(); len(ids) > 1 { // the open session may keep its (empty) file
		t.Fatalf("partial ingests left: %v", ids)
	}
	if resp, _ := r.do(t, "GET", "/v2/team/app/manifests/v1", nil, nil); resp.StatusCode != http.StatusOK {
		t.Fatalf("read on a full disk: %s", resp.Status)
	}
	disk.Full.Store(false)
	r.pushImage(t, "team/app", "v2", nil)
}
