package registry

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	"github.com/wharf-registry/wharf/cache"
	"github.com/wharf-registry/wharf/mirror/oci"
)

func TestParseRoute(t *testing.T) {
	cases := []struct {
		path string
		want rawRoute
		ok   bool
	}{
		{"/v2/", rawRoute{kind: routeBase}, true},
		{"/v2", rawRoute{kind: routeBase}, true},
		{"/v2/_catalog", rawRoute{kind: routeCatalog}, true},
		{"/v2/a/b/tags/list", rawRoute{kind: routeTags, name: "a/b"}, true},
		{"/v2/a/manifests/latest", rawRoute{kind: routeManifest, name: "a", ref: "latest"}, true},
		{"/v2/a/manifests/b/manifests/c", rawRoute{kind: routeManifest, name: "a/manifests/b", ref: "c"}, true},
		{"/v2/x/blobs/y/blobs/sha256:1", rawRoute{kind: routeBlob, name: "x/blobs/y", ref: "sha256:1"}, true},
		{"/v2/blobs/manifests/blobs", rawRoute{kind: routeManifest, name: "blobs", ref: "blobs"}, true},
		{"/v2/a/blobs/uploads/", rawRoute{kind: routeUploads, name: "a"}, true},
		{"/v2/a/blobs/uploads", rawRoute{kind: routeUploads, name: "a"}, true},
		{"/v2/a/blobs/uploads/up-1", rawRoute{kind: routeUpload, name: "a", ref: "up-1"}, true},
		{"/v2/a/referrers/sha256:1", rawRoute{kind: routeReferrers, name: "a", ref: "sha256:1"}, true},
		{"/v2/a/manifests/", rawRoute{}, false},
		{"/v2/manifests/x", rawRoute{}, false},
		{"/v1/a/manifests/x", rawRoute{}, false},
		{"/v2/a/blobs/uploads/x/y", rawRoute{}, false},
	}
	for _, c := range cases {
		got, ok := splitRoute(c.path)
		if ok != c.ok || (ok && got != c.want) {
			t.Errorf("splitRoute(%q) = %+v, %v; want %+v, %v", c.path, got, ok, c.want, c.ok)
		}
	}
}

// TestParseRouteTyped: references are parsed once into a tag or a digest,
// and bad parts get their OCI error.
func TestParseRouteTyped(t *testing.T) {
	d := "sha256:" + strings.Repeat("a", 64)
	for path, want := range map[string]route{
		"/v2/a/manifests/v1":           {kind: routeManifest, name: "a", ref: reference{tag: "v1"}},
		"/v2/a/manifests/" + d:         {kind: routeManifest, name: "a", ref: reference{digest: digest.Digest(d)}},
		"/v2/a/blobs/" + d:             {kind: routeBlob, name: "a", digest: digest.Digest(d)},
		"/v2/a/blobs/uploads/up-1":     {kind: routeUpload, name: "a", upload: "up-1"},
		"/v2/a/referrers/" + d:         {kind: routeReferrers, name: "a", digest: digest.Digest(d)},
		"/v2/library/alpine/tags/list": {kind: routeTags, name: "library/alpine"},
	} {
		if got, err := parseRoute(path); err != nil || got != want {
			t.Errorf("parseRoute(%q) = %+v, %v; want %+v", path, got, err, want)
		}
	}
	for path, code := range map[string]string{
		"/v2/A/manifests/v1":       oci.CodeNameInvalid,
		"/v2/a/manifests/-bad":     oci.CodeTagInvalid,
		"/v2/a/manifests/sha256:1": oci.CodeDigestInvalid,
		"/v2/a/blobs/latest":       oci.CodeDigestInvalid,
		"/v2/a/nothing":            oci.CodeUnsupported,
	} {
		if _, err := parseRoute(path); err == nil || toAPIError(err, routeBase).Code != code {
			t.Errorf("parseRoute(%q) = %v, want %s", path, err, code)
		}
	}
}

// TestObjectStoreDownIs503: a write the object store refused is a 503
// UNAVAILABLE with Retry-After, saying nothing was stored.
func TestObjectStoreDownIs503(t *testing.T) {
	w := httptest.NewRecorder()
	writeError(w, fmt.Errorf("%w: dial tcp: connection refused", cache.ErrBlobStoreUnavailable), routeBase)
	if w.Code != http.StatusServiceUnavailable || w.Header().Get("Retry-After") == "" ||
		!strings.Contains(w.Body.String(), `"UNAVAILABLE"`) || !strings.Contains(w.Body.String(), "nothing was stored") {
		t.Fatalf("%d %v %s", w.Code, w.Header(), w.Body)
	}
}

// TestIndexDownIs503: a request the cluster's index could not serve is a
// 503 UNAVAILABLE with Retry-After that names the index.
func TestIndexDownIs503(t *testing.T) {
	w := httptest.NewRecorder()
	writeError(w, fmt.Errorf("%w (write: context deadline exceeded)", cache.ErrIndexUnavailable), routeBase)
	if w.Code != http.StatusServiceUnavailable || w.Header().Get("Retry-After") == "" ||
		!strings.Contains(w.Body.String(), `"UNAVAILABLE"`) || !strings.Contains(w.Body.String(), "index (etcd) is unavailable") {
		t.Fatalf("%d %v %s", w.Code, w.Header(), w.Body)
	}
}

func FuzzParseRoute(f *testing.F) {
	for _, s := range []string{"/v2/a/manifests/b", "/v2/a/blobs/uploads/x", "/v2/_catalog", "/v2/a/tags/list"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, path string) {
		rt, ok := splitRoute(path)
		if !ok || rt.kind == routeBase || rt.kind == routeCatalog {
			return
		}
		if strings.Contains(rt.ref, "/") || rt.name == "" {
			t.Fatalf("splitRoute(%q) = %+v", path, rt)
		}
		typed, err := parseRoute(path)
		if err == nil && rt.kind == routeManifest && (typed.ref.tag == "") == (typed.ref.digest == "") {
			t.Fatalf("parseRoute(%q): reference %+v is not exactly one of tag and digest", path, typed.ref)
		}
	})
}
