package mirror

import (
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
)

// TestReadOnly: a read-only registry (--read-only, registry:2's
// storage.maintenance.readonly) serves pulls and refuses every write with
// 405 UNSUPPORTED saying so: uploads, manifest PUTs, deletes, and the admin
// API's and the console's deletes, evictions and collections.
func TestReadOnly(t *testing.T) {
	rw := newTestRegistry(t, Options{AllowDelete: true})
	manifest := rw.pushImage(t, "team/app", "v1", nil)
	ro := httptest.NewServer(New(rw.store, Options{AllowDelete: true, ReadOnly: true, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}))
	defer ro.Close()
	r := &testRegistry{srv: ro, store: rw.store}

	if resp, body := r.do(t, "GET", "/v2/team/app/manifests/v1", nil, nil); resp.StatusCode != 200 || string(body) != string(manifest) {
		t.Fatalf("pull from a read-only registry: %s", resp.Status)
	}
	d := digest.FromBytes(manifest)
	layer := []byte("a new layer")
	for _, c := range []struct{ method, path string }{
		{"POST", "/v2/team/app/blobs/uploads/"},
		{"POST", "/v2/team/app/blobs/uploads/?digest=" + digest.FromBytes(layer).String()},
		{"PUT", "/v2/team/app/manifests/v2"},
		{"DELETE", "/v2/team/app/manifests/" + d.String()},
		{"DELETE", "/api/v1/repositories/team/app/tags/v1"},
		{"POST", "/api/v1/gc"},
	} {
		resp, body := r.do(t, c.method, c.path, layer, map[string]string{"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
		if resp.StatusCode != http.StatusMethodNotAllowed || ociError(t, body) != "UNSUPPORTED" || !strings.Contains(string(body), "read-only") {
			t.Errorf("%s %s: %s %s", c.method, c.path, resp.Status, body)
		}
	}
	b := newBrowser(t, ro)
	_, page := b.get("/repositories/team/app")
	if strings.Contains(page, "Delete…") {
		t.Error("the repository page offers deletes on a read-only registry")
	}
	_, form := b.get("/gc") // a page with a form: the session's CSRF token
	resp, page := b.post("/repositories/team/app", url.Values{"csrf": {b.csrf(form)}, "action": {"delete"}, "ref": {"v1"}})
	if resp.StatusCode != http.StatusMethodNotAllowed || !strings.Contains(page, "read-only") {
		t.Errorf("console delete: %s", resp.Status)
	}
	if _, err := rw.store.GetManifest("team/app", "v1"); err != nil {
		t.Fatalf("the read-only registry deleted v1: %v", err)
	}
}

// TestResponseHeaders: configured headers (registry:2's http.headers, a
// registry UI's CORS) are on every response, registry, API and console
// alike, and never replace a header Wharf sets.
func TestResponseHeaders(t *testing.T) {
	reg := newTestRegistry(t, Options{Headers: http.Header{"Access-Control-Allow-Origin": {"*"}, "X-Extra": {"a", "b"}}})
	reg.pushImage(t, "team/app", "v1", nil)
	for _, path := range []string{"/v2/", "/v2/team/app/manifests/v1", "/v2/team/app/manifests/v9", "/api/v1/repositories", "/"} {
		resp, _ := reg.do(t, "GET", path, nil, nil)
		if resp.Header.Get("Access-Control-Allow-Origin") != "*" || len(resp.Header.Values("X-Extra")) != 2 {
			t.Errorf("%s: headers %v", path, resp.Header)
		}
		if ct := resp.Header.Get("Content-Type"); ct == "" {
			t.Errorf("%s: no Content-Type", path)
		}
	}
}
