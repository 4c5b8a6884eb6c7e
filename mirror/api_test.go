package mirror

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/wharf-registry/wharf/cache"
)

func TestBaseAndHeaders(t *testing.T) {
	reg := newTestRegistry(t, Options{})
	resp, body := reg.do(t, "GET", "/v2/", nil, nil)
	if resp.StatusCode != 200 || string(body) != "{}" || resp.Header.Get("Docker-Distribution-Api-Version") != "registry/2.0" {
		t.Fatalf("GET /v2/: %s %q %v", resp.Status, body, resp.Header)
	}
}

func TestManifestRoundTrip(t *testing.T) {
	reg := newTestRegistry(t, Options{})
	body := reg.pushImage(t, "team/app", "v1", map[string]any{"annotations": map[string]string{"z": "1", "a": "2"}})
	d := digest.FromBytes(body)
	for _, ref := range []string{"v1", d.String()} {
		for _, method := range []string{"GET", "HEAD"} {
			resp, got := reg.do(t, method, "/v2/team/app/manifests/"+ref, nil, nil)
			if resp.StatusCode != 200 || resp.Header.Get("Docker-Content-Digest") != d.String() ||
				resp.Header.Get("Content-Type") != cache.MediaTypeOCIManifest || resp.Header.Get("Content-Length") != fmt.Sprint(len(body)) {
				t.Fatalf("%s %s: %s %v", method, ref, resp.Status, resp.Header)
			}
			if method == "GET" && string(got) != string(body) {
				t.Fatalf("manifest bytes changed: %s", got)
			}
		}
	}
}

// TestRetagServesNewDigest checks the tag LRU is invalidated by a push.
func TestRetagServesNewDigest(t *testing.T) {
	reg := newTestRegistry(t, Options{})
	first := reg.pushImage(t, "team/app", "latest", nil)
	for i := 0; i < 3; i++ { // warm the caches
		reg.do(t, "GET", "/v2/team/app/manifests/latest", nil, nil)
	}
	second := reg.pushImage(t, "team/app", "latest", map[string]any{"annotations": map[string]string{"v": "2"}})
	resp, got := reg.do(t, "GET", "/v2/team/app/manifests/latest", nil, nil)
	if resp.Header.Get("Docker-Content-Digest") != digest.FromBytes(second).String() || string(got) != string(second) {
		t.Fatalf("after retag got %s, want the second manifest (first was %s)", resp.Header.Get("Docker-Content-Digest"), digest.FromBytes(first))
	}
}

// TestConcurrentRetagAndRead races readers against tag pushes: once the
// last push is acknowledged, every read sees it.
func TestConcurrentRetagAndRead(t *testing.T) {
	reg := newTestRegistry(t, Options{})
	var last []byte
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
					reg.do(t, "GET", "/v2/team/app/manifests/latest", nil, nil)
				}
			}
		}()
	}
	for i := 0; i < 20; i++ {
		last = reg.pushImage(t, "team/app", "latest", map[string]any{"annotations": map[string]string{"i": fmt.Sprint(i)}})
	}
	close(stop)
	wg.Wait()
	resp, _ := reg.do(t, "GET", "/v2/team/app/manifests/latest", nil, nil)
	if resp.Header.Get("Docker-Content-Digest") != digest.FromBytes(last).String() {
		t.Fatalf("stale tag served after concurrent reads: %s", resp.Header.Get("Docker-Content-Digest"))
	}
}

func TestTagsPagination(t *testing.T) {
	reg := newTestRegistry(t, Options{})
	for _, tag := range []string{"e", "a", "c", "b", "d"} {
		reg.pushImage(t, "team/app", tag, nil)
	}
	var all []string
	path := "/v2/team/app/tags/list?n=2"
	for pages := 0; path != ""; pages++ {
		if pages > 5 {
			t.Fatal("pagination does not end")
		}
		resp, body := reg.do(t, "GET", path, nil, nil)
		var tl struct{ Tags []string }
		if err := json.Unmarshal(body, &tl); err != nil || resp.StatusCode != 200 || len(tl.Tags) > 2 {
			t.Fatalf("%s: %s %s", path, resp.Status, body)
		}
		all = append(all, tl.Tags...)
		path = ""
		if link := resp.Header.Get("Link"); link != "" {
			path = link[1:strings.Index(link, ">")]
			if !strings.HasSuffix(link, `rel="next"`) {
				t.Fatalf("Link %q", link)
			}
		}
	}
	if strings.Join(all, ",") != "a,b,c,d,e" {
		t.Fatalf("paginated tags %v", all)
	}
	_, body := reg.do(t, "GET", "/v2/team/app/tags/list?last=c", nil, nil)
	if !strings.Contains(string(body), `"tags":["d","e"]`) {
		t.Fatalf("tags after c: %s", body)
	}
}

func TestCatalogPagination(t *testing.T) {
	reg := newTestRegistry(t, Options{})
	for _, repo := range []string{"b/x", "a", "a/b", "c"} {
		reg.pushImage(t, repo, "v1", nil)
	}
	reg.pushBlob(t, "only/blobs", []byte("x")) // no manifest: not a catalog entry
	resp, body := reg.do(t, "GET", "/v2/_catalog?n=3", nil, nil)
	if !strings.Contains(string(body), `["a","a/b","b/x"]`) || !strings.Contains(resp.Header.Get("Link"), "last=b%2Fx") {
		t.Fatalf("catalog page 1: %s %v", body, resp.Header)
	}
	resp, body = reg.do(t, "GET", "/v2/_catalog?n=3&last=b/x", nil, nil)
	if !strings.Contains(string(body), `["c"]`) || resp.Header.Get("Link") != "" {
		t.Fatalf("catalog page 2: %s %v", body, resp.Header)
	}
}

func TestReferrers(t *testing.T) {
	reg := newTestRegistry(t, Options{})
	subject := reg.pushImage(t, "team/app", "v1", nil)
	sd := digest.FromBytes(subject)
	subj := map[string]any{"mediaType": cache.MediaTypeOCIManifest, "digest": sd, "size": len(subject)}
	sig := reg.pushImage(t, "team/app", "sig", map[string]any{"artifactType": "application/vnd.example.sig", "subject": subj})
	reg.pushImage(t, "team/app", "sbom", map[string]any{"artifactType": "application/vnd.example.sbom", "subject": subj})
	var idx struct {
		MediaType string
		Manifests []cache.Descriptor
	}
	resp, body := reg.do(t, "GET", "/v2/team/app/referrers/"+sd.String(), nil, nil)
	json.Unmarshal(body, &idx)
	if resp.Header.Get("Content-Type") != cache.MediaTypeOCIIndex || len(idx.Manifests) != 2 {
		t.Fatalf("referrers: %s %s", resp.Header.Get("Content-Type"), body)
	}
	resp, body = reg.do(t, "GET", "/v2/team/app/referrers/"+sd.String()+"?artifactType=application/vnd.example.sig", nil, nil)
	idx.Manifests = nil
	json.Unmarshal(body, &idx)
	if resp.Header.Get("OCI-Filters-Applied") != "artifactType" || len(idx.Manifests) != 1 || idx.Manifests[0].Digest != digest.FromBytes(sig) {
		t.Fatalf("filtered referrers: %v %s", resp.Header, body)
	}
	// Referrers are per repository.
	_, body = reg.do(t, "GET", "/v2/other/repo/referrers/"+sd.String(), nil, nil)
	if !strings.Contains(string(body), `"manifests":[]`) {
		t.Fatalf("referrers leaked to another repository: %s", body)
	}
}

func TestDeletes(t *testing.T) {
	reg := newTestRegistry(t, Options{AllowDelete: true})
	body := reg.pushImage(t, "team/app", "v1", nil)
	d := digest.FromBytes(body)
	reg.do(t, "PUT", "/v2/team/app/manifests/v2", body, map[string]string{"Content-Type": cache.MediaTypeOCIManifest})
	if resp, _ := reg.do(t, "DELETE", "/v2/team/app/manifests/v2", nil, nil); resp.StatusCode != http.StatusAccepted {
		t.Fatalf("delete tag: %s", resp.Status)
	}
	if resp, _ := reg.do(t, "GET", "/v2/team/app/manifests/v1", nil, nil); resp.StatusCode != 200 {
		t.Fatalf("deleting tag v2 removed v1: %s", resp.Status)
	}
	if resp, _ := reg.do(t, "DELETE", "/v2/team/app/manifests/"+d.String(), nil, nil); resp.StatusCode != http.StatusAccepted {
		t.Fatalf("delete manifest: %s", resp.Status)
	}
	for _, ref := range []string{"v1", d.String()} {
		if resp, _ := reg.do(t, "GET", "/v2/team/app/manifests/"+ref, nil, nil); resp.StatusCode != 404 {
			t.Fatalf("%s after manifest delete: %s", ref, resp.Status)
		}
	}
	blob := reg.pushBlob(t, "team/app", []byte("to delete"))
	if resp, _ := reg.do(t, "DELETE", "/v2/team/app/blobs/"+blob.String(), nil, nil); resp.StatusCode != http.StatusAccepted {
		t.Fatalf("delete blob: %s", resp.Status)
	}
	if resp, _ := reg.do(t, "HEAD", "/v2/team/app/blobs/"+blob.String(), nil, nil); resp.StatusCode != 404 {
		t.Fatalf("blob after delete: %s", resp.Status)
	}
	if resp, body := reg.do(t, "DELETE", "/v2/team/app/blobs/"+blob.String(), nil, nil); resp.StatusCode != 404 || ociError(t, body) != "BLOB_UNKNOWN" {
		t.Fatalf("second blob delete: %s", resp.Status)
	}
}

func TestBlobRange(t *testing.T) {
	for _, sendfile := range []bool{false, true} {
		t.Run(fmt.Sprintf("sendfile=%v", sendfile), func(t *testing.T) { testBlobRange(t, sendfile) })
	}
}

func testBlobRange(t *testing.T, sendfile bool) {
	reg := newTestRegistry(t, Options{Sendfile: sendfile})
	content := []byte("0123456789abcdef")
	d := reg.pushBlob(t, "team/app", content)
	resp, body := reg.do(t, "GET", "/v2/team/app/blobs/"+d.String(), nil, map[string]string{"Range": "bytes=4-9"})
	if resp.StatusCode != http.StatusPartialContent || string(body) != "456789" || resp.Header.Get("Content-Range") != "bytes 4-9/16" {
		t.Fatalf("range: %s %q %v", resp.Status, body, resp.Header)
	}
	resp, body = reg.do(t, "GET", "/v2/team/app/blobs/"+d.String(), nil, map[string]string{"Range": "bytes=-3"})
	if resp.StatusCode != http.StatusPartialContent || string(body) != "def" {
		t.Fatalf("suffix range: %s %q", resp.Status, body)
	}
	resp, body = reg.do(t, "GET", "/v2/team/app/blobs/"+d.String(), nil, nil)
	if resp.StatusCode != 200 || string(body) != string(content) || resp.Header.Get("Docker-Content-Digest") != d.String() {
		t.Fatalf("full GET: %s %q", resp.Status, body)
	}
	// Larger than one copy buffer, so the copy loop runs more than once.
	big := bytes.Repeat([]byte("0123456789abcdef"), 100000)
	bd := reg.pushBlob(t, "team/app", big)
	resp, body = reg.do(t, "GET", "/v2/team/app/blobs/"+bd.String(), nil, nil)
	if resp.StatusCode != 200 || !bytes.Equal(body, big) {
		t.Fatalf("large GET: %s, %d bytes", resp.Status, len(body))
	}
	resp, body = reg.do(t, "GET", "/v2/team/app/blobs/"+bd.String(), nil, map[string]string{"Range": "bytes=1000000-1599999"})
	if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(body, big[1000000:1600000]) {
		t.Fatalf("large range: %s, %d bytes", resp.Status, len(body))
	}
}

func TestMount(t *testing.T) {
	reg := newTestRegistry(t, Options{})
	d := reg.pushBlob(t, "team/a", []byte("shared layer"))
	resp, _ := reg.do(t, "POST", "/v2/team/b/blobs/uploads/?mount="+d.String()+"&from=team/a", nil, nil)
	if resp.StatusCode != http.StatusCreated || resp.Header.Get("Location") != "/v2/team/b/blobs/"+d.String() {
		t.Fatalf("mount: %s %v", resp.Status, resp.Header)
	}
	if resp, _ := reg.do(t, "HEAD", "/v2/team/b/blobs/"+d.String(), nil, nil); resp.StatusCode != 200 {
		t.Fatalf("mounted blob: %s", resp.Status)
	}
	// Unknown source, or no source: an upload session instead.
	for _, q := range []string{"&from=team/none", "&from=team/c", ""} {
		resp, _ := reg.do(t, "POST", "/v2/team/c/blobs/uploads/?mount="+d.String()+q, nil, nil)
		if resp.StatusCode != http.StatusAccepted || !strings.Contains(resp.Header.Get("Location"), "/blobs/uploads/up-") {
			t.Fatalf("mount%s: %s %v", q, resp.Status, resp.Header)
		}
	}
	if resp, _ := reg.do(t, "HEAD", "/v2/team/c/blobs/"+d.String(), nil, nil); resp.StatusCode != 404 {
		t.Fatalf("failed mounts linked the blob: %s", resp.Status)
	}
}

// TestChunkedUpload drives POST, PATCHes with and without Content-Range, a
// status GET and a final PUT carrying the last chunk.
func TestChunkedUpload(t *testing.T) {
	reg := newTestRegistry(t, Options{})
	content := []byte(strings.Repeat("wharf", 1000))
	d := digest.SHA512.FromBytes(content)
	loc := reg.newUpload(t, "team/app")
	resp, _ := reg.do(t, "PATCH", loc, content[:1000], map[string]string{"Content-Range": "0-999"})
	if resp.StatusCode != 202 || resp.Header.Get("Range") != "0-999" {
		t.Fatalf("first chunk: %s %v", resp.Status, resp.Header)
	}
	resp, _ = reg.do(t, "PATCH", resp.Header.Get("Location"), content[1000:3000], nil)
	if resp.Header.Get("Range") != "0-2999" {
		t.Fatalf("streamed chunk: %s %v", resp.Status, resp.Header)
	}
	resp, _ = reg.do(t, "GET", loc, nil, nil)
	if resp.StatusCode != http.StatusNoContent || resp.Header.Get("Range") != "0-2999" {
		t.Fatalf("status: %s %v", resp.Status, resp.Header)
	}
	resp, _ = reg.do(t, "PUT", loc+"?digest="+d.String(), content[3000:], map[string]string{"Content-Range": "3000-4999"})
	if resp.StatusCode != http.StatusCreated || resp.Header.Get("Docker-Content-Digest") != d.String() {
		t.Fatalf("finish: %s %v", resp.Status, resp.Header)
	}
	resp, body := reg.do(t, "GET", "/v2/team/app/blobs/"+d.String(), nil, nil)
	if resp.StatusCode != 200 || string(body) != string(content) {
		t.Fatalf("sha512 blob: %s", resp.Status)
	}
	if resp, _ := reg.do(t, "DELETE", loc, nil, nil); resp.StatusCode != 404 {
		t.Fatalf("finished session still cancellable: %s", resp.Status)
	}
}

func TestHealthAndReadiness(t *testing.T) {
	reg := newTestRegistry(t, Options{})
	for _, p := range []string{"/healthz", "/readyz"} {
		if resp, _ := reg.do(t, "GET", p, nil, nil); resp.StatusCode != 200 {
			t.Fatalf("%s: %s", p, resp.Status)
		}
	}
	reg.reg().Drain()
	if resp, _ := reg.do(t, "GET", "/readyz", nil, nil); resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("/readyz while draining: %s", resp.Status)
	}
	if resp, _ := reg.do(t, "GET", "/healthz", nil, nil); resp.StatusCode != 200 {
		t.Fatalf("/healthz while draining: %s", resp.Status)
	}
}
