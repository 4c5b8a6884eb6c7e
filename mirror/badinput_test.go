package mirror

import (
	"bytes"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/wharf-registry/wharf/cache"
)

// fingerprint is what a rejected request must leave unchanged: the blob
// files, the catalog and the tags of the prepared repository.
func (r *testRegistry) fingerprint(t *testing.T) string {
	t.Helper()
	var files []string
	filepath.WalkDir(filepath.Join(r.dir, "blobs"), func(p string, e os.DirEntry, err error) error {
		if err == nil && !e.IsDir() {
			files = append(files, e.Name())
		}
		return nil
	})
	sort.Strings(files)
	_, cat := r.do(t, "GET", "/v2/_catalog", nil, nil)
	_, tags := r.do(t, "GET", "/v2/good/repo/tags/list", nil, nil)
	return strings.Join(files, ",") + "|" + string(cat) + "|" + string(tags)
}

func (r *testRegistry) newUpload(t *testing.T, repo string) string {
	t.Helper()
	resp, body := r.do(t, "POST", "/v2/"+repo+"/blobs/uploads/", nil, nil)
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("start upload: %s %s", resp.Status, body)
	}
	return resp.Header.Get("Location")
}

// TestBadInput sends every kind of invalid request: each gets its OCI error
// code and status, and nothing is stored.
func TestBadInput(t *testing.T) {
	reg := newTestRegistry(t, Options{})
	reg.pushImage(t, "good/repo", "v1", nil)
	goodBlob := reg.pushBlob(t, "good/repo", []byte("a blob in good/repo"))
	_, private := reg.do(t, "GET", "/v2/good/repo/manifests/v1", nil, nil)
	var privManifest struct{ Config struct{ Digest string } }
	json.Unmarshal(private, &privManifest)

	orphan := []byte("never stored")
	orphanD := digest.FromBytes(orphan)
	manifest := func(layer digest.Digest) []byte {
		b, _ := json.Marshal(map[string]any{
			"schemaVersion": 2, "mediaType": cache.MediaTypeOCIManifest,
			"config": map[string]any{"mediaType": "application/vnd.oci.image.config.v1+json", "digest": goodBlob, "size": 19},
			"layers": []any{map[string]any{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer, "size": 1}},
		})
		return b
	}
	ociCT := map[string]string{"Content-Type": cache.MediaTypeOCIManifest}
	otherRepoManifest := func() []byte {
		b, _ := json.Marshal(map[string]any{
			"schemaVersion": 2, "mediaType": cache.MediaTypeOCIManifest,
			"config": map[string]any{"mediaType": "application/vnd.oci.image.config.v1+json", "digest": goodBlob, "size": 19},
			"layers": []any{},
		})
		return b
	}()
	index, _ := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": cache.MediaTypeOCIIndex,
		"manifests": []any{map[string]any{"mediaType": cache.MediaTypeOCIManifest, "digest": orphanD, "size": 2}}})
	huge := bytes.Repeat([]byte(" "), cache.MaxManifestSize+1)

	cases := []struct {
		name       string
		method     string
		path       string // "{upload}" is replaced by a fresh session's location
		hdr        map[string]string
		body       []byte
		wantStatus int
		wantCode   string // "" for a status without an OCI body
	}{
		{"name uppercase", "GET", "/v2/Good/Repo/tags/list", nil, nil, 400, "NAME_INVALID"},
		{"name double dot", "PUT", "/v2/bad..name/manifests/v1", ociCT, manifest(goodBlob), 400, "NAME_INVALID"},
		{"name too long", "GET", "/v2/" + strings.Repeat("a", 256) + "/manifests/v1", nil, nil, 400, "NAME_INVALID"},
		{"name trailing slash component", "POST", "/v2/good//repo/blobs/uploads/", nil, nil, 400, "NAME_INVALID"},
		{"tag leading dash", "PUT", "/v2/good/repo/manifests/-bad", ociCT, manifest(goodBlob), 400, "TAG_INVALID"},
		{"tag too long", "PUT", "/v2/good/repo/manifests/" + strings.Repeat("t", 129), ociCT, manifest(goodBlob), 400, "TAG_INVALID"},
		{"tag param invalid", "PUT", "/v2/good/repo/manifests/" + digest.FromBytes(manifest(goodBlob)).String() + "?tag=-x", ociCT, manifest(goodBlob), 400, "TAG_INVALID"},
		{"blob digest malformed", "GET", "/v2/good/repo/blobs/sha256:xyz", nil, nil, 400, "DIGEST_INVALID"},
		{"blob digest md5", "HEAD", "/v2/good/repo/blobs/md5:d41d8cd98f00b204e9800998ecf8427e", nil, nil, 400, ""},
		{"manifest digest malformed", "GET", "/v2/good/repo/manifests/sha256:baddigeststring", nil, nil, 400, "DIGEST_INVALID"},
		{"monolithic wrong digest", "POST", "/v2/good/repo/blobs/uploads/?digest=" + digest.FromString("x").String(), nil, orphan, 400, "DIGEST_INVALID"},
		{"monolithic invalid digest", "POST", "/v2/good/repo/blobs/uploads/?digest=sha256:abc", nil, orphan, 400, "DIGEST_INVALID"},
		{"finish wrong digest", "PUT", "{upload}?digest=" + digest.FromString("x").String(), nil, orphan, 400, "DIGEST_INVALID"},
		{"finish without digest", "PUT", "{upload}", nil, orphan, 400, "DIGEST_INVALID"},
		{"manifest digest mismatch", "PUT", "/v2/good/repo/manifests/" + digest.FromString("x").String(), ociCT, manifest(goodBlob), 400, "DIGEST_INVALID"},
		{"manifest sha512 mismatch", "PUT", "/v2/good/repo/manifests/" + digest.SHA512.FromString("x").String(), ociCT, manifest(goodBlob), 400, "DIGEST_INVALID"},
		{"manifest not JSON", "PUT", "/v2/good/repo/manifests/bad", ociCT, []byte("{not json"), 400, "MANIFEST_INVALID"},
		{"manifest schemaVersion 1", "PUT", "/v2/good/repo/manifests/bad", ociCT, []byte(`{"schemaVersion":1}`), 400, "MANIFEST_INVALID"},
		{"manifest media type mismatch", "PUT", "/v2/good/repo/manifests/bad", map[string]string{"Content-Type": cache.MediaTypeDockerManifest}, manifest(goodBlob), 400, "MANIFEST_INVALID"},
		{"manifest unsupported type", "PUT", "/v2/good/repo/manifests/bad", map[string]string{"Content-Type": "application/x-foo"}, []byte(`{"schemaVersion":2}`), 400, "MANIFEST_INVALID"},
		{"manifest descriptor digest invalid", "PUT", "/v2/good/repo/manifests/bad", ociCT, manifest("sha256:nothex"), 400, "MANIFEST_INVALID"},
		{"image manifest without config", "PUT", "/v2/good/repo/manifests/bad", ociCT, []byte(`{"schemaVersion":2,"layers":[]}`), 400, "MANIFEST_INVALID"},
		{"manifest too large", "PUT", "/v2/good/repo/manifests/bad", ociCT, huge, 413, "MANIFEST_INVALID"},
		{"manifest layer missing", "PUT", "/v2/good/repo/manifests/bad", ociCT, manifest(orphanD), 400, "MANIFEST_BLOB_UNKNOWN"},
		{"index child missing", "PUT", "/v2/good/repo/manifests/bad", map[string]string{"Content-Type": cache.MediaTypeOCIIndex}, index, 400, "MANIFEST_BLOB_UNKNOWN"},
		{"manifest blob of other repo", "PUT", "/v2/other/repo/manifests/bad", ociCT, otherRepoManifest, 400, "MANIFEST_BLOB_UNKNOWN"},
		{"manifest unknown tag", "GET", "/v2/good/repo/manifests/nope", nil, nil, 404, "MANIFEST_UNKNOWN"},
		{"manifest unknown digest", "GET", "/v2/good/repo/manifests/" + orphanD.String(), nil, nil, 404, "MANIFEST_UNKNOWN"},
		{"blob unknown", "GET", "/v2/good/repo/blobs/" + orphanD.String(), nil, nil, 404, "BLOB_UNKNOWN"},
		{"blob of other repo", "GET", "/v2/other/repo/blobs/" + goodBlob.String(), nil, nil, 404, "BLOB_UNKNOWN"},
		{"config of other repo", "GET", "/v2/other/repo/blobs/" + privManifest.Config.Digest, nil, nil, 404, "BLOB_UNKNOWN"},
		{"upload unknown", "PATCH", "/v2/good/repo/blobs/uploads/up-00000000-0000-0000-0000-000000000000", nil, orphan, 404, "BLOB_UPLOAD_UNKNOWN"},
		{"upload id not a session", "GET", "/v2/good/repo/blobs/uploads/tmp-x", nil, nil, 404, "BLOB_UPLOAD_UNKNOWN"},
		{"upload through other repo", "GET", "{upload:other/repo}", nil, nil, 404, "BLOB_UPLOAD_UNKNOWN"},
		{"chunk out of order", "PATCH", "{upload}", map[string]string{"Content-Range": "5-16"}, orphan, 416, "BLOB_UPLOAD_INVALID"},
		{"chunk range malformed", "PATCH", "{upload}", map[string]string{"Content-Range": "a-b"}, orphan, 416, "BLOB_UPLOAD_INVALID"},
		{"chunk length mismatch", "PATCH", "{upload}", map[string]string{"Content-Range": "0-3"}, orphan, 400, "SIZE_INVALID"},
		{"delete manifest disabled", "DELETE", "/v2/good/repo/manifests/v1", nil, nil, 405, "UNSUPPORTED"},
		{"delete blob disabled", "DELETE", "/v2/good/repo/blobs/" + goodBlob.String(), nil, nil, 405, "UNSUPPORTED"},
		{"method not allowed", "POST", "/v2/good/repo/manifests/v1", nil, nil, 405, "UNSUPPORTED"},
		{"tags of unknown repo", "GET", "/v2/no/such/tags/list", nil, nil, 404, "NAME_UNKNOWN"},
		{"tags n negative", "GET", "/v2/good/repo/tags/list?n=-1", nil, nil, 400, "UNSUPPORTED"},
		{"range past the end", "GET", "/v2/good/repo/blobs/" + goodBlob.String(), map[string]string{"Range": "bytes=1000-2000"}, nil, 416, ""},
		{"unknown endpoint", "GET", "/v2/good/repo/manifests/", nil, nil, 404, "UNSUPPORTED"},
		{"referrers digest invalid", "GET", "/v2/good/repo/referrers/sha256:zz", nil, nil, 400, "DIGEST_INVALID"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path := c.path
			if rest, ok := strings.CutPrefix(path, "{upload}"); ok {
				path = reg.newUpload(t, "good/repo") + rest
			} else if path == "{upload:other/repo}" {
				path = strings.Replace(reg.newUpload(t, "good/repo"), "/good/repo/", "/other/repo/", 1)
			}
			before := reg.fingerprint(t)
			resp, body := reg.do(t, c.method, path, c.body, c.hdr)
			if resp.StatusCode != c.wantStatus {
				t.Fatalf("%s %s: status %s, want %d; body %s", c.method, path, resp.Status, c.wantStatus, body)
			}
			if c.wantCode != "" {
				if got := ociError(t, body); got != c.wantCode {
					t.Fatalf("code %s, want %s; body %s", got, c.wantCode, body)
				}
				if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
					t.Fatalf("error Content-Type %q", ct)
				}
			}
			if after := reg.fingerprint(t); after != before {
				t.Fatalf("a rejected request changed the store:\nbefore %s\nafter  %s", before, after)
			}
		})
	}
	// A session whose final digest did not match is gone.
	loc := reg.newUpload(t, "good/repo")
	reg.do(t, "PUT", loc+"?digest="+digest.FromString("x").String(), orphan, nil)
	if resp, _ := reg.do(t, "GET", loc, nil, nil); resp.StatusCode != http.StatusNotFound {
		t.Fatalf("session after digest mismatch: %s, want 404", resp.Status)
	}
	if resp, _ := reg.do(t, "HEAD", "/v2/good/repo/blobs/"+orphanD.String(), nil, nil); resp.StatusCode != http.StatusNotFound {
		t.Fatalf("rejected blob is visible: %s", resp.Status)
	}
}
