package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sync/errgroup"

	"github.com/wharf-registry/wharf/internal/fakehub"
	"github.com/wharf-registry/wharf/internal/testport"
	"github.com/wharf-registry/wharf/mirror/cluster"
)

// runCluster measures three Wharf nodes on one etcd index (Debian's etcd,
// one member) and one bucket (versitygw), on this one machine: what a
// cluster costs and saves, not its throughput (every node shares these
// two cores):
//   - upstream requests for 20 cold pulls spread over the nodes;
//   - a warm manifest and a warm blob from a node that does not own them
//     against the node that does (latency and throughput);
//   - the time from a tag move's 201 on one node to another node serving
//     the new digest (the change feed's delay), and whether a new tag is
//     served at once;
//   - index requests per cold and per warm pull.
func runCluster(tmp, bin string) error {
	etcdBin, err := exec.LookPath("etcd")
	if err != nil {
		return fmt.Errorf("cluster suite: %w (Debian etcd-server)", err)
	}
	client, peer := mustFreePort(), mustFreePort()
	etcd := exec.Command(etcdBin, "--name", "b0", "--data-dir", filepath.Join(tmp, "etcd"),
		"--listen-client-urls", "http://"+client, "--advertise-client-urls", "http://"+client,
		"--listen-peer-urls", "http://"+peer, "--initial-advertise-peer-urls", "http://"+peer,
		"--initial-cluster", "b0=http://"+peer, "--logger", "zap", "--log-level", "error")
	if err := etcd.Start(); err != nil {
		return err
	}
	defer func() { etcd.Process.Kill(); etcd.Wait() }()

	gw := filepath.Join(tmp, "versitygw")
	build := exec.Command("go", "build", "-o", gw, "github.com/versity/versitygw/cmd/versitygw")
	build.Dir = filepath.Join("internal", "tools", "versitygw")
	if out, err := build.CombinedOutput(); err != nil {
		return fmt.Errorf("building versitygw: %v\n%s", err, out)
	}
	s3addr := mustFreePort()
	const ak, sk = "bench", "bench-secret-key"
	os.MkdirAll(filepath.Join(tmp, "s3"), 0o755)
	s3 := exec.Command(gw, "--access", ak, "--secret", sk, "--port", s3addr, "posix", filepath.Join(tmp, "s3"))
	if err := s3.Start(); err != nil {
		return err
	}
	defer func() { s3.Process.Kill(); s3.Wait() }()
	mc, err := minio.New(s3addr, &minio.Options{Creds: credentials.NewStaticV4(ak, sk, "")})
	if err != nil {
		return err
	}
	for i := 0; ; i++ {
		if err = mc.MakeBucket(context.Background(), "bench", minio.MakeBucketOptions{}); err == nil || i == 100 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		return fmt.Errorf("bucket: %w", err)
	}
	os.Setenv("AWS_ACCESS_KEY_ID", ak)
	os.Setenv("AWS_SECRET_ACCESS_KEY", sk)
	key := filepath.Join(tmp, "token.key")
	os.WriteFile(key, []byte(base64.StdEncoding.EncodeToString(bytes.Repeat([]byte("k"), 32))), 0o600)

	hub, err := fakehub.New()
	if err != nil {
		return err
	}
	defer hub.Close()
	hub.SetAuth(false)
	var nodes []*proc
	var metrics []string
	members := map[string]string{}
	for i := range 3 {
		data := filepath.Join(tmp, fmt.Sprintf("node%d", i))
		m := mustFreePort()
		w, err := startProc(bin, "serve", "--addr", "127.0.0.1:0", "--data", data, "--metrics-addr", m,
			"--index", "etcd://"+client+"/bench", "--blob-store", "s3://bench/c?endpoint="+s3addr+"&insecure=true",
			"--token-key-file", key, "--upstream", "docker.io="+hub.URL)
		if err != nil {
			return err
		}
		defer w.stop()
		id, err := os.ReadFile(filepath.Join(data, "node-id"))
		if err != nil {
			return err
		}
		nodes, metrics = append(nodes, w), append(metrics, m)
		members[strings.TrimSpace(string(id))] = "http://" + w.addr
	}
	time.Sleep(500 * time.Millisecond) // every node has seen every member join
	url := func(i int) string { return "http://" + nodes[i].addr }
	which := func(owner string) int {
		for i := range nodes {
			if members[owner] == url(i) {
				return i
			}
		}
		return -1
	}
	c := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	ctx := context.Background()
	fmt.Println("cluster: 3 nodes, one etcd member, versitygw; all on this machine")

	// 1. Cold pulls.
	img := hub.Push("bench/cluster", "1", fakehub.ImageSpec{Platforms: []string{"linux/" + runtime.GOARCH}, Layers: 6, LayerSize: 4 << 20, Seed: 301})
	hub.SetLatency(20 * time.Millisecond)
	ops0 := indexOps(metrics)
	var g errgroup.Group
	took, err := timed(func() error {
		for i := range 20 {
			g.Go(func() error { return pullImage(ctx, c, url(i%3), "bench/cluster", "1") })
		}
		return g.Wait()
	})
	if err != nil {
		return err
	}
	hub.SetLatency(0)
	blobs := len(img.Layers["linux/"+runtime.GOARCH]) + 1
	gets := hub.Count("GET blob")
	manifestReqs := hub.Count("GET manifest") + hub.Count("HEAD manifest")
	coldOps := float64(indexOps(metrics)-ops0) / 20
	fmt.Printf("  20 cold pulls over 3 nodes (%.2fs): upstream blob GETs %d for %d blobs (%.2f per blob), manifest requests %d; index requests %.0f per pull\n",
		took.Seconds(), gets, blobs, float64(gets)/float64(blobs), manifestReqs, coldOps)
	addTarget("cluster: upstream blob GETs per blob, 20 cold pulls over 3 nodes", "3 (one per node)", "1",
		fmt.Sprintf("%.2f", float64(gets)/float64(blobs)), gets == blobs)

	// 2. Warm manifest and blob: owner against the others.
	repo := "docker.io/bench/cluster"
	mOwner := which(mustOwner(cluster.ManifestOwner(members, repo, "1")))
	layer := img.Layers["linux/"+runtime.GOARCH][0]
	bOwner := which(mustOwner(cluster.BlobOwner(members, layer)))
	for i := range nodes { // every node warm: its caches and local copies
		if err := pullImage(ctx, c, url(i), "bench/cluster", "1"); err != nil {
			return err
		}
	}
	var rps [3][]float64
	var p99 [3][]float64
	for range 3 {
		for i := range nodes {
			r, err := wrkLoad(url(i)+"/v2/bench/cluster/manifests/1", *conns, *duration)
			if err != nil {
				return err
			}
			if r.errors > 0 {
				return errors.New("errors during the cluster's warm manifest load")
			}
			rps[i], p99[i] = append(rps[i], r.rps), append(p99[i], r.p99ms)
		}
	}
	lat := func(u string, n int) (time.Duration, error) {
		var ds []time.Duration
		for range n {
			start := time.Now()
			req, _ := http.NewRequest(http.MethodGet, u, nil)
			req.Header.Set("Accept", accept)
			resp, err := c.Do(req)
			if err != nil {
				return 0, err
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			ds = append(ds, time.Since(start))
		}
		sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
		return ds[len(ds)/2], nil
	}
	mLat, bLat, bRate := make([]time.Duration, 3), make([]time.Duration, 3), make([]float64, 3)
	cfg := img.Configs["linux/"+runtime.GOARCH]
	for i := range nodes {
		if mLat[i], err = lat(url(i)+"/v2/bench/cluster/manifests/1", 1000); err != nil {
			return err
		}
		if bLat[i], err = lat(url(i)+"/v2/bench/cluster/blobs/"+cfg.String(), 1000); err != nil {
			return err
		}
		if bRate[i], err = concurrentGets(url(i)+"/v2/bench/cluster/blobs/"+layer.String(), 16); err != nil {
			return err
		}
	}
	others := func(owner int, f func(i int) float64) float64 {
		var sum float64
		for i := range nodes {
			if i != owner {
				sum += f(i)
			}
		}
		return sum / 2
	}
	med := func(xs []float64) float64 { s := append([]float64(nil), xs...); sort.Float64s(s); return s[len(s)/2] }
	mRatio := others(mOwner, func(i int) float64 { return med(rps[i]) }) / med(rps[mOwner])
	mExtra := others(mOwner, func(i int) float64 { return float64(mLat[i]) }) - float64(mLat[mOwner])
	bRatio := others(bOwner, func(i int) float64 { return bRate[i] }) / bRate[bOwner]
	bExtra := others(bOwner, func(i int) float64 { return float64(bLat[i]) }) - float64(bLat[bOwner])
	for i := range nodes {
		role := ""
		if i == mOwner {
			role += " owns the manifest"
		}
		if i == bOwner {
			role += " owns the layer"
		}
		fmt.Printf("    node %d%-30s manifest %7.0f req/s p99 %5.2f ms, one at a time %6.0f µs; small blob %6.0f µs; 4 MiB layer x16 %6.0f MiB/s\n",
			i, role, med(rps[i]), med(p99[i]), float64(mLat[i].Microseconds()), float64(bLat[i].Microseconds()), bRate[i])
	}
	fmt.Printf("  warm from a node that does not own it vs the owner: manifest %.2f of the throughput, %+.0f µs; blob %.2f of the throughput, %+.0f µs\n",
		mRatio, mExtra/1e3, bRatio, bExtra/1e3)
	addTarget("cluster: warm manifest from a non-owner ÷ owner (throughput; extra latency)", "–", "≥ 0.9; < 1 ms",
		fmt.Sprintf("%.2f; %+.0f µs", mRatio, mExtra/1e3), mRatio >= 0.9 && mExtra < 1e6)
	addTarget("cluster: warm blob from a non-owner ÷ owner (throughput; extra latency)", "–", "≥ 0.9; < 1 ms",
		fmt.Sprintf("%.2f; %+.0f µs", bRatio, bExtra/1e3), bRatio >= 0.9 && bExtra < 1e6)

	// 3. A tag moved on node 0, served by node 1.
	cfgBody := []byte(`{"os":"linux"}`)
	for _, b := range [][]byte{cfgBody} {
		resp, err := c.Post(url(0)+"/v2/bench/moving/blobs/uploads/?digest="+digest.FromBytes(b).String(), "application/octet-stream", bytes.NewReader(b))
		if err != nil {
			return err
		}
		resp.Body.Close()
	}
	manifest := func(n int) []byte {
		return []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%d},"layers":[],"annotations":{"n":"%d"}}`,
			digest.FromBytes(cfgBody), len(cfgBody), n))
	}
	put := func(tag string, body []byte) error {
		req, _ := http.NewRequest(http.MethodPut, url(0)+"/v2/bench/moving/manifests/"+tag, bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
		resp, err := c.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusCreated {
			return fmt.Errorf("PUT manifest: %s", resp.Status)
		}
		return nil
	}
	served := func(tag string) (digest.Digest, error) {
		req, _ := http.NewRequest(http.MethodHead, url(1)+"/v2/bench/moving/manifests/"+tag, nil)
		req.Header.Set("Accept", accept)
		resp, err := c.Do(req)
		if err != nil {
			return "", err
		}
		resp.Body.Close()
		return digest.Digest(resp.Header.Get("Docker-Content-Digest")), nil
	}
	var delays []time.Duration
	var polls int
	for n := range 200 {
		body := manifest(n)
		if err := put("moving", body); err != nil {
			return err
		}
		start := time.Now()
		for {
			d, err := served("moving")
			if err != nil {
				return err
			}
			polls++
			if d == digest.FromBytes(body) {
				break
			}
			if time.Since(start) > 10*time.Second {
				return fmt.Errorf("node 1 still serves %s 10 s after a move", d)
			}
		}
		delays = append(delays, time.Since(start))
	}
	sort.Slice(delays, func(i, j int) bool { return delays[i] < delays[j] })
	fresh := 0
	for n := range 50 {
		body := manifest(1000 + n)
		tag := fmt.Sprintf("new%d", n)
		if err := put(tag, body); err != nil {
			return err
		}
		if d, err := served(tag); err == nil && d == digest.FromBytes(body) {
			fresh++
		}
	}
	p99d := delays[len(delays)*99/100]
	fmt.Printf("  a tag moved on node 0, served moved by node 1 (200 moves, node 1 polling): p50 %v, p99 %v, max %v, %.1f polls per move; new tags served at once: %d of 50\n",
		delays[len(delays)/2].Round(time.Microsecond), p99d.Round(time.Microsecond), delays[len(delays)-1].Round(time.Microsecond), float64(polls)/200, fresh)
	addTarget("cluster: 201 on node A → node B serves a moved tag (p99); a new tag at once", "–", "immediately",
		fmt.Sprintf("p99 %v; %d/50 new tags at once", p99d.Round(time.Microsecond), fresh), fresh == 50 && p99d < 50*time.Millisecond)

	// 4. Index requests of a warm pull.
	ops0 = indexOps(metrics)
	for range 10 {
		if err := pullImage(ctx, c, url(2), "bench/cluster", "1"); err != nil {
			return err
		}
	}
	warmOps := float64(indexOps(metrics)-ops0) / 10
	fmt.Printf("  index requests per pull: cold %.1f, warm %.1f (all nodes; the access-time flush writes once a minute)\n", coldOps, warmOps)
	return nil
}

func mustFreePort() string {
	a, err := testport.Free()
	if err != nil {
		panic(err)
	}
	return a
}

func mustOwner(id, _ string) string { return id }

var indexOpsRE = regexp.MustCompile(`(?m)^wharf_index_requests_total\{op="(read|write)"\} (\S+)$`)

// indexOps sums the index reads and writes the nodes report.
func indexOps(metrics []string) int64 {
	var n int64
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, m := range metrics {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := http.Get("http://" + m + "/metrics")
			if err != nil {
				return
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			for _, f := range indexOpsRE.FindAllStringSubmatch(string(b), -1) {
				v, _ := strconv.ParseFloat(f[2], 64)
				mu.Lock()
				n += int64(v)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return n
}
