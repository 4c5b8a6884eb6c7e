package mirror

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/wharf-registry/wharf/cache"
	"github.com/wharf-registry/wharf/internal/fakehub"
)

// tagList GETs path and returns the status, the tags and the Link header.
func tagList(t *testing.T, e *mirrorEnv, path string) (int, []string, string) {
	t.Helper()
	resp, body := e.do(t, "GET", path, nil, nil)
	var l struct {
		Tags []string `json:"tags"`
	}
	if resp.StatusCode == http.StatusOK {
		if err := json.Unmarshal(body, &l); err != nil || l.Tags == nil {
			t.Fatalf("GET %s: %s (%v)", path, body, err)
		}
	}
	return resp.StatusCode, l.Tags, resp.Header.Get("Link")
}

// TestMirroredTagList: a mirrored repository never pulled lists upstream's
// tags (three of the hub's pages), 20 clients at once cost upstream one
// listing; pagination over it; a new tag upstream shows after the TTL; the
// last list is served while upstream is down; a repository never listed
// gets the cache's own tags then; a name upstream has not is a 404 that
// upstream is asked once per TTL.
func TestMirroredTagList(t *testing.T) {
	const ttl = 300 * time.Millisecond
	e := newMirrorEnv(t, Options{TagTTL: ttl, PrefetchParallel: -1})
	img := e.hub.Push("library/many", "t000", smallImage(1))
	var want []string
	for i := range 250 {
		tag := fmt.Sprintf("t%03d", i)
		e.hub.Retag("library/many", tag, img)
		want = append(want, tag)
	}
	var wg sync.WaitGroup
	errs := make(chan string, 20)
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, body := e.do(t, "GET", "/v2/library/many/tags/list", nil, nil)
			var l struct{ Tags []string }
			json.Unmarshal(body, &l)
			if resp.StatusCode != 200 || !slices.Equal(l.Tags, want) {
				errs <- fmt.Sprintf("%d, %d tags", resp.StatusCode, len(l.Tags))
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("a client got %s, want 200 and the 250 upstream tags", err)
	}
	if n := e.hub.Count("GET tags"); n != 3 {
		t.Fatalf("20 clients cost upstream %d tag-list GETs, want 3 (one listing of 3 pages)", n)
	}

	// Pagination over the cached list, in lexical order.
	var got []string
	path := "/v2/library/many/tags/list?n=100"
	for range 5 {
		code, tags, link := tagList(t, e, path)
		if code != 200 || len(tags) > 100 {
			t.Fatalf("page %s: %d, %d tags", path, code, len(tags))
		}
		got = append(got, tags...)
		if link == "" {
			break
		}
		path = strings.TrimSuffix(strings.TrimPrefix(strings.Split(link, ";")[0], "<"), ">")
	}
	if !slices.Equal(got, want) {
		t.Fatalf("paged: %d tags, want the 250 in order", len(got))
	}
	if _, tags, _ := tagList(t, e, "/v2/library/many/tags/list?last=t248"); !slices.Equal(tags, []string{"t249"}) {
		t.Fatalf("last=t248: %v", tags)
	}

	// A new tag upstream: not within the TTL, then yes.
	e.hub.Retag("library/many", "t999", img)
	if _, tags, _ := tagList(t, e, "/v2/library/many/tags/list"); slices.Contains(tags, "t999") {
		t.Fatal("the list was asked upstream again within the TTL")
	}
	time.Sleep(ttl + 50*time.Millisecond)
	if _, tags, _ := tagList(t, e, "/v2/library/many/tags/list"); !slices.Contains(tags, "t999") || len(tags) != 251 {
		t.Fatalf("after the TTL: %d tags, t999 missing", len(tags))
	}

	// Upstream down: the last list, however old.
	e.hub.Push("library/cachedonly", "1", smallImage(2))
	if err := e.pull(t.Context(), "library/cachedonly", "1", ""); err != nil {
		t.Fatal(err)
	}
	e.hub.SetFailStatus(http.StatusServiceUnavailable)
	time.Sleep(ttl + 50*time.Millisecond)
	if code, tags, _ := tagList(t, e, "/v2/library/many/tags/list"); code != 200 || len(tags) != 251 {
		t.Fatalf("upstream down: %d, %d tags; want the last list", code, len(tags))
	}
	if code, tags, _ := tagList(t, e, "/v2/library/cachedonly/tags/list"); code != 200 || !slices.Equal(tags, []string{"1"}) {
		t.Fatalf("never listed, upstream down: %d %v; want the cached tag", code, tags)
	}
	e.hub.SetFailStatus(0)

	// A name upstream has not (Docker Hub: 401 insufficient_scope): 404,
	// remembered for the TTL.
	listings := func() int { return e.hub.Count("GET tags") + e.hub.Count("insufficient_scope") }
	before := listings()
	for range 3 {
		if code, _, _ := tagList(t, e, "/v2/library/nosuch/tags/list"); code != http.StatusNotFound {
			t.Fatalf("a name upstream has not: %d", code)
		}
	}
	if n := listings() - before; n != 1 {
		t.Fatalf("3 lists of a missing name cost upstream %d GETs, want 1", n)
	}
}

// referrersOf GETs the referrers of d in name and returns the status, the
// manifests' digests and the OCI-Filters-Applied header.
func referrersOf(t *testing.T, e *mirrorEnv, name string, d digest.Digest, query string) (int, []digest.Digest, string) {
	t.Helper()
	resp, body := e.do(t, "GET", "/v2/"+name+"/referrers/"+d.String()+query, nil, nil)
	var idx struct {
		MediaType string
		Manifests []struct {
			Digest       digest.Digest
			ArtifactType string
		}
	}
	var out []digest.Digest
	if resp.StatusCode == 200 {
		if err := json.Unmarshal(body, &idx); err != nil || idx.MediaType != cache.MediaTypeOCIIndex || idx.Manifests == nil {
			t.Fatalf("referrers: %s (%v)", body, err)
		}
		for _, m := range idx.Manifests {
			out = append(out, m.Digest)
		}
	}
	return resp.StatusCode, out, resp.Header.Get("OCI-Filters-Applied")
}

// TestMirroredReferrers: the referrers of a mirrored image are upstream's,
// from its referrers API or, where it has none, from its referrers tag; 20
// clients at once cost one upstream request; artifactType filters; the
// referrer itself is pulled through by digest; the last answer is served
// while upstream is down.
func TestMirroredReferrers(t *testing.T) {
	const ttl = 300 * time.Millisecond
	e := newMirrorEnv(t, Options{TagTTL: ttl, PrefetchParallel: -1})
	var last digest.Digest
	const sbom = "application/vnd.example.sbom.v1+json"
	for _, api := range []bool{false, true} {
		name := map[bool]string{false: "library/tagschema", true: "library/referrersapi"}[api]
		e.hub.SetReferrersAPI(api)
		img := e.hub.Push(name, "1", smallImage(3))
		ref := e.hub.PushReferrer(name, img.Index, sbom, []byte(`{"sbom":"`+name+`"}`))
		last = img.Index
		e.hub.ResetCounts()
		var wg sync.WaitGroup
		bad := make(chan string, 20)
		for range 20 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if code, ds, _ := referrersOf(t, e, name, img.Index, ""); code != 200 || !slices.Equal(ds, []digest.Digest{ref}) {
					bad <- fmt.Sprintf("%d %v", code, ds)
				}
			}()
		}
		wg.Wait()
		close(bad)
		for b := range bad {
			t.Fatalf("api=%v: a client got %s, want the referrer %s", api, b, ref)
		}
		if n := e.hub.Count("GET referrers"); n != 1 {
			t.Fatalf("api=%v: 20 clients cost upstream %d referrers requests, want 1", api, n)
		}
		if code, ds, applied := referrersOf(t, e, name, img.Index, "?artifactType=application/other"); code != 200 || len(ds) != 0 || applied != "artifactType" {
			t.Fatalf("api=%v: filtered: %d %v %q", api, code, ds, applied)
		}
		if code, ds, _ := referrersOf(t, e, name, img.Index, "?artifactType="+url.QueryEscape(sbom)); code != 200 || len(ds) != 1 {
			t.Fatalf("api=%v: filtered on its type: %d %v", api, code, ds)
		}
		resp, body := e.do(t, "GET", "/v2/"+name+"/manifests/"+ref.String(), nil, map[string]string{"Accept": fakehub.MediaTypeOCIManifest})
		if resp.StatusCode != 200 || digest.FromBytes(body) != ref {
			t.Fatalf("api=%v: the referrer through the mirror: %d", api, resp.StatusCode)
		}
	}
	// A subject nothing refers to: an empty index (clients then stop).
	if code, ds, _ := referrersOf(t, e, "library/tagschema", digest.FromString("nothing"), ""); code != 200 || len(ds) != 0 {
		t.Fatalf("no referrers: %d %v", code, ds)
	}
	// Upstream down: the last answer.
	e.hub.SetFailStatus(http.StatusServiceUnavailable)
	time.Sleep(ttl + 50*time.Millisecond)
	if code, ds, _ := referrersOf(t, e, "library/referrersapi", last, ""); code != 200 || len(ds) != 1 {
		t.Fatalf("upstream down: %d %v; want the last answer", code, ds)
	}
}

// TestEmptiedRepositoryListsNoTags: once its last tag is deleted a
// repository lists no tags (200, as CNCF Distribution); a name that never
// held anything is still 404.
func TestEmptiedRepositoryListsNoTags(t *testing.T) {
	r := newTestRegistry(t, Options{AllowDelete: true})
	body := r.pushImage(t, "team/app", "v1", nil)
	d := digest.FromBytes(body)
	if resp, b := r.do(t, "DELETE", "/v2/team/app/manifests/"+d.String(), nil, nil); resp.StatusCode != http.StatusAccepted {
		t.Fatalf("delete: %d %s", resp.StatusCode, b)
	}
	resp, b := r.do(t, "GET", "/v2/team/app/tags/list", nil, nil)
	if resp.StatusCode != 200 || !strings.Contains(string(b), `"tags":[]`) {
		t.Fatalf("emptied repository: %d %s", resp.StatusCode, b)
	}
	if resp, _ := r.do(t, "GET", "/v2/team/never/tags/list", nil, nil); resp.StatusCode != http.StatusNotFound {
		t.Fatalf("a name never pushed: %d", resp.StatusCode)
	}
}

// TestMirroredBlobHead: after a client fetched a mirrored manifest, a HEAD
// of its layers without ?ns= (as copy tools and zb send) answers from the
// manifest's descriptors without asking upstream; a digest no manifest
// references stays unknown.
func TestMirroredBlobHead(t *testing.T) {
	e := newMirrorEnv(t, Options{PrefetchParallel: -1})
	img := e.hub.Push("library/heads", "1", smallImage(4))
	md := img.Manifests[platform]
	if resp, _ := e.do(t, "GET", "/v2/library/heads/manifests/"+md.String(), nil, nil); resp.StatusCode != 200 {
		t.Fatalf("manifest: %d", resp.StatusCode)
	}
	e.hub.ResetCounts()
	for _, d := range append([]digest.Digest{img.Configs[platform]}, img.Layers[platform]...) {
		resp, _ := e.do(t, "HEAD", "/v2/library/heads/blobs/"+d.String(), nil, nil)
		if resp.StatusCode != 200 || resp.Header.Get("Docker-Content-Digest") != d.String() || resp.ContentLength <= 0 {
			t.Fatalf("HEAD %s: %d, digest %q, length %d", d, resp.StatusCode, resp.Header.Get("Docker-Content-Digest"), resp.ContentLength)
		}
	}
	if resp, _ := e.do(t, "HEAD", "/v2/library/heads/blobs/"+digest.FromString("nobody").String(), nil, nil); resp.StatusCode != 404 {
		t.Fatalf("HEAD of a digest nothing references: %d", resp.StatusCode)
	}
	if n := e.hub.Count("requests"); n != 0 {
		t.Fatalf("the HEADs cost upstream %d requests", n)
	}
}

// TestMirroredDeleteNamesEviction: a registry DELETE of mirrored content
// is refused with the way that works.
func TestMirroredDeleteNamesEviction(t *testing.T) {
	e := newMirrorEnv(t, Options{AllowDelete: true})
	e.hub.Push("library/del", "1", smallImage(5))
	if err := e.pull(t.Context(), "library/del", "1", ""); err != nil {
		t.Fatal(err)
	}
	resp, body := e.do(t, "DELETE", "/v2/library/del/manifests/1", nil, nil)
	if resp.StatusCode != http.StatusMethodNotAllowed || !strings.Contains(string(body), "/api/v1/repositories/docker.io/library/del") ||
		!strings.Contains(string(body), "UNSUPPORTED") {
		t.Fatalf("DELETE of mirrored content: %d %s", resp.StatusCode, body)
	}
}

// TestDigestPullSurvivesGC: an image pulled by digest only is kept through
// collections long past the grace (a second pull costs upstream nothing);
// evicted through the API and collected, it is fetched again once per
// blob.
func TestDigestPullSurvivesGC(t *testing.T) {
	e := newMirrorEnv(t, Options{AllowDelete: true})
	img := e.hub.Push("library/pinned", "1", smallImage(6))
	pullByDigest := func() {
		t.Helper()
		if err := e.pull(t.Context(), "library/pinned", img.Index.String(), ""); err != nil {
			t.Fatal(err)
		}
		waitFillsDone(t, e)
	}
	pullByDigest()
	blobs := 1 + len(img.Layers[platform])
	for i := 1; i <= 4; i++ {
		if _, err := e.store.Maintenance().GC(cache.GCOptions{Grace: time.Hour, Now: time.Now().Add(time.Duration(i) * 3 * time.Hour)}); err != nil {
			t.Fatal(err)
		}
	}
	e.hub.ResetCounts()
	pullByDigest()
	if n := e.hub.Count("requests"); n != 0 {
		t.Fatalf("a pull by digest after 4 collections past the grace cost upstream %d requests", n)
	}
	if resp, b := e.do(t, "DELETE", "/api/v1/repositories/docker.io/library/pinned", nil, nil); resp.StatusCode != http.StatusAccepted {
		t.Fatalf("evict: %d %s", resp.StatusCode, b)
	}
	if resp, b := e.do(t, "POST", "/api/v1/gc", nil, nil); resp.StatusCode != 200 {
		t.Fatalf("gc: %d %s", resp.StatusCode, b)
	}
	e.hub.ResetCounts()
	pullByDigest()
	if n := e.hub.Count("GET blob"); n != blobs {
		t.Fatalf("after eviction the pull fetched %d blobs, want this platform's %d, once each", n, blobs)
	}
}

// TestTagTTLZeroRevalidatesEveryPull: the CLI's --tag-ttl 0 (a TTL of
// 1 ns here) asks upstream for the tag, and the tag list, on every read,
// as registry:2's proxy does.
func TestTagTTLZeroRevalidatesEveryPull(t *testing.T) {
	e := newMirrorEnv(t, Options{TagTTL: time.Nanosecond, PrefetchParallel: -1})
	e.hub.Push("library/fresh", "1", smallImage(7))
	for range 3 {
		if err := e.pull(t.Context(), "library/fresh", "1", ""); err != nil {
			t.Fatal(err)
		}
		tagList(t, e, "/v2/library/fresh/tags/list")
	}
	if n := e.hub.Count("HEAD manifest"); n < 3 {
		t.Fatalf("3 pulls with a TTL of 0 revalidated the tag %d times upstream", n)
	}
	if n := e.hub.Count("GET tags"); n != 3 {
		t.Fatalf("3 tag lists with a TTL of 0 asked upstream %d times", n)
	}
}

// TestLongTagListKeptInMemory: a tag list over the index's 1 MiB (9000
// tags of 120 characters) is not stored but kept in memory: within the
// TTL it costs upstream nothing more.
func TestLongTagListKeptInMemory(t *testing.T) {
	e := newMirrorEnv(t, Options{PrefetchParallel: -1})
	img := e.hub.Push("library/long", "t", smallImage(8))
	pad := strings.Repeat("x", 115)
	for i := range 9000 {
		e.hub.Retag("library/long", fmt.Sprintf("%s%05d", pad, i), img)
	}
	for i := range 2 {
		if code, tags, _ := tagList(t, e, "/v2/library/long/tags/list"); code != 200 || len(tags) != 9001 {
			t.Fatalf("list %d: %d, %d tags", i, code, len(tags))
		}
	}
	if n := e.hub.Count("GET tags"); n != 91 {
		t.Fatalf("two lists cost upstream %d GETs, want one listing of 91 pages", n)
	}
	if _, stored, err := e.store.Listing("docker.io/library/long", cache.TagsListing); stored || err != nil {
		t.Fatalf("a listing over 1 MiB was stored in the index (%v)", err)
	}
}
