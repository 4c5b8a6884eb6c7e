package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"runtime"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/wharf-registry/wharf/internal/fakehub"
)

// runListings counts what a faithful mirror costs upstream: one tag list
// and one referrers request per burst of 20 clients, and nothing for
// pulls by digest of an image kept through collections past its grace.
func runListings(tmp, bin string) error {
	hub, err := fakehub.New()
	if err != nil {
		return err
	}
	defer hub.Close()
	hub.SetReferrersAPI(true)
	w, err := startProc(bin, "serve", "--addr", "127.0.0.1:0", "--data", filepath.Join(tmp, "listings-data"), "--log-level", "warn",
		"--upstream", "docker.io="+hub.URL, "--gc-grace", "1s", "--allow-delete")
	if err != nil {
		return err
	}
	defer w.stop()
	wharf := "http://" + w.addr
	c := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}, Timeout: time.Minute}
	img := hub.Push("bench/listed", "0", fakehub.ImageSpec{Platforms: []string{"linux/" + runtime.GOARCH}, Layers: 2, LayerSize: 64 << 10, Seed: 105})
	for i := range 300 {
		hub.Retag("bench/listed", fmt.Sprintf("v%d", i), img)
	}
	hub.PushReferrer("bench/listed", img.Index, "application/vnd.example.sbom.v1+json", []byte(`{"sbom":1}`))
	burst := func(path string) error {
		var g errgroup.Group
		for range 20 {
			g.Go(func() error {
				resp, err := c.Get(wharf + path)
				if err != nil {
					return err
				}
				defer resp.Body.Close()
				io.Copy(io.Discard, resp.Body)
				if resp.StatusCode != http.StatusOK {
					return fmt.Errorf("GET %s: %s", path, resp.Status)
				}
				return nil
			})
		}
		return g.Wait()
	}
	hub.ResetCounts()
	if err := burst("/v2/bench/listed/tags/list"); err != nil {
		return err
	}
	tagGets := hub.Count("GET tags") // pages of 100: 4 GETs are one listing
	if err := burst("/v2/bench/listed/referrers/" + img.Index.String()); err != nil {
		return err
	}
	refGets := hub.Count("GET referrers")

	ctx := context.Background()
	if err := pullImage(ctx, c, wharf, "bench/listed", img.Index.String()); err != nil {
		return err
	}
	var after int
	for range 10 {
		time.Sleep(1100 * time.Millisecond) // past the 1 s grace
		resp, err := c.Post(wharf+"/api/v1/gc", "", nil)
		if err != nil {
			return err
		}
		resp.Body.Close()
		before := hub.Count("requests")
		if err := pullImage(ctx, c, wharf, "bench/listed", img.Index.String()); err != nil {
			return err
		}
		after += hub.Count("requests") - before
	}
	fmt.Printf("listings: 20 clients' tags/list of a 301-tag repository cost upstream %d GETs (one listing of 100-tag pages); 20 clients' referrers %d; 10 pulls by digest, each after a GC past the grace: %d upstream requests after the first pull\n",
		tagGets, refGets, after)
	addTarget("upstream tag-list GETs per burst of 20 clients (301 tags, 100 a page)", "20 bursts of cache-only lists", "one listing: 4 pages",
		fmt.Sprint(tagGets), tagGets == 4)
	addTarget("upstream referrers requests per burst of 20 clients", "none (an empty cache answer)", "1", fmt.Sprint(refGets), refGets == 1)
	addTarget("upstream requests for 10 pulls by digest, a GC past the grace before each", "every blob again once collected", "0 after the first",
		fmt.Sprint(after), after == 0)
	return nil
}
