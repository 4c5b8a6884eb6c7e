package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sync/errgroup"

	"github.com/wharf-registry/wharf/internal/fakehub"
)

var (
	mirrorLayers  = flag.Int("mirror-layers", 10, "layers of the mirror benchmark image")
	mirrorLayerMB = flag.Int("mirror-layer-mib", 20, "MiB per layer")
	bigLayerMiB   = flag.Int("mirror-big-mib", 1024, "layer streamed cold to many clients for the RSS figure")
	bigClients    = flag.Int("mirror-big-clients", 10, "clients of that layer")
	mirrorArgs    = flag.String("mirror-wharf-args", "", "extra wharf serve arguments for the mirror suite (space separated)")
	mirrorData    = flag.String("mirror-data", "", "data directory for the mirror suite's wharf (default: under the temp dir)")
)

var accept = strings.Join([]string{fakehub.MediaTypeDockerList, fakehub.MediaTypeDockerManifest, fakehub.MediaTypeOCIIndex, fakehub.MediaTypeOCIManifest}, ",")

// pullImage pulls name:tag from base the way dockerd does: manifests, then
// config and layers three at a time, verifying every digest.
func pullImage(ctx context.Context, c *http.Client, base, name, tag string) error {
	get := func(path string, want digest.Digest) ([]byte, error) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/v2/"+name+path, nil)
		req.Header.Set("Accept", accept)
		resp, err := c.Do(req)
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return nil, fmt.Errorf("GET %s: %s", path, resp.Status)
		}
		v := digest.Canonical.Digester()
		var body []byte
		if strings.Contains(path, "/manifests/") {
			if body, err = io.ReadAll(resp.Body); err == nil {
				v.Hash().Write(body)
			}
		} else {
			_, err = io.Copy(v.Hash(), resp.Body)
		}
		if err != nil {
			return nil, err
		}
		if want != "" && v.Digest() != want {
			return nil, fmt.Errorf("%s: wrong content", path)
		}
		return body, nil
	}
	body, err := get("/manifests/"+tag, "")
	if err != nil {
		return err
	}
	var m struct {
		Config    struct{ Digest digest.Digest }
		Layers    []struct{ Digest digest.Digest }
		Manifests []struct {
			Digest   digest.Digest
			Platform struct{ OS, Architecture string }
		}
	}
	json.Unmarshal(body, &m)
	for _, c := range m.Manifests {
		if c.Platform.OS+"/"+c.Platform.Architecture == "linux/"+runtime.GOARCH {
			if body, err = get("/manifests/"+c.Digest.String(), c.Digest); err != nil {
				return err
			}
			json.Unmarshal(body, &m)
		}
	}
	g, gctx := errgroup.WithContext(ctx)
	ctx = gctx
	g.SetLimit(3)
	blobs := []digest.Digest{m.Config.Digest}
	for _, l := range m.Layers {
		blobs = append(blobs, l.Digest)
	}
	for _, d := range blobs {
		g.Go(func() error { _, err := get("/blobs/"+d.String(), d); return err })
	}
	return g.Wait()
}

func timed(f func() error) (time.Duration, error) {
	start := time.Now()
	err := f()
	return time.Since(start), err
}

// runMirror measures the pull-through mirror against the fake hub.
func runMirror(tmp, bin string) error {
	hub, err := fakehub.New()
	if err != nil {
		return err
	}
	defer hub.Close()
	hub.SetAuth(false) // the direct client speaks no token auth; Wharf's would add one round trip
	data := *mirrorData
	if data == "" {
		data = filepath.Join(tmp, "mirror-data")
	}
	args := []string{"serve", "--addr", "127.0.0.1:0", "--data", data, "--log-level", "warn", "--upstream", "docker.io=" + hub.URL}
	w, err := startProc(bin, append(args, strings.Fields(*mirrorArgs)...)...)
	if err != nil {
		return err
	}
	defer w.stop()
	wharf := "http://" + w.addr
	c := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	ctx := context.Background()
	spec := func(seed uint64) fakehub.ImageSpec {
		return fakehub.ImageSpec{Platforms: []string{"linux/" + runtime.GOARCH}, Layers: *mirrorLayers, LayerSize: *mirrorLayerMB << 20, Seed: seed}
	}
	shaped := hub.Push("bench/shaped", "1", spec(101))
	crowd := hub.Push("bench/crowd", "1", spec(102))
	plain := hub.Push("bench/plain", "1", spec(103))
	mib := float64(shaped.Size) / (1 << 20)

	hub.SetLatency(50 * time.Millisecond)
	hub.SetBandwidth(20 << 20)
	fmt.Printf("mirror: %d-layer image, %.0f MiB; fake hub 50 ms latency, 20 MiB/s per connection; client fetches 3 blobs at a time\n", *mirrorLayers, mib)
	direct, err := timed(func() error { return pullImage(ctx, c, hub.URL, "bench/shaped", "1") })
	if err != nil {
		return err
	}
	cold, err := timed(func() error { return pullImage(ctx, c, wharf, "bench/shaped", "1") })
	if err != nil {
		return err
	}
	warm, err := timed(func() error { return pullImage(ctx, c, wharf, "bench/shaped", "1") })
	if err != nil {
		return err
	}
	fmt.Printf("  direct from hub %7.2fs   cold via wharf %7.2fs (%.2fx direct, target < 1)   warm %6.3fs (cold/warm %.0fx, target >= 10)\n",
		direct.Seconds(), cold.Seconds(), cold.Seconds()/direct.Seconds(), warm.Seconds(), cold.Seconds()/warm.Seconds())

	before := hub.Count("bytes")
	var g errgroup.Group
	crowdTime, err := timed(func() error {
		for i := 0; i < 20; i++ {
			g.Go(func() error { return pullImage(ctx, c, wharf, "bench/crowd", "1") })
		}
		return g.Wait()
	})
	if err != nil {
		return err
	}
	up := float64(hub.Count("bytes")-before) / (1 << 20)
	fmt.Printf("  20 concurrent cold pulls via wharf %6.2fs wall; upstream sent %.0f MiB for a %.0f MiB image (target: equal)\n",
		crowdTime.Seconds(), up, float64(crowd.Size)/(1<<20))

	hub.SetLatency(0)
	hub.SetBandwidth(0)
	directPlain, err := timed(func() error { return pullImage(ctx, c, hub.URL, "bench/plain", "1") })
	if err != nil {
		return err
	}
	coldPlain, err := timed(func() error { return pullImage(ctx, c, wharf, "bench/plain", "1") })
	if err != nil {
		return err
	}
	fmt.Printf("  no shaping: direct %6.3fs, cold via wharf %6.3fs (%.2fx, target <= 1.2x; %.0f MiB of %d layers)\n",
		directPlain.Seconds(), coldPlain.Seconds(), coldPlain.Seconds()/directPlain.Seconds(), float64(plain.Size)/(1<<20), *mirrorLayers)

	big := hub.Push("bench/big", "1", fakehub.ImageSpec{Platforms: []string{"linux/" + runtime.GOARCH}, Layers: 1, LayerSize: *bigLayerMiB << 20, Seed: 104})
	layer := big.Layers["linux/"+runtime.GOARCH][0]
	rss := &rssSampler{pid: w.cmd.Process.Pid}
	rss.start()
	var wg sync.WaitGroup
	errs := make(chan error, *bigClients)
	took, _ := timed(func() error {
		for i := 0; i < *bigClients; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				req, _ := http.NewRequestWithContext(ctx, http.MethodGet, wharf+"/v2/bench/big/blobs/"+layer.String(), nil)
				resp, err := c.Do(req)
				if err != nil {
					errs <- err
					return
				}
				defer resp.Body.Close()
				if got, err := digest.FromReader(resp.Body); err != nil || got != layer {
					errs <- fmt.Errorf("big layer: %v %s", err, got)
				}
			}()
		}
		wg.Wait()
		return nil
	})
	peak := rss.stop()
	close(errs)
	if err := <-errs; err != nil {
		return err
	}
	fmt.Printf("  %d MiB layer streamed cold to %d clients in %.2fs; wharf peak RSS %.1f MiB (target < 64 MiB)\n",
		*bigLayerMiB, *bigClients, took.Seconds(), float64(peak)/(1<<20))
	return nil
}
