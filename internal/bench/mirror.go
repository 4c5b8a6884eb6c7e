package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
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

	if err := warmManifests(tmp, c, wharf, "bench/shaped", "1"); err != nil {
		return err
	}

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
	addTarget(fmt.Sprintf("peak RSS, one %d MiB layer streamed cold to %d clients", *bigLayerMiB, *bigClients), "57 MiB", "< 64 MiB with the memory ring",
		fmt.Sprintf("%.1f MiB", float64(peak)/(1<<20)), peak < 64<<20)
	return nil
}

// warmManifests compares warm GETs of a mirrored manifest by tag at
// -conns connections with nginx serving the same bytes, with wrk (the
// load generator that costs least CPU on this shared machine) or, without
// it, the benchmark's own client.
func warmManifests(tmp string, c *http.Client, wharf, repo, tag string) error {
	req, _ := http.NewRequest(http.MethodGet, wharf+"/v2/"+repo+"/manifests/"+tag, nil)
	req.Header.Set("Accept", accept)
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK {
		return fmt.Errorf("warm manifest: %s %v", resp.Status, err)
	}
	www := filepath.Join(tmp, "www-mirror")
	os.MkdirAll(www, 0o755)
	if err := os.WriteFile(filepath.Join(www, "manifest.json"), body, 0o644); err != nil {
		return err
	}
	ng, err := startNginx(tmp, "off", www)
	if err != nil {
		return err
	}
	defer ng.stop()
	// The same server's pushed manifest, for comparison: the difference is
	// what the mirror's lookup costs.
	layer, err := pushStream(c, wharf, "pushed", 1<<20, 7)
	if err != nil {
		return err
	}
	if _, _, err := pushManifest(c, wharf, "pushed", layer, 1<<20); err != nil {
		return err
	}
	// The ceiling of any server built on Go's net/http here: the same
	// bytes from a handler that does nothing else (in this process, idle
	// meanwhile).
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	bare := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header()["Content-Type"] = []string{resp.Header.Get("Content-Type")}
		w.Write(body)
	})}
	go bare.Serve(ln)
	defer bare.Close()
	urls := []string{wharf + "/v2/" + repo + "/manifests/" + tag, "http://" + ng.addr + "/manifest.json", wharf + "/v2/pushed/manifests/latest",
		"http://" + ln.Addr().String() + "/"}
	var res [4][]loadResult
	for round := 0; round < 3; round++ { // interleaved: the machine's drift hits both
		for i, u := range urls {
			r, err := wrkLoad(u, *conns, *duration)
			if err != nil {
				return err
			}
			res[i] = append(res[i], r)
		}
	}
	var ratios []float64
	for k := range res[0] {
		ratios = append(ratios, res[0][k].rps/res[1][k].rps)
	}
	sort.Float64s(ratios)
	best := func(rs []loadResult) loadResult {
		sort.Slice(rs, func(i, j int) bool { return rs[i].rps > rs[j].rps })
		return rs[len(rs)/2]
	}
	w, n, pu, gb := best(res[0]), best(res[1]), best(res[2]), best(res[3])
	fmt.Printf("  warm manifest by tag of a mirrored image (%d bytes), %d connections, 3 x %s interleaved (median):\n", len(body), *conns, *duration)
	fmt.Printf("    %-28s %8.0f req/s  p99 %6.2f ms  errors %d\n", "wharf", w.rps, w.p99ms, w.errors)
	fmt.Printf("    %-28s %8.0f req/s  p99 %6.2f ms  errors %d\n", "nginx, same bytes", n.rps, n.p99ms, n.errors)
	fmt.Printf("    %-28s %8.0f req/s  p99 %6.2f ms  errors %d\n", "wharf, a pushed manifest", pu.rps, pu.p99ms, pu.errors)
	fmt.Printf("    %-28s %8.0f req/s  p99 %6.2f ms  (nginx x %.2f; wharf = %.2f of it)\n", "bare Go net/http, same bytes", gb.rps, gb.p99ms, gb.rps/n.rps, w.rps/gb.rps)
	ratio := ratios[len(ratios)/2]
	fmt.Printf("    wharf / nginx per round: %.2f %.2f %.2f (median %.2f, target >= 0.8)\n", ratios[0], ratios[1], ratios[2], ratio)
	addTarget("warm manifest by tag, 32 connections, Wharf ÷ nginx (p99)", "0.54–0.60", "≥ 0.8, p99 < 5 ms",
		fmt.Sprintf("%.2f (p99 %.2f ms)", ratio, w.p99ms), ratio >= 0.8 && w.p99ms < 5)
	if w.errors > 0 || n.errors > 0 {
		return errors.New("requests failed during the warm manifest load")
	}
	return nil
}

// wrkLoad runs wrk -t2 against url (the benchmark's own client when wrk is
// not installed) and reads its throughput and p99.
func wrkLoad(url string, conns int, d time.Duration) (loadResult, error) {
	if _, err := exec.LookPath("wrk"); err != nil {
		return load(&http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: conns}}, url, conns, d), nil
	}
	out, err := exec.Command("wrk", "-t2", fmt.Sprintf("-c%d", conns), fmt.Sprintf("-d%ds", int(d.Seconds())), "--latency",
		"-H", "Accept: "+accept, url).CombinedOutput()
	if err != nil {
		return loadResult{}, fmt.Errorf("wrk: %v: %s", err, out)
	}
	var r loadResult
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) == 2 && f[0] == "Requests/sec:":
			r.rps, _ = strconv.ParseFloat(f[1], 64)
		case len(f) == 2 && f[0] == "99%":
			r.p99ms = wrkMillis(f[1])
		case len(f) >= 4 && f[0] == "Non-2xx":
			n, _ := strconv.ParseInt(f[len(f)-1], 10, 64)
			r.errors += n
		case len(f) >= 2 && f[0] == "Socket" && f[1] == "errors:":
			for _, part := range strings.Split(strings.Join(f[2:], " "), ",") {
				if kv := strings.Fields(part); len(kv) == 2 {
					n, _ := strconv.ParseInt(kv[1], 10, 64)
					r.errors += n
				}
			}
		}
	}
	if r.rps == 0 {
		return r, fmt.Errorf("wrk printed no throughput: %s", out)
	}
	return r, nil
}

// wrkMillis reads wrk's latency figures: 1.23ms, 456.78us, 1.02s.
func wrkMillis(s string) float64 {
	for _, u := range []struct {
		sfx string
		ms  float64
	}{{"us", 1e-3}, {"ms", 1}, {"s", 1e3}} {
		if v, ok := strings.CutSuffix(s, u.sfx); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return f * u.ms
		}
	}
	return 0
}
