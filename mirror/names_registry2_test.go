package mirror

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/wharf-registry/wharf/cache"
)

// TestRegistry2Names: with the default settings, registry:2's
// single-component names are private names: centos and my-ubuntu can be
// pushed, are listed, and are served as pushed; a name never pushed falls
// through to Docker Hub's library/<name>; once pushed, the pushed image
// wins for that name, while library/<name> (dockerd's mirror path) stays
// Docker Hub's and cannot be pushed to, with a message naming the way out.
func TestRegistry2Names(t *testing.T) {
	e := newMirrorEnv(t, Options{})
	alpine := e.hub.Push("library/alpine", "latest", smallImage(60))
	for _, name := range []string{"centos", "my-ubuntu"} {
		body := e.pushImage(t, name, "latest", nil)
		resp, got := e.do(t, "GET", "/v2/"+name+"/manifests/latest", nil, map[string]string{"Accept": cache.MediaTypeOCIManifest})
		if resp.StatusCode != 200 || string(got) != string(body) {
			t.Fatalf("pull of pushed %s: %s", name, resp.Status)
		}
	}
	_, cat := e.do(t, "GET", "/v2/_catalog", nil, nil)
	var list struct{ Repositories []string }
	json.Unmarshal(cat, &list)
	if strings.Join(list.Repositories, ",") != "centos,my-ubuntu" {
		t.Fatalf("catalog: %s", cat)
	}
	// Never pushed: Docker Hub's library/alpine, by either name.
	for _, name := range []string{"alpine", "library/alpine"} {
		if err := e.pull(context.Background(), name, "latest", ""); err != nil {
			t.Fatalf("pull of %s (never pushed): %v", name, err)
		}
	}
	waitFillsDone(t, e)
	// library/<name> stays protected, and says what to do instead.
	resp, body := e.do(t, "POST", "/v2/library/alpine/blobs/uploads/", nil, nil)
	if resp.StatusCode != http.StatusForbidden || !strings.Contains(string(body), "push it as alpine") {
		t.Fatalf("push to library/alpine: %s %s", resp.Status, body)
	}
	// The guide's flow: pull alpine through the mirror, tag it, push it as
	// alpine. The client's blob probes found the layers (in the mirrored
	// copy), so it uploads none and pushes the manifest only.
	layer := alpine.Layers[platform][0]
	cfg := alpine.Configs[platform]
	for _, d := range []digest.Digest{cfg, layer} {
		if resp, _ := e.do(t, "HEAD", "/v2/alpine/blobs/"+d.String(), nil, nil); resp.StatusCode != 200 {
			t.Fatalf("blob probe of alpine's %s: %s", d, resp.Status)
		}
	}
	m, _ := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": cache.MediaTypeOCIManifest,
		"config":      map[string]any{"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cfg, "size": sizeOf(t, e, cfg)},
		"layers":      []any{map[string]any{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer, "size": sizeOf(t, e, layer)}},
		"annotations": map[string]string{"pushed": "here"}})
	resp, body = e.do(t, "PUT", "/v2/alpine/manifests/latest", m, map[string]string{"Content-Type": cache.MediaTypeOCIManifest})
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("push of alpine with blobs the mirror holds: %s %s", resp.Status, body)
	}
	resp, _ = e.do(t, "GET", "/v2/alpine/manifests/latest", nil, map[string]string{"Accept": cache.MediaTypeOCIManifest})
	if resp.Header.Get("Docker-Content-Digest") != digest.FromBytes(m).String() {
		t.Fatalf("alpine after its push: %s, want the pushed %s", resp.Header.Get("Docker-Content-Digest"), digest.FromBytes(m))
	}
	if resp, _ := e.do(t, "GET", "/v2/alpine/blobs/"+layer.String(), nil, nil); resp.StatusCode != 200 {
		t.Fatalf("a linked layer of pushed alpine: %s", resp.Status)
	}
	resp, _ = e.do(t, "GET", "/v2/library/alpine/manifests/latest", nil, nil)
	if resp.Header.Get("Docker-Content-Digest") != alpine.Index.String() {
		t.Fatalf("library/alpine after alpine was pushed: %s, want Docker Hub's %s", resp.Header.Get("Docker-Content-Digest"), alpine.Index)
	}
	// A manifest naming blobs neither uploaded nor mirrored is still refused.
	bad, _ := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": cache.MediaTypeOCIManifest,
		"config": map[string]any{"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest.FromString("nowhere"), "size": 7},
		"layers": []any{}})
	if resp, body := e.do(t, "PUT", "/v2/busybox/manifests/latest", bad, map[string]string{"Content-Type": cache.MediaTypeOCIManifest}); resp.StatusCode != http.StatusBadRequest || ociError(t, body) != "MANIFEST_BLOB_UNKNOWN" {
		t.Fatalf("manifest with unknown blobs: %s %s", resp.Status, body)
	}
}

func sizeOf(t *testing.T, e *mirrorEnv, d digest.Digest) int64 {
	t.Helper()
	size, err := e.store.StatBlob("docker.io/library/alpine", d)
	if err != nil {
		t.Fatal(err)
	}
	return size
}
