package mirror

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/wharf-registry/wharf/cache"
	"github.com/wharf-registry/wharf/cache/stores"
)

// testRegistry is the registry API over a real store in a temp dir, served
// by a real HTTP server on loopback.
type testRegistry struct {
	srv   *httptest.Server
	store *cache.Store
	dir   string
	// pusher, when set, is the Authorization of pushBlob and pushImage.
	pusher string
}

func newTestRegistry(t testing.TB, opts Options) *testRegistry {
	t.Helper()
	dir := t.TempDir()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	if opts.Logger == nil {
		opts.Logger = quiet
	}
	st, err := stores.Open(cache.Options{Dir: dir, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(New(st, opts))
	t.Cleanup(func() {
		srv.Close()
		st.Close()
	})
	return &testRegistry{srv: srv, store: st, dir: dir}
}

// do sends a request and returns the response with its body read.
func (r *testRegistry) do(t testing.TB, method, path string, body []byte, hdr map[string]string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, r.srv.URL+path, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if _, own := hdr["Authorization"]; r.pusher != "" && method != http.MethodGet && !own {
		req.Header.Set("Authorization", r.pusher)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := r.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, b
}

func (r *testRegistry) pushBlob(t testing.TB, repo string, b []byte) digest.Digest {
	t.Helper()
	d := digest.FromBytes(b)
	resp, body := r.do(t, "POST", "/v2/"+repo+"/blobs/uploads/?digest="+d.String(), b, nil)
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("push blob: %s %s", resp.Status, body)
	}
	return d
}

// pushImage pushes a config and one layer, then an OCI manifest under ref,
// and returns the manifest bytes.
func (r *testRegistry) pushImage(t testing.TB, repo, ref string, extra map[string]any) []byte {
	t.Helper()
	cfg := []byte(`{"os":"linux","n":"` + ref + `"}`)
	layer := []byte("layer of " + repo + ":" + ref)
	m := map[string]any{
		"schemaVersion": 2, "mediaType": cache.MediaTypeOCIManifest,
		"config": map[string]any{"mediaType": "application/vnd.oci.image.config.v1+json", "digest": r.pushBlob(t, repo, cfg), "size": len(cfg)},
		"layers": []any{map[string]any{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": r.pushBlob(t, repo, layer), "size": len(layer)}},
	}
	for k, v := range extra {
		m[k] = v
	}
	body, _ := json.Marshal(m)
	resp, out := r.do(t, "PUT", "/v2/"+repo+"/manifests/"+ref, body, map[string]string{"Content-Type": cache.MediaTypeOCIManifest})
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("push manifest %s:%s: %s %s", repo, ref, resp.Status, out)
	}
	return body
}

// ociError decodes an OCI error envelope and returns its first code.
func ociError(t *testing.T, body []byte) string {
	t.Helper()
	var e struct {
		Errors []struct{ Code, Message string }
	}
	if err := json.Unmarshal(body, &e); err != nil || len(e.Errors) == 0 {
		t.Fatalf("not an OCI error envelope: %q (%v)", body, err)
	}
	return e.Errors[0].Code
}

// collectReleased is what the server's maintenance scheduler does every
// few seconds (cmd/wharf's upkeep): a collection when deletes released
// content (recorded by the store), with the registry's grace, noted in the
// console's history.
func collectReleased(reg *Server) (cache.GCReport, bool, error) {
	start := time.Now()
	rep, ran, err := reg.store.Maintenance().CollectReleased(cache.GCOptions{Grace: reg.gcGrace, Duty: 0.5})
	if ran {
		reg.NoteGC("after deletes", "", rep, time.Since(start), err)
	}
	return rep, ran, err
}
