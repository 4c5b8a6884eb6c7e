package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/wharf-registry/wharf/internal/fakehub"
)

// pullMirrored pulls name:1 through Wharf (index, this platform, blobs).
func pullMirrored(c *http.Client, base, name string) error {
	get := func(path string) ([]byte, error) {
		req, _ := http.NewRequest(http.MethodGet, base+"/v2/"+name+path, nil)
		req.Header.Set("Accept", fakehub.MediaTypeDockerList+","+fakehub.MediaTypeDockerManifest)
		resp, err := c.Do(req)
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return nil, fmt.Errorf("%s: %s", path, resp.Status)
		}
		return io.ReadAll(resp.Body)
	}
	body, err := get("/manifests/1")
	if err != nil {
		return err
	}
	var idx struct {
		Manifests []struct {
			Digest   digest.Digest
			Platform struct{ OS, Architecture string }
		}
	}
	json.Unmarshal(body, &idx)
	for _, m := range idx.Manifests {
		if m.Platform.OS+"/"+m.Platform.Architecture != hostPlatform {
			continue
		}
		body, err := get("/manifests/" + m.Digest.String())
		if err != nil {
			return err
		}
		var man struct {
			Config struct{ Digest digest.Digest }
			Layers []struct{ Digest digest.Digest }
		}
		json.Unmarshal(body, &man)
		for _, d := range append([]digest.Digest{man.Config.Digest}, func() (ds []digest.Digest) {
			for _, l := range man.Layers {
				ds = append(ds, l.Digest)
			}
			return
		}()...) {
			b, err := get("/blobs/" + d.String())
			if err != nil {
				return err
			}
			if digest.FromBytes(b) != d {
				return fmt.Errorf("blob %s: wrong bytes", d)
			}
		}
	}
	return nil
}

// TestCrashLoopLifecycle kill -9s a real wharf 20 times while pushes, cold
// and warm pulls through the mirror, scheduled GC and eviction all run.
// After every kill `wharf fsck` finds no problem; after every restart each
// acknowledged push is complete and nothing indexed lacks its bytes.
func TestCrashLoopLifecycle(t *testing.T) {
	if testing.Short() {
		t.Skip("20 crash rounds")
	}
	hub := fakehub.Start(t)
	var images []string
	for i := 0; i < 12; i++ {
		name := fmt.Sprintf("library/img%d", i)
		hub.Push(name, "1", fakehub.ImageSpec{Platforms: []string{"linux/amd64", "linux/arm64"}, Layers: 2, LayerSize: 96 << 10, Seed: uint64(100 + i)})
		images = append(images, name)
	}
	data := t.TempDir()
	args := []string{"--upstream", "docker.io=" + hub.URL, "--gc-interval", "150ms", "--gc-grace", "2s",
		"--max-size", "3M", "--evict-interval", "1s"}
	const rounds = 20
	var acked, attempts []ackedPush
	for round := 0; round < rounds; round++ {
		w := startWharf(t, data, args...)
		verifyStore(t, w, acked, attempts, false)
		var mu sync.Mutex
		var wg sync.WaitGroup
		for i := 0; i < 2; i++ {
			wg.Add(2)
			go func() {
				defer wg.Done()
				p := &pusher{base: "http://" + w.addr, client: &http.Client{Timeout: 10 * time.Second}, mu: &mu, attempts: &attempts}
				for n := 0; n < 1000; n++ {
					a, err := p.pushImage(fmt.Sprintf("life/w%d", i), fmt.Sprintf("r%d-n%d", round, n), n%3)
					if err != nil {
						return
					}
					mu.Lock()
					acked = append(acked, a)
					mu.Unlock()
				}
			}()
			go func() {
				defer wg.Done()
				c := &http.Client{Timeout: 10 * time.Second}
				for n := 0; n < 1000; n++ {
					if pullMirrored(c, "http://"+w.addr, images[mrand.IntN(len(images))]) != nil {
						if _, err := http.Get(w.url("/v2/")); err != nil {
							return // killed
						}
					}
				}
			}()
		}
		time.Sleep(time.Duration(200+mrand.IntN(500)) * time.Millisecond)
		if exited, err := w.kill(); exited {
			t.Fatalf("round %d: wharf exited on its own (%v) before the kill\n%s", round, err, w.log)
		}
		wg.Wait()
		out, err := runErr(time.Minute, nil, wharfBin, "fsck", "--data", data)
		if err != nil {
			t.Fatalf("round %d: fsck after kill -9: %v\n%s", round, err, out)
		}
	}
	w := startWharf(t, data, args...)
	verifyStore(t, w, acked, attempts, false)
	t.Logf("%d acknowledged pushes survived %d kill -9s with GC and eviction running", len(acked), rounds)
}
