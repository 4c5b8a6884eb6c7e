package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"testing"

	"github.com/opencontainers/go-digest"
)

// pushLayout pushes the image tree under index digest root of an OCI
// layout to repo:tag over plain HTTP: blobs first (monolithic POST), then
// manifests by digest, the root by tag.
func pushLayout(t *testing.T, w *wharfProc, repo, layout string, root digest.Digest, tag string) {
	t.Helper()
	read := func(d digest.Digest) []byte {
		b, err := os.ReadFile(filepath.Join(layout, "blobs", d.Algorithm().String(), d.Encoded()))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	var walk func(d digest.Digest, ref string)
	walk = func(d digest.Digest, ref string) {
		body := read(d)
		var m struct {
			MediaType string
			Config    *desc
			Layers    []desc
			Manifests []desc
		}
		if err := json.Unmarshal(body, &m); err != nil {
			t.Fatal(err)
		}
		for _, c := range m.Manifests {
			walk(c.Digest, c.Digest.String())
		}
		blobs := m.Layers
		if m.Config != nil {
			blobs = append(blobs, *m.Config)
		}
		for _, b := range blobs {
			resp, err := http.Post(w.url(fmt.Sprintf("/v2/%s/blobs/uploads/?digest=%s", repo, b.Digest)), "application/octet-stream", bytes.NewReader(read(b.Digest)))
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusCreated {
				t.Fatalf("blob push %s: %s", b.Digest, resp.Status)
			}
		}
		req, _ := http.NewRequest(http.MethodPut, w.url("/v2/"+repo+"/manifests/"+ref), bytes.NewReader(body))
		req.Header.Set("Content-Type", m.MediaType)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusCreated || resp.Header.Get("Docker-Content-Digest") != d.String() {
			t.Fatalf("manifest push %s: %s, digest %q", ref, resp.Status, resp.Header.Get("Docker-Content-Digest"))
		}
	}
	walk(root, tag)
}
