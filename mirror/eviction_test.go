package mirror

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/wharf-registry/wharf/cache"
	"github.com/wharf-registry/wharf/internal/fakehub"
	"github.com/wharf-registry/wharf/mirror/registry"
	"github.com/wharf-registry/wharf/policy"
)

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
	size, err := e.store.Maintenance().Size()
	if err != nil {
		t.Fatal(err)
	}
	rep, err := e.store.Maintenance().Evict(cache.EvictOptions{
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
	rep, err := e.store.Maintenance().Evict(cache.EvictOptions{Retention: time.Hour,
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
	m := registry.NewMetrics(preg)
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
		// A handler counts its bytes as it returns, which can be just after
		// the client read the last of them: give it a moment.
		for deadline := time.Now().Add(2 * time.Second); ; time.Sleep(10 * time.Millisecond) {
			got := map[string]float64{
				"manifest hit": get(m.Cache.WithLabelValues("manifest", "hit")), "manifest miss": get(m.Cache.WithLabelValues("manifest", "miss")),
				"blob hit": get(m.Cache.WithLabelValues("blob", "hit")), "blob miss": get(m.Cache.WithLabelValues("blob", "miss")),
				"upstream bytes": get(m.UpstreamBytes), "served from upstream": get(m.BytesServed.WithLabelValues("upstream")),
				"served from cache": get(m.BytesServed.WithLabelValues("cache")),
			}
			var wrong []string
			for k, v := range want {
				if got[k] != v {
					wrong = append(wrong, fmt.Sprintf("%s = %v, want %v", k, got[k], v))
				}
			}
			if len(wrong) == 0 {
				return
			}
			if time.Now().After(deadline) {
				t.Errorf("%s: %v (all: %v)", when, wrong, got)
				return
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
	for deadline := time.Now().Add(2 * time.Second); get(m.Requests.WithLabelValues("blob", "GET", "200")) < 8 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	if n := get(m.Requests.WithLabelValues("blob", "GET", "200")); n != 8 {
		t.Errorf("blob GET 200 requests: %v, want 8", n)
	}
	if get(m.Upstream.WithLabelValues("docker.io", "blob", "ok")) != 4 || get(m.Upstream.WithLabelValues("docker.io", "manifest", "ok")) != 2 {
		t.Errorf("upstream operations: %v blob, %v manifest", get(m.Upstream.WithLabelValues("docker.io", "blob", "ok")), get(m.Upstream.WithLabelValues("docker.io", "manifest", "ok")))
	}
}

// TestPinnedSurvivesEviction: `pin: ["a:*"]` keeps docker.io/library/a
// through a quota that evicts every other mirrored image and through
// --retention; it is served from the store afterwards.
func TestPinnedSurvivesEviction(t *testing.T) {
	e := newMirrorEnv(t, Options{})
	ctx := context.Background()
	for i, name := range []string{"library/a", "library/b", "library/c"} {
		e.hub.Push(name, "1", fakehub.ImageSpec{Platforms: []string{platform}, Layers: 2, LayerSize: 200 << 10, Seed: uint64(70 + i)})
		if err := e.pull(ctx, name, "1", ""); err != nil {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	waitFillsDone(t, e)
	pol, err := policy.New(0, policy.Config{Pin: []string{"a:*"}})
	if err != nil {
		t.Fatal(err)
	}
	if !pol.Pinned("docker.io/library/a", "1") || pol.Pinned("docker.io/library/b", "1") {
		t.Fatal("the pin does not name docker.io/library/a alone")
	}
	rep, err := e.store.Maintenance().Evict(cache.EvictOptions{MaxBytes: 1, Retention: time.Minute, Pinned: pol.Pinned,
		GC: cache.GCOptions{Grace: time.Hour, Now: time.Now().Add(2 * time.Hour)}})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(rep.Tags)
	if !slices.Equal(rep.Tags, []string{"docker.io/library/b:1", "docker.io/library/c:1"}) {
		t.Fatalf("evicted %v, want b and c only", rep.Tags)
	}
	e.hub.ResetCounts()
	if err := e.pull(ctx, "library/a", "1", ""); err != nil {
		t.Fatal(err)
	}
	if n := e.hub.Count("GET blob"); n != 0 {
		t.Fatalf("the pinned image was fetched again (%d blob GETs)", n)
	}
}

// TestPinsFetchedAhead: a pin that names one tag is fetched ahead, blobs
// included (an index's platform image for this machine), before any client
// pulls it; the client's pull then costs upstream nothing. A glob pin is
// not fetched ahead.
func TestPinsFetchedAhead(t *testing.T) {
	pol, err := policy.New(0, policy.Config{Pin: []string{"alpine:3.20", "library/busybox:*"}})
	if err != nil {
		t.Fatal(err)
	}
	e := newMirrorEnv(t, Options{Policy: pol})
	e.hub.Push("library/alpine", "3.20", fakehub.ImageSpec{Platforms: []string{platform, "linux/s390x"}, Layers: 2, LayerSize: 64 << 10, Seed: 91})
	e.hub.Push("library/busybox", "1", smallImage(92))
	n, err := e.reg.WarmPins(context.Background())
	if err != nil || n != 1 {
		t.Fatalf("WarmPins: %d, %v; want 1 pin warmed", n, err)
	}
	waitFillsDone(t, e)
	if got := e.hub.Count("GET blob"); got != 3 { // this platform's config and 2 layers
		t.Fatalf("fetched ahead: %d blob GETs, want 3 (%d manifest GETs)", got, e.hub.Count("GET manifest"))
	}
	e.hub.ResetCounts()
	if err := e.pull(context.Background(), "library/alpine", "3.20", ""); err != nil {
		t.Fatal(err)
	}
	if got := e.hub.Count("GET blob") + e.hub.Count("GET manifest"); got != 0 {
		t.Fatalf("the pull after the warm-up asked upstream %d times", got)
	}
	if _, err := e.store.ResolveTag("docker.io/library/busybox", "1"); err == nil {
		t.Fatal("a glob pin was fetched ahead")
	}
}
