package e2e

import (
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/wharf-registry/wharf/internal/fakehub"
	"github.com/wharf-registry/wharf/internal/faultproxy"
)

// getVerified GETs blob d of repo through Wharf and checks its digest.
func getVerified(c *http.Client, w *wharfProc, repo string, d digest.Digest) error {
	got, err := blobDigest(c, w, repo, d)
	if err != nil {
		return err
	}
	if got != d {
		return fmt.Errorf("blob %s arrived as %s", d, got)
	}
	return nil
}

// blobGET is what the proxy sees of containerd's GET of blob d of repo.
func blobGET(repo string, d digest.Digest) []byte {
	return []byte("GET /v2/" + repo + "/blobs/" + d.String())
}

// TestBlackHoledUpstream: with the default settings, an upstream
// connection that stops sending in the middle of a layer (no FIN, no RST)
// is abandoned and resumed on a new one: every waiting client gets the
// verified layer within 90 s. 40 black-holed transfers at once do not stop
// another image's cold pull.
func TestBlackHoledUpstream(t *testing.T) {
	hub := fakehub.Start(t)
	img := hub.Push("library/hole", "1", fakehub.ImageSpec{Platforms: []string{hostPlatform}, Layers: 1, LayerSize: 8 << 20, Seed: 401})
	many := hub.Push("library/many", "1", fakehub.ImageSpec{Platforms: []string{hostPlatform}, Layers: 40, LayerSize: 256 << 10, Seed: 402})
	hub.Push("library/other", "1", fakehub.ImageSpec{Platforms: []string{hostPlatform}, Layers: 3, LayerSize: 256 << 10, Seed: 403})
	proxy := faultproxy.Start(t, hub.Host())
	w := startWharf(t, "", "--upstream", "docker.io=http://"+proxy.Addr)
	c := &http.Client{Timeout: 3 * time.Minute}

	layer := img.Layers[hostPlatform][0]
	proxy.Add(faultproxy.Rule{Match: blobGET("library/hole", layer), Fault: faultproxy.Stall, After: 1 << 20})
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, 3)
	for i := 0; i < 3; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- getVerified(c, w, "library/hole", layer)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("client of a black-holed transfer: %v\n%s", err, w.log)
		}
	}
	took := time.Since(start)
	if took > 90*time.Second || proxy.Applied.Load() != 1 {
		t.Fatalf("black-holed transfer: verified after %s (bound 90 s), %d stalls applied", took, proxy.Applied.Load())
	}
	t.Logf("one black-holed transfer: 3 clients got the verified 8 MiB layer after %s", took.Round(time.Millisecond))

	// 40 black holes at once, more than the 32 upstream connection slots.
	layers := many.Layers[hostPlatform]
	for _, d := range layers {
		proxy.Add(faultproxy.Rule{Match: blobGET("library/many", d), Fault: faultproxy.Stall, After: 64 << 10})
	}
	before := proxy.Applied.Load()
	start = time.Now()
	holes := make(chan error, len(layers))
	for _, d := range layers {
		go func() { holes <- getVerified(c, w, "library/many", d) }()
	}
	for deadline := time.Now().Add(20 * time.Second); proxy.Applied.Load()-before < 32 && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
	}
	otherStart := time.Now()
	if err := pullMirrored(c, w.url(""), "library/other"); err != nil {
		t.Fatalf("cold pull of another image during 40 black holes: %v", err)
	}
	otherTook := time.Since(otherStart)
	for range layers {
		if err := <-holes; err != nil {
			t.Fatalf("a black-holed layer: %v", err)
		}
	}
	if otherTook > 20*time.Second {
		t.Fatalf("another image's cold pull took %s during 40 black-holed transfers: their slots were not released", otherTook)
	}
	t.Logf("40 black-holed transfers (%d stalls): another image pulled cold in %s; all 40 layers verified after %s",
		proxy.Applied.Load()-before, otherTook.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
}

// TestResetsResume: two RSTs in the middle of a 30 MiB layer; five clients
// get it verified, and upstream sends less than twice its size (each
// resume asks for the rest, from the offset reached).
func TestResetsResume(t *testing.T) {
	hub := fakehub.Start(t)
	img := hub.Push("library/reset", "1", fakehub.ImageSpec{Platforms: []string{hostPlatform}, Layers: 1, LayerSize: 30 << 20, Seed: 404})
	proxy := faultproxy.Start(t, hub.Host())
	w := startWharf(t, "", "--upstream", "docker.io=http://"+proxy.Addr)
	c := &http.Client{Timeout: 3 * time.Minute}
	layer := img.Layers[hostPlatform][0]
	proxy.Add(faultproxy.Rule{Match: []byte("GET /v2/library/reset/blobs/" + layer.String()), Fault: faultproxy.Reset, After: 8 << 20, Times: 2})
	var wg sync.WaitGroup
	errs := make(chan error, 5)
	for i := 0; i < 5; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- getVerified(c, w, "library/reset", layer)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("client of a reset transfer: %v\n%s", err, w.log)
		}
	}
	size := int64(30 << 20)
	if proxy.Applied.Load() != 2 || proxy.Down.Load() >= 2*size {
		t.Fatalf("%d resets applied; upstream sent %d bytes for a %d-byte layer", proxy.Applied.Load(), proxy.Down.Load(), size)
	}
	t.Logf("two RSTs: 5 clients verified the 30 MiB layer; upstream sent %.2fx its size", float64(proxy.Down.Load())/float64(size))
}

// TestFrozenConnectionPool: every upstream connection open at one moment
// freezes, idle ones in the keep-alive pool included (a middlebox lost
// their state). The layer that was downloading resumes on a fresh
// connection and its 5 clients get it verified; another image's cold
// pull a few seconds later goes out on a fresh connection too, instead of
// waiting 30 s on a frozen pooled one.
func TestFrozenConnectionPool(t *testing.T) {
	hub := fakehub.Start(t)
	big := hub.Push("library/frozen", "1", fakehub.ImageSpec{Platforms: []string{hostPlatform}, Layers: 1, LayerSize: 24 << 20, Seed: 420})
	hub.Push("library/warm", "1", fakehub.ImageSpec{Platforms: []string{hostPlatform}, Layers: 8, LayerSize: 64 << 10, Seed: 421})
	hub.Push("library/after", "1", fakehub.ImageSpec{Platforms: []string{hostPlatform}, Layers: 2, LayerSize: 64 << 10, Seed: 422})
	proxy := faultproxy.Start(t, hub.Host())
	w := startWharf(t, "", "--upstream", "docker.io=http://"+proxy.Addr, "--upstream-segments", "0")
	c := &http.Client{Timeout: 3 * time.Minute}
	// Idle connections in the pool.
	if err := pullMirrored(c, w.url(""), "library/warm"); err != nil {
		t.Fatal(err)
	}
	layer := big.Layers[hostPlatform][0]
	hub.SetBandwidth(2 << 20)
	start := time.Now()
	errs := make(chan error, 5)
	for range 5 {
		go func() { errs <- getVerified(c, w, "library/frozen", layer) }()
	}
	for deadline := time.Now().Add(20 * time.Second); proxy.Down.Load() < 2<<20; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the layer never started")
		}
	}
	proxy.FreezeAll()
	frozeAt := time.Now()
	time.Sleep(6 * time.Second)
	hub.SetBandwidth(0)
	otherStart := time.Now()
	if err := pullMirrored(c, w.url(""), "library/after"); err != nil {
		t.Fatalf("another image's cold pull %s after the freeze: %v\n%s", otherStart.Sub(frozeAt), err, w.log)
	}
	otherTook := time.Since(otherStart)
	if otherTook > 10*time.Second {
		t.Errorf("another image's cold pull took %s after the freeze: it waited on a frozen pooled connection", otherTook)
	}
	for range 5 {
		if err := <-errs; err != nil {
			t.Fatalf("a client of the frozen layer after %s: %v\n%s", time.Since(frozeAt), err, w.log)
		}
	}
	t.Logf("pool frozen: another image pulled cold in %s; the frozen layer verified for 5 clients %s after the freeze (%s in all)",
		otherTook.Round(time.Millisecond), time.Since(frozeAt).Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
}
