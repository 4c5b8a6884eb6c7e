package mirror

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/wharf-registry/wharf/cache"
	"github.com/wharf-registry/wharf/internal/fakehub"
	"github.com/wharf-registry/wharf/mirror/registry"
	"github.com/wharf-registry/wharf/upstream"
)

// TestCorruptUpstreamBlob: the pull fails, nothing is cached; once the hub
// is fixed the pull succeeds. The larger layer is fetched in segments (the
// corrupt byte is in one of them): the split is forced, since whether a
// 4 MiB/s link counts as slow depends on how busy this machine is (the
// rule itself is upstream's TestSplitMeasure).
func TestCorruptUpstreamBlob(t *testing.T) {
	for _, size := range []int{1 << 20, 6 << 20} {
		m := registry.NewMetrics(prometheus.NewRegistry())
		e := newMirrorEnvWith(t, Options{PrefetchParallel: 1, Metrics: m}, upstream.Options{SplitAlways: true})
		img := e.hub.Push("library/redis", "7", fakehub.ImageSpec{Platforms: []string{platform}, Layers: 1, LayerSize: size, Seed: 4})
		layer := img.Layers[platform][0]
		e.hub.Corrupt(layer, true)
		// Throttled, so clients keep pace with the download and are waiting at
		// its end: the held-back tail is all that stands between them and a
		// complete corrupt body.
		e.hub.SetBandwidth(4 << 20)
		err := e.pull(context.Background(), "library/redis", "7", "")
		if err == nil {
			t.Fatalf("%d bytes: pull of a corrupt layer succeeded", size)
		}
		waitFillsDone(t, e)
		if _, err := e.store.StatBlob("docker.io/library/redis", layer); !errors.Is(err, cache.ErrBlobUnknown) {
			t.Fatalf("%d bytes: corrupt layer was cached: %v", size, err)
		}
		for deadline := time.Now().Add(5 * time.Second); testutil.ToFloat64(m.DigestFailures) < 1; time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%d bytes: the discarded download was not counted", size)
			}
		}
		if size > 4<<20 && e.hub.Count("GET range") == 0 {
			t.Fatalf("%d bytes: not fetched in segments", size)
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
			t.Fatalf("%d bytes: pull after the hub was fixed: %v", size, err)
		}
	}
}

// TestSmallCorruptBlobAnswered: a blob small enough to be held back whole
// that fails verification is answered with a 502 and an OCI error, not a
// 200 whose connection is then cut (an empty reply to the client).
func TestSmallCorruptBlobAnswered(t *testing.T) {
	e := newMirrorEnv(t, Options{PrefetchParallel: -1})
	img := e.hub.Push("library/tiny", "1", fakehub.ImageSpec{Platforms: []string{platform}, Layers: 1, LayerSize: 10 << 10, Seed: 41})
	layer := img.Layers[platform][0]
	e.hub.Corrupt(layer, true)
	resp, body := e.do(t, "GET", "/v2/library/tiny/blobs/"+layer.String(), nil, nil)
	if resp.StatusCode != http.StatusBadGateway || ociError(t, body) != "UNKNOWN" || resp.Header.Get("Docker-Content-Digest") != "" {
		t.Fatalf("corrupt small blob: %s %v %s", resp.Status, resp.Header, body)
	}
	waitFillsDone(t, e)
	e.hub.Corrupt(layer, false)
	resp, body = e.do(t, "GET", "/v2/library/tiny/blobs/"+layer.String(), nil, nil)
	if resp.StatusCode != 200 || digest.FromBytes(body) != layer {
		t.Fatalf("small blob after the hub was fixed: %s, %d bytes", resp.Status, len(body))
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
	// The client learns the category, not the upstream's address.
	if hub := strings.TrimPrefix(e.hub.URL, "http://"); strings.Contains(string(body), hub) || strings.Contains(string(body), "127.0.0.1") {
		t.Fatalf("the error names the upstream's address: %s", body)
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
// half completes with a Range request from where it broke, not from the
// start. (If the machine is slow enough for the layer to be fetched in
// segments, the segment that broke is fetched again from its break.)
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
	sent := e.hub.Count("bytes")
	if e.hub.Count("GET range") < 1 || sent > 256<<20+8<<20 {
		t.Fatalf("want a Range resume: %d ranged GETs, %d GETs of the layer, %d bytes sent for 256 MiB",
			e.hub.Count("GET range"), e.hub.Count("GET blob "+layer.String()), sent)
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

// TestRangeOnCorruptFillNeverCompletes: Range requests for most of a
// corrupted layer while it still downloads (the hold-back covers only the
// end of the whole blob) never complete with wrong bytes, and no answer
// about bytes still arriving is marked immutable.
func TestRangeOnCorruptFillNeverCompletes(t *testing.T) {
	e := newMirrorEnv(t, Options{PrefetchParallel: -1})
	img := e.hub.Push("library/ranged", "1", fakehub.ImageSpec{Platforms: []string{platform}, Layers: 1, LayerSize: 4 << 20, Seed: 77})
	layer := img.Layers[platform][0]
	e.hub.Corrupt(layer, true)
	e.hub.SetBandwidth(2 << 20) // about 2 s for the layer: the ranges arrive mid-download
	url := e.srv.URL + "/v2/library/ranged/blobs/" + layer.String()
	type answer struct {
		status int
		n      int
		err    error
		cc     string
	}
	results := make(chan answer, 10)
	for i := 0; i < 10; i++ {
		go func() {
			req, _ := http.NewRequest(http.MethodGet, url, nil)
			if i%2 == 0 {
				req.Header.Set("Range", "bytes=0-1999999")
			} else {
				req.Header.Set("Range", "bytes=1000-")
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				results <- answer{err: err}
				return
			}
			b, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			results <- answer{status: resp.StatusCode, n: len(b), err: err, cc: resp.Header.Get("Cache-Control")}
		}()
		time.Sleep(50 * time.Millisecond)
	}
	for i := 0; i < 10; i++ {
		a := <-results
		if a.err == nil && (a.status == http.StatusPartialContent || a.status == http.StatusOK) {
			t.Fatalf("a complete %d of %d bytes for a corrupt layer (Cache-Control %q)", a.status, a.n, a.cc)
		}
	}
	waitFillsDone(t, e)
	// A plain GET streamed from a download in flight is not immutable.
	e.hub.Corrupt(layer, false)
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := digest.FromReader(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || got != layer || resp.Header.Get("Cache-Control") != "" {
		t.Fatalf("streamed GET: %s, digest %s, Cache-Control %q", resp.Status, got, resp.Header.Get("Cache-Control"))
	}
	waitFillsDone(t, e)
	resp, err = http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if cc := resp.Header.Get("Cache-Control"); !strings.Contains(cc, "immutable") {
		t.Fatalf("stored blob served with Cache-Control %q", cc)
	}
}

// TestPrefetchNarrowsOnSharedLink: when the upstream's blobs share one
// bottleneck (a split brought nothing: its total bandwidth is capped), a
// manifest's blobs are prefetched one at a time; when each
// connection is capped (a split helped), all at once.
func TestPrefetchNarrowsOnSharedLink(t *testing.T) {
	for _, shared := range []bool{true, false} {
		e := newMirrorEnvWith(t, Options{}, upstream.Options{SplitBelow: 64 << 20, SegmentSize: 1 << 20})
		e.hub.Push("library/first", "1", fakehub.ImageSpec{Platforms: []string{platform}, Layers: 1, LayerSize: 4 << 20, Seed: 61})
		img := e.hub.Push("library/second", "1", fakehub.ImageSpec{Platforms: []string{platform}, Layers: 6, LayerSize: 512 << 10, Seed: 62})
		if shared { // slow enough to be split on a loaded machine too
			e.hub.SetTotalBandwidth(4 << 20)
		} else {
			e.hub.SetBandwidth(2 << 20)
		}
		// The first image teaches the mirror what splitting brings.
		if err := e.pull(context.Background(), "library/first", "1", ""); err != nil {
			t.Fatal(err)
		}
		waitFillsDone(t, e)
		if e.hub.Count("GET range") == 0 {
			t.Fatalf("shared %v: the 4 MiB layer was not split", shared)
		}
		e.hub.ResetCounts()
		// The second image's manifest starts the prefetch of its blobs.
		if resp, _ := e.do(t, "GET", "/v2/library/second/manifests/"+img.Manifests[platform].String(), nil, nil); resp.StatusCode != 200 {
			t.Fatal(resp.Status)
		}
		for _, d := range img.Blobs {
			for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(10 * time.Millisecond) {
				if _, err := e.store.StatBlob("docker.io/library/second", d); err == nil {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("shared %v: blob %s was not prefetched", shared, d)
				}
			}
		}
		at := e.hub.Count("blob GETs at once")
		if shared && at > 1 || !shared && at < 4 {
			t.Fatalf("shared %v: %d blob GETs at once", shared, at)
		}
	}
}
