package mirror

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/sync/errgroup"

	"github.com/wharf-registry/wharf/cache"
	"github.com/wharf-registry/wharf/internal/fakehub"
	"github.com/wharf-registry/wharf/upstream"
)

// mirrorEnv is Wharf in mirror mode over a real store, with docker.io (and
// ghcr.io) pointed at fake hubs.
type mirrorEnv struct {
	*testRegistry
	hub, ghcr *fakehub.Hub
	reg       *Registry
}

func newMirrorEnv(t *testing.T, opts Options) *mirrorEnv {
	t.Helper()
	hub, ghcr := fakehub.Start(t), fakehub.Start(t)
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	up, err := upstream.New(upstream.Options{
		Registries: []upstream.Registry{{Name: "docker.io", Endpoint: hub.URL}, {Name: "ghcr.io", Endpoint: ghcr.URL}},
		ProbeEvery: 50 * time.Millisecond, Logger: quiet,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(up.Close)
	dir := t.TempDir()
	st, err := cache.Open(cache.Options{Dir: dir, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	opts.Upstream, opts.Logger = up, quiet
	reg := New(st, opts)
	srv := httptest.NewServer(reg)
	t.Cleanup(func() {
		srv.Close()
		reg.Close()
		st.Close()
	})
	return &mirrorEnv{testRegistry: &testRegistry{srv: srv, store: st, dir: dir}, hub: hub, ghcr: ghcr, reg: reg}
}

var platform = "linux/" + runtime.GOARCH

// pull does what dockerd does through a mirror: the index by tag, this
// platform's manifest, then config and layers three at a time, checking
// every digest. query is appended to every URL (for ?ns=).
func (e *mirrorEnv) pull(ctx context.Context, name, tag, query string) error {
	get := func(path string) ([]byte, *http.Response, error) {
		req, _ := http.NewRequestWithContext(ctx, "GET", e.srv.URL+path+query, nil)
		req.Header.Set("Accept", strings.Join([]string{fakehub.MediaTypeDockerList, fakehub.MediaTypeDockerManifest, fakehub.MediaTypeOCIIndex, fakehub.MediaTypeOCIManifest}, ","))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return nil, nil, err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			return nil, resp, err
		}
		if resp.StatusCode != http.StatusOK {
			return b, resp, fmt.Errorf("GET %s: %s %s", path, resp.Status, b)
		}
		return b, resp, nil
	}
	idx, _, err := get("/v2/" + name + "/manifests/" + tag)
	if err != nil {
		return err
	}
	var list struct {
		Manifests []struct {
			Digest   digest.Digest
			Platform struct{ OS, Architecture string }
		}
	}
	json.Unmarshal(idx, &list)
	var md digest.Digest
	for _, m := range list.Manifests {
		if m.Platform.OS+"/"+m.Platform.Architecture == platform {
			md = m.Digest
		}
	}
	man, _, err := get("/v2/" + name + "/manifests/" + md.String())
	if err != nil {
		return err
	}
	if digest.FromBytes(man) != md {
		return fmt.Errorf("manifest %s: wrong bytes", md)
	}
	var m struct {
		Config struct{ Digest digest.Digest }
		Layers []struct{ Digest digest.Digest }
	}
	json.Unmarshal(man, &m)
	var g errgroup.Group
	g.SetLimit(3)
	for _, d := range append([]digest.Digest{m.Config.Digest}, func() (ds []digest.Digest) {
		for _, l := range m.Layers {
			ds = append(ds, l.Digest)
		}
		return
	}()...) {
		g.Go(func() error {
			b, _, err := get("/v2/" + name + "/blobs/" + d.String())
			if err != nil {
				return err
			}
			if digest.FromBytes(b) != d {
				return fmt.Errorf("blob %s: got %s", d, digest.FromBytes(b))
			}
			return nil
		})
	}
	return g.Wait()
}

func smallImage(seed uint64) fakehub.ImageSpec {
	return fakehub.ImageSpec{Platforms: []string{"linux/amd64", "linux/arm64"}, Layers: 3, LayerSize: 200 << 10, Seed: seed}
}

// TestConcurrentColdPulls: 20 clients pull the same new image at once;
// Docker Hub sees one GET per blob and per manifest.
func TestConcurrentColdPulls(t *testing.T) {
	e := newMirrorEnv(t, Options{})
	img := e.hub.Push("library/alpine", "latest", smallImage(1))
	e.hub.SetLatency(20 * time.Millisecond)
	var g errgroup.Group
	for i := 0; i < 20; i++ {
		g.Go(func() error { return e.pull(context.Background(), "library/alpine", "latest", "") })
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	for _, d := range img.Blobs {
		if n := e.hub.Count("GET blob " + d.String()); n > 1 {
			t.Fatalf("blob %s fetched %d times from upstream", d, n)
		}
	}
	// This platform's config and layers were fetched; the index and one
	// platform manifest: two manifest GETs in all.
	if n := e.hub.Count("GET blob"); n != 4 {
		t.Fatalf("%d upstream blob GETs, want 4 (config + 3 layers of one platform)", n)
	}
	if n := e.hub.Count("GET manifest"); n != 2 {
		t.Fatalf("%d upstream manifest GETs, want 2", n)
	}
}

// TestWarmPullAndTTL: a second pull needs no upstream blob; within the TTL
// no upstream request at all; after it only a HEAD.
func TestWarmPullAndTTL(t *testing.T) {
	e := newMirrorEnv(t, Options{TagTTL: 300 * time.Millisecond})
	e.hub.Push("library/nginx", "1.27", smallImage(2))
	ctx := context.Background()
	if err := e.pull(ctx, "library/nginx", "1.27", ""); err != nil {
		t.Fatal(err)
	}
	waitFillsDone(t, e)
	e.hub.ResetCounts()
	if err := e.pull(ctx, "library/nginx", "1.27", ""); err != nil {
		t.Fatal(err)
	}
	if n := e.hub.Count("GET blob") + e.hub.Count("GET manifest") + e.hub.Count("HEAD manifest"); n != 0 {
		t.Fatalf("warm pull within the TTL made %d upstream requests", n)
	}
	time.Sleep(350 * time.Millisecond)
	if err := e.pull(ctx, "nginx", "1.27", ""); err != nil { // single-component name: library/nginx
		t.Fatal(err)
	}
	if e.hub.Count("GET blob") != 0 || e.hub.Count("GET manifest") != 0 || e.hub.Count("HEAD manifest") != 1 {
		t.Fatalf("after the TTL: %d blob GETs, %d manifest GETs, %d HEADs; want 0, 0, 1",
			e.hub.Count("GET blob"), e.hub.Count("GET manifest"), e.hub.Count("HEAD manifest"))
	}
	// The tag moves upstream: after the TTL the new image is served.
	img2 := e.hub.Push("library/nginx", "1.27", smallImage(3))
	time.Sleep(350 * time.Millisecond)
	resp, _ := e.do(t, "GET", "/v2/library/nginx/manifests/1.27", nil, nil)
	if resp.Header.Get("Docker-Content-Digest") != img2.Index.String() {
		t.Fatalf("moved tag: serving %s, want %s", resp.Header.Get("Docker-Content-Digest"), img2.Index)
	}
}

// waitFillsDone waits until no download is in flight (prefetches included).
func waitFillsDone(t *testing.T, e *mirrorEnv) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if n := e.reg.pull.fills.InFlight(); n == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d downloads still in flight", e.reg.pull.fills.InFlight())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestCorruptUpstreamBlob: the pull fails, nothing is cached; once the hub
// is fixed the pull succeeds.
func TestCorruptUpstreamBlob(t *testing.T) {
	e := newMirrorEnv(t, Options{PrefetchParallel: 1})
	img := e.hub.Push("library/redis", "7", fakehub.ImageSpec{Platforms: []string{platform}, Layers: 1, LayerSize: 1 << 20, Seed: 4})
	layer := img.Layers[platform][0]
	e.hub.Corrupt(layer, true)
	// Throttled, so clients keep pace with the download and are waiting at
	// its end: the held-back tail is all that stands between them and a
	// complete corrupt body.
	e.hub.SetBandwidth(4 << 20)
	err := e.pull(context.Background(), "library/redis", "7", "")
	if err == nil {
		t.Fatal("pull of a corrupt layer succeeded")
	}
	waitFillsDone(t, e)
	if _, err := e.store.StatBlob("docker.io/library/redis", layer); !errors.Is(err, cache.ErrBlobUnknown) {
		t.Fatalf("corrupt layer was cached: %v", err)
	}
	// Whatever a client received, it was never the full body.
	resp, err := http.Get(e.srv.URL + "/v2/library/redis/blobs/" + layer.String())
	if err == nil {
		b, rerr := io.ReadAll(resp.Body)
		resp.Body.Close()
		if rerr == nil && resp.StatusCode == 200 {
			t.Fatalf("a complete 200 response (%d bytes, digest %s) for corrupt content", len(b), digest.FromBytes(b))
		}
	}
	waitFillsDone(t, e)
	e.hub.Corrupt(layer, false)
	if err := e.pull(context.Background(), "library/redis", "7", ""); err != nil {
		t.Fatalf("pull after the hub was fixed: %v", err)
	}
}

// TestUpstreamDown: warm pulls work with the hub gone, stale tags
// included; a cold pull gets 503 quickly.
func TestUpstreamDown(t *testing.T) {
	e := newMirrorEnv(t, Options{TagTTL: time.Millisecond})
	e.hub.Push("library/alpine", "3", smallImage(5))
	e.hub.Push("library/busybox", "1", smallImage(6))
	ctx := context.Background()
	if err := e.pull(ctx, "library/alpine", "3", ""); err != nil {
		t.Fatal(err)
	}
	waitFillsDone(t, e)
	e.hub.Close()
	for i := 0; i < 3; i++ {
		start := time.Now()
		if err := e.pull(ctx, "library/alpine", "3", ""); err != nil {
			t.Fatalf("warm pull with upstream down: %v", err)
		}
		if i > 0 && time.Since(start) > time.Second {
			t.Fatalf("warm pull took %s with upstream down", time.Since(start))
		}
	}
	start := time.Now()
	resp, body := e.do(t, "GET", "/v2/library/busybox/manifests/1", nil, nil)
	if resp.StatusCode != http.StatusServiceUnavailable || ociError(t, body) != "UNAVAILABLE" || time.Since(start) > time.Second {
		t.Fatalf("cold pull with upstream down: %s %s after %s", resp.Status, body, time.Since(start))
	}
}

// TestUpstreamRateLimited: with Docker Hub answering 429, stale tags are
// served and a cold pull gets TOOMANYREQUESTS with Retry-After.
func TestUpstreamRateLimited(t *testing.T) {
	e := newMirrorEnv(t, Options{TagTTL: time.Millisecond})
	e.hub.Push("library/alpine", "3", smallImage(7))
	e.hub.Push("library/busybox", "1", smallImage(8))
	ctx := context.Background()
	if err := e.pull(ctx, "library/alpine", "3", ""); err != nil {
		t.Fatal(err)
	}
	waitFillsDone(t, e)
	e.hub.SetRateLimit(1, 42) // already used: every further GET is a 429
	resp, body := e.do(t, "GET", "/v2/library/busybox/manifests/1", nil, nil)
	if resp.StatusCode != http.StatusTooManyRequests || ociError(t, body) != "TOOMANYREQUESTS" || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("cold pull while rate limited: %s %v %s", resp.Status, resp.Header, body)
	}
	if err := e.pull(ctx, "library/alpine", "3", ""); err != nil {
		t.Fatalf("stale tag while rate limited: %v", err)
	}
}

// TestDroppedConnectionResumes: a 256 MiB layer whose connection drops at
// half completes with one Range request.
func TestDroppedConnectionResumes(t *testing.T) {
	if testing.Short() {
		t.Skip("256 MiB layer")
	}
	e := newMirrorEnv(t, Options{})
	img := e.hub.Push("library/big", "1", fakehub.ImageSpec{Platforms: []string{platform}, Layers: 1, LayerSize: 256 << 20, Seed: 9})
	layer := img.Layers[platform][0]
	e.hub.DropAt(layer, 128<<20)
	if err := e.pull(context.Background(), "library/big", "1", ""); err != nil {
		t.Fatal(err)
	}
	if e.hub.Count("GET range") != 1 || e.hub.Count("GET blob "+layer.String()) != 2 {
		t.Fatalf("want one Range resume: %d ranged GETs, %d GETs of the layer", e.hub.Count("GET range"), e.hub.Count("GET blob "+layer.String()))
	}
}

// TestClientDisconnectKeepsFilling: the first client goes away mid-layer;
// the download completes and the next client is served from the cache.
func TestClientDisconnectKeepsFilling(t *testing.T) {
	e := newMirrorEnv(t, Options{PrefetchParallel: 1})
	img := e.hub.Push("library/slow", "1", fakehub.ImageSpec{Platforms: []string{platform}, Layers: 1, LayerSize: 4 << 20, Seed: 10})
	layer := img.Layers[platform][0]
	e.hub.SetBandwidth(8 << 20) // ~0.5 s for the layer
	conn, err := net.Dial("tcp", strings.TrimPrefix(e.srv.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(conn, "GET /v2/library/slow/blobs/%s HTTP/1.1\r\nHost: x\r\n\r\n", layer)
	buf := make([]byte, 64<<10)
	if _, err := io.ReadAtLeast(conn, buf, len(buf)); err != nil {
		t.Fatal(err)
	}
	conn.Close() // gone mid-download
	waitFillsDone(t, e)
	if _, err := e.store.StatBlob("docker.io/library/slow", layer); err != nil {
		t.Fatalf("fill stopped with its client: %v", err)
	}
	e.hub.ResetCounts()
	resp, body := e.do(t, "GET", "/v2/library/slow/blobs/"+layer.String(), nil, nil)
	if resp.StatusCode != 200 || digest.FromBytes(body) != layer || e.hub.Count("GET blob") != 0 {
		t.Fatalf("next client: %s, %d upstream GETs", resp.Status, e.hub.Count("GET blob"))
	}
}

// TestRangeOnInflightBlob: a Range request on a blob still downloading is
// answered with 206 from the growing file.
func TestRangeOnInflightBlob(t *testing.T) {
	e := newMirrorEnv(t, Options{})
	img := e.hub.Push("library/r", "1", fakehub.ImageSpec{Platforms: []string{platform}, Layers: 1, LayerSize: 2 << 20, Seed: 11})
	e.hub.SetBandwidth(4 << 20)
	layer := img.Layers[platform][0]
	full, _ := e.do(t, "HEAD", "/v2/r/blobs/"+layer.String()+"?ns=docker.io", nil, nil)
	if full.StatusCode != 200 {
		t.Fatalf("HEAD: %s", full.Status)
	}
	resp, body := e.do(t, "GET", "/v2/library/r/blobs/"+layer.String(), nil, map[string]string{"Range": "bytes=100-1099"})
	if resp.StatusCode != http.StatusPartialContent || len(body) != 1000 {
		t.Fatalf("range on in-flight blob: %s, %d bytes", resp.Status, len(body))
	}
	waitFillsDone(t, e)
	_, whole := e.do(t, "GET", "/v2/library/r/blobs/"+layer.String(), nil, nil)
	if string(whole[100:1100]) != string(body) {
		t.Fatal("ranged bytes differ from the blob")
	}
}

// TestRouting: ?ns= selects a registry and is echoed in OCI-Namespace; a
// registry host as first path component works too; a registry that is not
// allowed is refused without a connection.
func TestRouting(t *testing.T) {
	e := newMirrorEnv(t, Options{})
	img := e.ghcr.Push("org/app", "v1", smallImage(12))
	ctx := context.Background()
	if err := e.pull(ctx, "org/app", "v1", "?ns=ghcr.io"); err != nil {
		t.Fatal(err)
	}
	resp, _ := e.do(t, "GET", "/v2/org/app/manifests/v1?ns=ghcr.io", nil, nil)
	if resp.Header.Get("OCI-Namespace") != "ghcr.io" || resp.Header.Get("Docker-Content-Digest") != img.Index.String() {
		t.Fatalf("?ns= answer: %v", resp.Header)
	}
	if err := e.pull(ctx, "ghcr.io/org/app", "v1", ""); err != nil {
		t.Fatalf("registry prefix: %v", err)
	}
	if e.hub.Count("GET manifest")+e.hub.Count("HEAD manifest") != 0 {
		t.Fatal("ghcr.io content was asked of docker.io")
	}
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	defer ln.Close()
	accepted := make(chan struct{}, 1)
	go func() {
		if c, err := ln.Accept(); err == nil {
			c.Close()
			accepted <- struct{}{}
		}
	}()
	resp, body := e.do(t, "GET", "/v2/x/y/manifests/v1?ns="+ln.Addr().String(), nil, nil)
	if resp.StatusCode != http.StatusForbidden || ociError(t, body) != "DENIED" {
		t.Fatalf("registry off the allow-list: %s %s", resp.Status, body)
	}
	select {
	case <-accepted:
		t.Fatal("Wharf connected to a registry that is not allowed")
	case <-time.After(100 * time.Millisecond):
	}
}

// TestPrivateAndMirroredNames: a pushed repository never goes upstream; a
// push may not shadow mirrored content or name another registry.
func TestPrivateAndMirroredNames(t *testing.T) {
	e := newMirrorEnv(t, Options{})
	e.hub.Push("team/app", "v1", smallImage(13)) // Docker Hub has team/app too
	e.pushImage(t, "team/app", "v1", nil)
	resp, _ := e.do(t, "GET", "/v2/team/app/manifests/v1", nil, nil)
	if resp.StatusCode != 200 || e.hub.Count("GET manifest")+e.hub.Count("HEAD manifest") != 0 {
		t.Fatalf("private repository: %s, %d upstream requests", resp.Status, e.hub.Count("GET manifest"))
	}
	e.hub.Push("library/alpine", "latest", smallImage(14))
	if err := e.pull(context.Background(), "library/alpine", "latest", ""); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{"/v2/library/alpine/blobs/uploads/", "/v2/alpine/blobs/uploads/", "/v2/ghcr.io/org/x/blobs/uploads/", "/v2/org/x/blobs/uploads/?ns=ghcr.io"} {
		resp, body := e.do(t, "POST", path, nil, nil)
		if resp.StatusCode != http.StatusForbidden || ociError(t, body) != "DENIED" {
			t.Fatalf("push to %s: %s %s", path, resp.Status, body)
		}
	}
	// The mirrored content is unchanged for the next mirror client.
	if err := e.pull(context.Background(), "library/alpine", "latest", ""); err != nil {
		t.Fatal(err)
	}
}

func TestOffline(t *testing.T) {
	e := newMirrorEnv(t, Options{Offline: true})
	e.hub.Push("library/alpine", "latest", smallImage(15))
	resp, body := e.do(t, "GET", "/v2/library/alpine/manifests/latest", nil, nil)
	if resp.StatusCode != http.StatusNotFound || ociError(t, body) != "MANIFEST_UNKNOWN" {
		t.Fatalf("offline miss: %s %s", resp.Status, body)
	}
	if e.hub.Count("HEAD manifest")+e.hub.Count("GET manifest") != 0 {
		t.Fatal("offline mode contacted upstream")
	}
}

// TestForwardedCredentialsIgnored: dockerd forwards Docker Hub credentials
// to its mirrors; they never break an anonymous pull.
func TestForwardedCredentialsIgnored(t *testing.T) {
	e := newMirrorEnv(t, Options{})
	e.hub.Push("library/alpine", "latest", smallImage(16))
	for _, auth := range []string{"Basic ZG9ja2VyaHViOnNlY3JldA==", "Bearer some.hub.jwt"} {
		resp, body := e.do(t, "GET", "/v2/library/alpine/manifests/latest", nil, map[string]string{"Authorization": auth})
		if resp.StatusCode != 200 {
			t.Fatalf("pull with Authorization %q: %s %s", auth, resp.Status, body)
		}
	}
	if e.hub.Count("credleak") != 0 {
		t.Fatal("a client's credentials were forwarded upstream")
	}
}

// TestPrefetchPlatforms: an index fetch also fetches the configured
// platforms' manifests and blobs before any client asks.
func TestPrefetchPlatforms(t *testing.T) {
	e := newMirrorEnv(t, Options{PrefetchPlatforms: []string{"linux/arm64"}})
	img := e.hub.Push("library/multi", "1", smallImage(17))
	resp, _ := e.do(t, "GET", "/v2/library/multi/manifests/1", nil, nil)
	if resp.StatusCode != 200 {
		t.Fatal(resp.Status)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := e.store.StatBlob("docker.io/library/multi", img.Configs["linux/arm64"])
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("arm64 config was not prefetched")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := e.store.GetManifest("docker.io/library/multi", img.Manifests["linux/amd64"].String()); err == nil {
		t.Fatal("a platform that was not configured was prefetched")
	}
}

// TestStaleTagRevalidatedOnce: many clients asking for a stale tag at once
// cause one HEAD upstream.
func TestStaleTagRevalidatedOnce(t *testing.T) {
	e := newMirrorEnv(t, Options{TagTTL: 50 * time.Millisecond})
	e.hub.Push("library/alpine", "3", smallImage(18))
	if resp, _ := e.do(t, "GET", "/v2/library/alpine/manifests/3", nil, nil); resp.StatusCode != 200 {
		t.Fatal(resp.Status)
	}
	time.Sleep(60 * time.Millisecond)
	e.hub.ResetCounts()
	e.hub.SetLatency(100 * time.Millisecond) // keep the HEAD in flight while the others arrive
	var g errgroup.Group
	for i := 0; i < 10; i++ {
		g.Go(func() error {
			resp, err := http.Get(e.srv.URL + "/v2/library/alpine/manifests/3")
			if err != nil {
				return err
			}
			resp.Body.Close()
			if resp.StatusCode != 200 {
				return fmt.Errorf("%s", resp.Status)
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	if n := e.hub.Count("HEAD manifest"); n != 1 {
		t.Fatalf("%d revalidation HEADs for 10 concurrent clients, want 1", n)
	}
}

// TestSharedLayerDownloadedOnce: a layer two mirrored repositories share is
// downloaded once; the second repository gets it after a HEAD.
func TestSharedLayerDownloadedOnce(t *testing.T) {
	e := newMirrorEnv(t, Options{})
	spec := fakehub.ImageSpec{Platforms: []string{platform}, Layers: 2, LayerSize: 256 << 10, Seed: 19}
	img := e.hub.Push("library/python", "3", spec)
	e.hub.Push("library/node", "22", spec) // same layers and config
	if err := e.pull(context.Background(), "library/python", "3", ""); err != nil {
		t.Fatal(err)
	}
	waitFillsDone(t, e)
	e.hub.ResetCounts()
	if err := e.pull(context.Background(), "library/node", "22", ""); err != nil {
		t.Fatal(err)
	}
	waitFillsDone(t, e)
	for _, d := range img.Blobs {
		if n := e.hub.Count("GET blob " + d.String()); n != 0 {
			t.Fatalf("shared blob %s downloaded again (%d GETs)", d, n)
		}
	}
	if e.hub.Count("HEAD blob") == 0 {
		t.Fatal("shared blobs were linked without asking upstream")
	}
	// A repository upstream does not hold the blob in gets no link.
	if resp, body := e.do(t, "GET", "/v2/library/other/blobs/"+img.Blobs[0].String(), nil, nil); resp.StatusCode != http.StatusNotFound {
		t.Fatalf("blob served through a repository upstream does not have it: %s %s", resp.Status, body)
	}
}

// TestEvictionLRU: past the high-water mark the least recently used
// mirrored image goes first; private content and the rest stay intact; a
// pull of the evicted image fetches it again, correctly.
func TestEvictionLRU(t *testing.T) {
	e := newMirrorEnv(t, Options{})
	e.pushImage(t, "team/private", "v1", nil)
	ctx := context.Background()
	for i, name := range []string{"library/a", "library/b", "library/c"} {
		e.hub.Push(name, "1", fakehub.ImageSpec{Platforms: []string{platform}, Layers: 2, LayerSize: 300 << 10, Seed: uint64(40 + i)})
		if err := e.pull(ctx, name, "1", ""); err != nil {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	waitFillsDone(t, e)
	if err := e.pull(ctx, "library/a", "1", ""); err != nil { // a is used again: b is now the oldest
		t.Fatal(err)
	}
	size, err := e.store.Size()
	if err != nil {
		t.Fatal(err)
	}
	rep, err := e.store.Evict(cache.EvictOptions{
		MaxBytes: int64(float64(size) / 0.96), // just above the high-water mark
		GC:       cache.GCOptions{Grace: time.Hour, Now: time.Now().Add(2 * time.Hour)},
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Tags) != 1 || rep.Tags[0] != "docker.io/library/b:1" || rep.Freed <= 0 {
		t.Fatalf("evicted %v (freed %d), want only docker.io/library/b:1", rep.Tags, rep.Freed)
	}
	if resp, _ := e.do(t, "GET", "/v2/team/private/manifests/v1", nil, nil); resp.StatusCode != 200 {
		t.Fatalf("private image after eviction: %s", resp.Status)
	}
	e.hub.ResetCounts()
	for _, name := range []string{"library/a", "library/c"} {
		if err := e.pull(ctx, name, "1", ""); err != nil {
			t.Fatalf("%s after eviction: %v", name, err)
		}
	}
	if n := e.hub.Count("GET blob"); n != 0 {
		t.Fatalf("kept images were fetched again (%d blob GETs)", n)
	}
	if err := e.pull(ctx, "library/b", "1", ""); err != nil {
		t.Fatalf("evicted image: %v", err)
	}
	if e.hub.Count("GET blob") == 0 {
		t.Fatal("the evicted image was not fetched again")
	}
}

// TestRetention: mirrored tags unused for longer than the retention go
// even under the quota.
func TestRetention(t *testing.T) {
	e := newMirrorEnv(t, Options{})
	e.hub.Push("library/old", "1", smallImage(50))
	if err := e.pull(context.Background(), "library/old", "1", ""); err != nil {
		t.Fatal(err)
	}
	waitFillsDone(t, e)
	rep, err := e.store.Evict(cache.EvictOptions{Retention: time.Hour,
		GC: cache.GCOptions{Grace: time.Hour, Now: time.Now().Add(2 * time.Hour)}})
	if err != nil || len(rep.Tags) != 1 || rep.Freed <= 0 {
		t.Fatalf("retention: %+v %v", rep, err)
	}
}

// TestMetricsColdAndWarm: after a cold pull and a warm pull the counters
// show the misses, hits and bytes of exactly those pulls (prefetching off,
// so every fetch is the client's).
func TestMetricsColdAndWarm(t *testing.T) {
	preg := prometheus.NewRegistry()
	m := NewMetrics(preg)
	e := newMirrorEnv(t, Options{Metrics: m, PrefetchParallel: -1})
	e.hub.Push("library/metrics", "1", fakehub.ImageSpec{Platforms: []string{platform, "linux/s390x"}, Layers: 3, LayerSize: 100 << 10, Seed: 60})
	ctx := context.Background()
	if err := e.pull(ctx, "library/metrics", "1", ""); err != nil {
		t.Fatal(err)
	}
	waitFillsDone(t, e)
	fetched := float64(e.hub.Count("bytes")) // blob bytes the hub sent: config and 3 layers
	get := func(c prometheus.Collector) float64 { return testutil.ToFloat64(c) }
	check := func(when string, want map[string]float64) {
		t.Helper()
		got := map[string]float64{
			"manifest hit": get(m.Cache.WithLabelValues("manifest", "hit")), "manifest miss": get(m.Cache.WithLabelValues("manifest", "miss")),
			"blob hit": get(m.Cache.WithLabelValues("blob", "hit")), "blob miss": get(m.Cache.WithLabelValues("blob", "miss")),
			"upstream bytes": get(m.UpstreamBytes), "served from upstream": get(m.BytesServed.WithLabelValues("upstream")),
			"served from cache": get(m.BytesServed.WithLabelValues("cache")),
		}
		for k, v := range want {
			if got[k] != v {
				t.Errorf("%s: %s = %v, want %v (all: %v)", when, k, got[k], v, got)
			}
		}
	}
	check("after the cold pull", map[string]float64{"manifest hit": 0, "manifest miss": 2, "blob hit": 0, "blob miss": 4,
		"upstream bytes": fetched, "served from upstream": fetched, "served from cache": 0})
	if err := e.pull(ctx, "library/metrics", "1", ""); err != nil {
		t.Fatal(err)
	}
	check("after the warm pull", map[string]float64{"manifest hit": 2, "manifest miss": 2, "blob hit": 4, "blob miss": 4,
		"upstream bytes": fetched, "served from upstream": fetched, "served from cache": fetched})
	if n := get(m.Requests.WithLabelValues("blob", "GET", "200")); n != 8 {
		t.Errorf("blob GET 200 requests: %v, want 8", n)
	}
	if get(m.Upstream.WithLabelValues("docker.io", "blob", "ok")) != 4 || get(m.Upstream.WithLabelValues("docker.io", "manifest", "ok")) != 2 {
		t.Errorf("upstream operations: %v blob, %v manifest", get(m.Upstream.WithLabelValues("docker.io", "blob", "ok")), get(m.Upstream.WithLabelValues("docker.io", "manifest", "ok")))
	}
}
