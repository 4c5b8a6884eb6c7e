package e2e

import (
	"encoding/json"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wharf-registry/wharf/internal/fakehub"
)

// TestGCWhileDockerdPulls: real dockerd pulls an image through the mirror
// again and again while the admin API collects garbage back to back and
// another image is evicted, collected and fetched again: every pull
// succeeds with the right image ID. An image evicted through the API is
// fetched from upstream once by the next pull (its config and layers,
// each once), and not again by the pull after.
func TestGCWhileDockerdPulls(t *testing.T) {
	hub := fakehub.Start(t)
	img := hub.Push("library/alpine", "3.20", fakehub.ImageSpec{Platforms: []string{"linux/amd64", "linux/arm64"}, Layers: 3, LayerSize: 512 << 10, Seed: 31})
	hub.Push("library/busybox", "1", fakehub.ImageSpec{Platforms: []string{"linux/amd64"}, Layers: 2, LayerSize: 256 << 10, Seed: 32})
	w := startWharf(t, "", "--upstream", "docker.io="+hub.URL, "--allow-delete")
	d := startDockerdWith(t, map[string]any{"registry-mirrors": []string{"http://" + w.addr}})
	c := &http.Client{Timeout: time.Minute}
	api := func(method, path string) int {
		req, _ := http.NewRequest(method, w.url(path), nil)
		resp, err := c.Do(req)
		if err != nil {
			return 0
		}
		resp.Body.Close()
		return resp.StatusCode
	}

	var gcs, churns atomic.Int64
	var failed atomic.Value
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // the collector and a second image's churn, back to back
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if st := api("POST", "/api/v1/gc"); st == http.StatusOK {
				gcs.Add(1)
			} else {
				failed.Store(st)
			}
			if i%5 == 0 {
				api("DELETE", "/api/v1/repositories/docker.io/library/busybox")
				if err := pullMirrored(c, "http://"+w.addr, "library/busybox"); err == nil {
					churns.Add(1)
				}
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	want := img.Configs[hostPlatform].String()
	pull := func(round int) {
		t.Helper()
		d.docker(t, "pull", "alpine:3.20")
		if id := d.docker(t, "image", "inspect", "--format", "{{.Id}}", "alpine:3.20"); id != want {
			t.Fatalf("round %d: image ID %s, want %s", round, id, want)
		}
		d.docker(t, "rmi", "alpine:3.20")
	}
	for round := 0; round < 3; round++ {
		pull(round)
	}

	// Evict alpine; once collected, the next pull goes upstream for each
	// of its blobs once, and the one after not at all.
	if st := api("DELETE", "/api/v1/repositories/docker.io/library/alpine"); st != http.StatusAccepted {
		t.Fatalf("evict: %d", st)
	}
	deadline := time.Now().Add(30 * time.Second)
	for cachedLinks(t, c, w, "docker.io/library/alpine") > 0 { // served from the cache until collected
		if time.Now().After(deadline) {
			t.Fatal("the evicted image's layer is still cached 30 s later")
		}
		time.Sleep(100 * time.Millisecond)
	}
	hub.ResetCounts()
	pull(3)
	if n := hub.Count("GET blob"); n != 4 {
		t.Fatalf("the pull after the eviction cost %d upstream blob GETs, want 4 (config and 3 layers)", n)
	}
	hub.ResetCounts()
	pull(4)
	close(stop)
	wg.Wait()
	if n := hub.Count("GET blob"); n != 0 {
		t.Fatalf("the second pull after the eviction cost %d upstream blob GETs", n)
	}
	if st := failed.Load(); st != nil {
		t.Fatalf("a collection answered %v", st)
	}
	if gcs.Load() < 10 || churns.Load() < 2 {
		t.Fatalf("only %d collections and %d evict-and-pull cycles ran alongside the pulls", gcs.Load(), churns.Load())
	}
	t.Logf("%d collections and %d evictions of a second image ran during 5 dockerd pulls", gcs.Load(), churns.Load())
}

// cachedLinks is how many blobs repo links, by the admin API's usage.
func cachedLinks(t *testing.T, c *http.Client, w *wharfProc, repo string) int {
	t.Helper()
	resp, err := c.Get(w.url("/api/v1/usage"))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var u struct {
		Repositories []struct {
			Name  string
			Blobs int
		}
	}
	if err := json.NewDecoder(resp.Body).Decode(&u); err != nil {
		t.Fatal(err)
	}
	for _, r := range u.Repositories {
		if r.Name == repo {
			return r.Blobs
		}
	}
	return 0
}
