// Command bench measures Wharf against nginx on loopback, side by side in
// one run, and prints the figures:
//
//   - one 512 MiB blob GET, from Wharf and from nginx serving the very same
//     file (nginx with sendfile off + output_buffers 2 1m, and with sendfile
//     on; the better one is the reference);
//   - manifest GET by tag at 32 connections: requests/s and p99, next to
//     nginx serving a static file of the same size;
//   - Wharf's peak RSS while a 1 GiB layer is pushed and pulled.
//
// and, against the fake Docker Hub (internal/fakehub), the pull-through
// mirror: cold, warm and concurrent pulls with and without shaping, and
// peak RSS while one large layer streams cold to many clients (mirror.go).
//
// Run: go run ./internal/bench (needs nginx; -h for options).
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/wharf-registry/wharf/internal/testport"
)

var (
	blobMiB   = flag.Int("blob-mib", 512, "size of the blob GET test")
	rounds    = flag.Int("rounds", 11, "blob GETs per server, interleaved; medians are compared")
	rssMiB    = flag.Int("rss-mib", 1024, "size of the layer pushed and pulled for the RSS figure")
	conns     = flag.Int("conns", 32, "connections for the manifest test")
	duration  = flag.Duration("duration", 5*time.Second, "length of each manifest load run")
	wharfPath = flag.String("wharf", "", "wharf binary (default: go build ./cmd/wharf)")
	wharfLog  = flag.String("wharf-log", "", "append the Wharf servers' debug logs (every request, with its time) to this file")
	suite     = flag.String("suite", "all", "registry (vs nginx), mirror (vs the fake hub), cold (real dockerd and skopeo, vs Distribution and direct), auth (signed-in vs anonymous), store (a large index), cluster (3 nodes on etcd and S3) or all")
)

func main() {
	flag.Parse()
	tmp, err := os.MkdirTemp("", "wharf-bench")
	if err == nil {
		err = run(tmp)
		os.RemoveAll(tmp)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func run(tmp string) error {
	bin := *wharfPath
	if bin == "" {
		bin = filepath.Join(tmp, "wharf")
		if out, err := exec.Command("go", "build", "-o", bin, "./cmd/wharf").CombinedOutput(); err != nil {
			return fmt.Errorf("go build: %v\n%s", err, out)
		}
	}
	if *suite == "registry" || *suite == "all" {
		if err := runRegistry(tmp, bin); err != nil {
			return err
		}
	}
	if *suite == "auth" || *suite == "all" {
		if err := runAuth(tmp, bin); err != nil {
			return err
		}
	}
	if *suite == "store" || *suite == "all" {
		if err := runStore(tmp, bin); err != nil {
			return err
		}
	}
	if *suite == "mirror" || *suite == "all" {
		if err := runMirror(tmp, bin); err != nil {
			return err
		}
		if err := runListings(tmp, bin); err != nil {
			return err
		}
	}
	if *suite == "cold" || *suite == "all" {
		if err := runCold(tmp, bin); err != nil {
			return err
		}
	}
	if *suite == "cluster" || *suite == "all" {
		if err := runCluster(tmp, bin); err != nil {
			return err
		}
	}
	printTargets()
	return nil
}

// runRegistry compares Wharf serving pushed content with nginx.
func runRegistry(tmp, bin string) error {
	data := filepath.Join(tmp, "data")
	w, err := startProc(bin, "serve", "--addr", "127.0.0.1:0", "--data", data, "--log-level", "warn", "--mirror=false")
	if err != nil {
		return err
	}
	defer w.stop()
	wharfURL := "http://" + w.addr
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: *conns, DisableCompression: true}}

	// RSS: push and pull a large layer, sampling Wharf's resident memory.
	rss := &rssSampler{pid: w.cmd.Process.Pid}
	rss.start()
	big, err := pushStream(client, wharfURL, "bench/rss", int64(*rssMiB)<<20, 2)
	if err != nil {
		return err
	}
	if _, err := getOnce(client, wharfURL+"/v2/bench/rss/blobs/"+big.String()); err != nil {
		return err
	}
	peak := rss.stop()

	// The blob every server serves; a second wharf uses --sendfile.
	blob, err := pushStream(client, wharfURL, "bench/blob", int64(*blobMiB)<<20, 1)
	if err != nil {
		return err
	}
	ws, err := startProc(bin, "serve", "--addr", "127.0.0.1:0", "--data", filepath.Join(tmp, "data-sendfile"), "--sendfile", "--mirror=false")
	if err != nil {
		return err
	}
	defer ws.stop()
	if _, err := pushStream(client, "http://"+ws.addr, "bench/blob", int64(*blobMiB)<<20, 1); err != nil {
		return err
	}
	man, tag, err := pushManifest(client, wharfURL, "bench/app", blob, int64(*blobMiB)<<20)
	if err != nil {
		return err
	}
	www := filepath.Join(tmp, "www")
	os.MkdirAll(www, 0o755)
	os.WriteFile(filepath.Join(www, "manifest.json"), man, 0o644)
	blobFile := filepath.Join(data, "blobs", "sha256", blob.Encoded()[:2], blob.Encoded())
	if err := os.Symlink(blobFile, filepath.Join(www, "blob")); err != nil {
		return err
	}
	ngOff, err := startNginx(tmp, "off", www)
	if err != nil {
		return err
	}
	defer ngOff.stop()
	ngOn, err := startNginx(tmp, "on", www)
	if err != nil {
		return err
	}
	defer ngOn.stop()

	servers := []struct{ name, url string }{
		{"wharf (default: buffered copy)", wharfURL + "/v2/bench/blob/blobs/" + blob.String()},
		{"wharf --sendfile", "http://" + ws.addr + "/v2/bench/blob/blobs/" + blob.String()},
		{"nginx sendfile off, output_buffers 2 1m", "http://" + ngOff.addr + "/blob"},
		{"nginx sendfile on", "http://" + ngOn.addr + "/blob"},
	}
	samples := make([][]float64, len(servers))
	for r := 0; r < *rounds; r++ {
		for i, s := range servers {
			mbps, err := getOnce(client, s.url)
			if err != nil {
				return fmt.Errorf("%s: %w", s.name, err)
			}
			samples[i] = append(samples[i], mbps)
		}
	}
	fmt.Printf("blob GET, %d MiB, 1 connection, %d rounds interleaved (MB/s):\n", *blobMiB, *rounds)
	med := make([]float64, len(servers))
	for i, s := range servers {
		sorted := append([]float64(nil), samples[i]...)
		sort.Float64s(sorted)
		med[i] = sorted[len(sorted)/2]
		fmt.Printf("  %-42s median %6.0f  best %6.0f\n", s.name, med[i], sorted[len(sorted)-1])
	}
	// The reference is nginx's better setting; each round's Wharf figure is
	// divided by the same round's nginx figure (measured seconds apart), so
	// the machine's drift cancels, and the median ratio is reported.
	ref := 2
	if med[3] > med[2] {
		ref = 3
	}
	ratio := func(i int) float64 {
		r := make([]float64, len(samples[i]))
		for k := range r {
			r[k] = samples[i][k] / samples[ref][k]
		}
		sort.Float64s(r)
		return 100 * r[len(r)/2]
	}
	fmt.Printf("  wharf / %s, median of per-round ratios: %.1f%% default, %.1f%% --sendfile (target >= 95%%)\n",
		servers[ref].name, ratio(0), ratio(1))
	// 16 clients reading one warm 256 MiB layer at once, aggregate.
	layer, err := pushStream(client, wharfURL, "bench/layer", 256<<20, 3)
	if err != nil {
		return err
	}
	if err := os.Symlink(filepath.Join(data, "blobs", "sha256", layer.Encoded()[:2], layer.Encoded()), filepath.Join(www, "layer")); err != nil {
		return err
	}
	ngLayer := servers[ref].url[:strings.LastIndex(servers[ref].url, "/")] + "/layer"
	var agg [2][]float64
	for r := 0; r < 2; r++ {
		for i, u := range []string{wharfURL + "/v2/bench/layer/blobs/" + layer.String(), ngLayer} {
			mbps, err := concurrentGets(u, 16)
			if err != nil {
				return err
			}
			agg[i] = append(agg[i], mbps)
		}
	}
	aggRatio := (agg[0][0] + agg[0][1]) / (agg[1][0] + agg[1][1])
	fmt.Printf("16 clients reading one warm 256 MiB layer at once, 2 rounds interleaved: wharf %.0f MB/s, nginx %.0f MB/s aggregate: %.2f (target >= 0.95)\n",
		(agg[0][0]+agg[0][1])/2, (agg[1][0]+agg[1][1])/2, aggRatio)
	addTarget("16 concurrent warm 256 MiB layer reads, Wharf ÷ nginx aggregate", "1.02", "keep ≥ 0.95", fmt.Sprintf("%.2f", aggRatio), aggRatio >= 0.95)
	fmt.Printf("manifest GET by tag, %d-byte manifest, %d connections, %s:\n", len(man), *conns, *duration)
	wr := load(client, wharfURL+"/v2/bench/app/manifests/"+tag, *conns, *duration)
	nr := load(client, "http://"+ngOff.addr+"/manifest.json", *conns, *duration)
	fmt.Printf("  %-42s %8.0f req/s  p99 %6.2f ms  errors %d\n", "wharf", wr.rps, wr.p99ms, wr.errors)
	fmt.Printf("  %-42s %8.0f req/s  p99 %6.2f ms  errors %d\n", "nginx static file", nr.rps, nr.p99ms, nr.errors)
	fmt.Printf("  wharf / nginx: %.1f%% (target >= 50%%)\n", 100*wr.rps/nr.rps)
	fmt.Printf("wharf peak RSS while pushing and pulling a %d MiB layer: %.1f MiB (target < 64 MiB)\n", *rssMiB, float64(peak)/(1<<20))
	if wr.errors > 0 || nr.errors > 0 {
		return errors.New("requests failed during the manifest load")
	}
	return nil
}

// proc is a server process started by the benchmark, stopped by its PID.
type proc struct {
	cmd  *exec.Cmd
	addr string
}

// stop kills the process group the server leads (nginx's workers
// with their master: killed alone, the master would leave them serving).
func (p *proc) stop() {
	if syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL) != nil {
		p.cmd.Process.Kill() // not a group leader
	}
	p.cmd.Wait()
}

// startProc starts wharf and reads its listen address from its log.
func startProc(bin string, args ...string) (*proc, error) {
	return startProcEnv(nil, bin, args...)
}

// startProcEnv is startProc with env added to this process's environment.
func startProcEnv(env []string, bin string, args ...string) (*proc, error) {
	cmd := exec.Command(bin, args...)
	if len(env) > 0 {
		cmd.Env = append(os.Environ(), env...)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	level := "info"
	if *wharfLog != "" {
		level = "debug"
	}
	cmd.Args = append(cmd.Args, "--log-level", level)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	sc := bufio.NewScanner(stderr)
	for sc.Scan() {
		line := sc.Text()
		if i := strings.Index(line, "addr="); i >= 0 && strings.Contains(line, "listening") {
			addr := strings.Fields(line[i+5:])[0]
			var sink io.Writer = io.Discard
			if *wharfLog != "" {
				f, err := os.OpenFile(*wharfLog, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
				if err != nil {
					cmd.Process.Kill()
					return nil, err
				}
				sink = f
			}
			go io.Copy(sink, stderr)
			return &proc{cmd: cmd, addr: addr}, nil
		}
	}
	cmd.Process.Kill()
	return nil, errors.New("wharf exited before listening")
}

func startNginx(tmp, sendfile, root string) (*proc, error) {
	addr, err := testport.Free()
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(tmp, "nginx-"+sendfile)
	os.MkdirAll(dir, 0o755)
	user := ""
	if os.Geteuid() == 0 { // workers must read Wharf's 0750 data dir
		user = "user root;"
	}
	conf := fmt.Sprintf(`daemon off;
%[5]s
worker_processes auto;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path %[1]s;
  proxy_temp_path %[1]s;
  fastcgi_temp_path %[1]s;
  uwsgi_temp_path %[1]s;
  scgi_temp_path %[1]s;
  sendfile %[2]s;
  output_buffers 2 1m;
  tcp_nopush on;
  keepalive_requests 1000000;
  server {
    listen %[3]s;
    root %[4]s;
    disable_symlinks off;
  }
}
`, dir, sendfile, addr, root, user)
	cf := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(cf, []byte(conf), 0o644); err != nil {
		return nil, err
	}
	cmd := exec.Command("nginx", "-c", cf, "-p", dir)
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("nginx: %w", err)
	}
	p := &proc{cmd: cmd, addr: addr}
	for i := 0; i < 100; i++ {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return p, nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	p.stop()
	return nil, errors.New("nginx did not start")
}

// pushStream uploads size pseudo-random bytes as one streamed PATCH and
// returns the digest.
func pushStream(c *http.Client, base, repo string, size int64, seed uint64) (digest.Digest, error) {
	resp, err := c.Post(base+"/v2/"+repo+"/blobs/uploads/", "", nil)
	if err != nil {
		return "", err
	}
	resp.Body.Close()
	loc := base + resp.Header.Get("Location")
	h := sha256.New()
	src := io.TeeReader(io.LimitReader(&prng{r: rand.New(rand.NewPCG(seed, seed))}, size), h)
	req, _ := http.NewRequest(http.MethodPatch, loc, src)
	req.ContentLength = size
	if resp, err = c.Do(req); err != nil {
		return "", err
	}
	resp.Body.Close()
	d := digest.NewDigest(digest.SHA256, h)
	req, _ = http.NewRequest(http.MethodPut, base+resp.Header.Get("Location")+"?digest="+d.String(), nil)
	if resp, err = c.Do(req); err != nil {
		return "", err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		return "", fmt.Errorf("push %s: %s", repo, resp.Status)
	}
	return d, nil
}

type prng struct{ r *rand.Rand }

func (p *prng) Read(b []byte) (int, error) {
	for i := 0; i+8 <= len(b); i += 8 {
		v := p.r.Uint64()
		for j := 0; j < 8; j++ {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	return len(b) &^ 7, nil
}

// pushManifest pushes a typical single-layer image manifest under a tag.
func pushManifest(c *http.Client, base, repo string, layer digest.Digest, layerSize int64) ([]byte, string, error) {
	cfg := []byte(`{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":["/bin/sh"]},"rootfs":{"type":"layers","diff_ids":["` + layer.String() + `"]}}`)
	cd := digest.FromBytes(cfg)
	resp, err := c.Post(base+"/v2/"+repo+"/blobs/uploads/?digest="+cd.String(), "", bytes.NewReader(cfg))
	if err != nil {
		return nil, "", err
	}
	resp.Body.Close()
	resp, err = c.Post(base+"/v2/"+repo+"/blobs/uploads/?mount="+layer.String()+"&from=bench/blob", "", nil)
	if err != nil {
		return nil, "", err
	}
	resp.Body.Close()
	man, _ := json.MarshalIndent(map[string]any{
		"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
		"config": map[string]any{"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": len(cfg)},
		"layers": []any{map[string]any{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer, "size": layerSize}},
		"annotations": map[string]string{"org.opencontainers.image.created": "2026-11-24T00:00:00Z",
			"org.opencontainers.image.source": "https://example.invalid/bench", "org.opencontainers.image.revision": strings.Repeat("0", 40)},
	}, "", "   ")
	req, _ := http.NewRequest(http.MethodPut, base+"/v2/"+repo+"/manifests/latest", bytes.NewReader(man))
	req.Header.Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
	if resp, err = c.Do(req); err != nil {
		return nil, "", err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		return nil, "", fmt.Errorf("push manifest: %s", resp.Status)
	}
	return man, "latest", nil
}

// concurrentGets GETs url fully from n clients at once and returns their
// aggregate MB/s.
func concurrentGets(url string, n int) (float64, error) {
	c := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: n, DisableCompression: true}}
	var total atomic.Int64
	errs := make(chan error, n)
	start := time.Now()
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := c.Get(url)
			if err != nil {
				errs <- err
				return
			}
			defer resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				errs <- fmt.Errorf("GET %s: %s", url, resp.Status)
				return
			}
			m, err := io.Copy(io.Discard, resp.Body)
			total.Add(m)
			if err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return 0, err
	}
	return float64(total.Load()) / 1e6 / time.Since(start).Seconds(), nil
}

// getOnce GETs url fully and returns MB/s.
func getOnce(c *http.Client, url string) (float64, error) {
	start := time.Now()
	resp, err := c.Get(url)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	n, err := io.Copy(io.Discard, resp.Body)
	if err != nil {
		return 0, err
	}
	return float64(n) / 1e6 / time.Since(start).Seconds(), nil
}

type loadResult struct {
	rps, p99ms float64
	errors     int64
}

// load runs conns loops of GET url for d and reports throughput and p99.
func load(c *http.Client, url string, conns int, d time.Duration) loadResult {
	return loadWith(c, url, "", conns, d)
}

// loadWith is load with an Authorization header.
func loadWith(c *http.Client, url, auth string, conns int, d time.Duration) loadResult {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	var mu sync.Mutex
	var lat []time.Duration
	var errs atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for i := 0; i < conns; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			local := make([]time.Duration, 0, 1<<16)
			for ctx.Err() == nil {
				t0 := time.Now()
				req, _ := http.NewRequest(http.MethodGet, url, nil)
				if auth != "" {
					req.Header.Set("Authorization", auth)
				}
				resp, err := c.Do(req)
				if err != nil {
					errs.Add(1)
					continue
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					errs.Add(1)
				}
				local = append(local, time.Since(t0))
			}
			mu.Lock()
			lat = append(lat, local...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	el := time.Since(start)
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	r := loadResult{rps: float64(len(lat)) / el.Seconds(), errors: errs.Load()}
	if len(lat) > 0 {
		r.p99ms = float64(lat[len(lat)*99/100]) / 1e6
	}
	return r
}

// rssSampler polls VmRSS of a process.
type rssSampler struct {
	pid  int
	peak atomic.Int64
	done chan struct{}
	wg   sync.WaitGroup
}

func (s *rssSampler) start() {
	s.done = make(chan struct{})
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		t := time.NewTicker(10 * time.Millisecond)
		defer t.Stop()
		for {
			if v := readRSS(s.pid); v > s.peak.Load() {
				s.peak.Store(v)
			}
			select {
			case <-s.done:
				return
			case <-t.C:
			}
		}
	}()
}

func (s *rssSampler) stop() int64 {
	close(s.done)
	s.wg.Wait()
	return s.peak.Load()
}

func readRSS(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}
