package e2e

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/wharf-registry/wharf/internal/etcdtest"
	"github.com/wharf-registry/wharf/internal/fakehub"
	"github.com/wharf-registry/wharf/internal/s3test"
	"github.com/wharf-registry/wharf/internal/testport"
	wcluster "github.com/wharf-registry/wharf/mirror/cluster"
)

// cluster is n Wharf nodes on one etcd index and one bucket, sharing a
// token key, behind haproxy.
type cluster struct {
	etcd    *etcdtest.Cluster
	s3      *s3test.Server
	nodes   []*wharfProc
	front   string
	args    []string // every node's serve arguments
	metrics []string // each node's --metrics-addr
}

func startCluster(t *testing.T, n int, extra ...string) *cluster {
	t.Helper()
	c := &cluster{etcd: etcdtest.Start(t, 3), s3: s3test.Start(t)}
	t.Setenv("AWS_ACCESS_KEY_ID", c.s3.AccessKey)
	t.Setenv("AWS_SECRET_ACCESS_KEY", c.s3.SecretKey)
	key := filepath.Join(t.TempDir(), "token.key")
	raw := make([]byte, 32)
	rand.Read(raw)
	if err := os.WriteFile(key, []byte(base64.StdEncoding.EncodeToString(raw)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c.args = append([]string{"--index", c.etcd.URL("e2e"),
		"--blob-store", "s3://" + c.s3.Bucket + "/e2e?endpoint=" + c.s3.Addr + "&insecure=true",
		"--token-key-file", key}, extra...)
	var backends []string
	for range n {
		metrics := testport.Pick(t)
		w := startWharf(t, "", append([]string{"--metrics-addr", metrics}, c.args...)...)
		c.nodes, backends = append(c.nodes, w), append(backends, w.addr)
		c.metrics = append(c.metrics, metrics)
	}
	c.front, _ = startHaproxy(t, backends)
	return c
}

// TestClusterPushPull: three nodes on etcd + S3 behind haproxy. A real
// dockerd pushes images through haproxy while a second dockerd pulls each
// one as soon as its push returned, from a node other than the one
// haproxy sent the push to; every node lists every repository. With one
// etcd member stopped nothing changes for clients; with all stopped, what
// a node has served is still pulled, and a push gets 503 naming the index.
func TestClusterPushPull(t *testing.T) {
	c := startCluster(t, 3, "--mirror=false")
	pusher, puller := startDockerd(t), startDockerd(t)
	base := c.front + "/e2e/base:v1"
	pusher.buildImage(t, base, "scratch", "a.bin", "b.bin")
	var repos []string
	var wg sync.WaitGroup
	errs := make(chan string, 16)
	for i := range 6 {
		repo := fmt.Sprintf("e2e/team%d/app", i)
		repos = append(repos, repo)
		pusher.docker(t, "tag", base, c.front+"/"+repo+":v1")
		pusher.docker(t, "push", c.front+"/"+repo+":v1")
		// Pull from every node in turn, while the next push goes on.
		node := c.nodes[i%len(c.nodes)]
		wg.Add(1)
		go func() {
			defer wg.Done()
			out, err := runErr(2*time.Minute, puller.env(), "docker", "pull", node.addr+"/"+repo+":v1")
			if err != nil {
				errs <- fmt.Sprintf("pull %s from %s right after its push: %v\n%s", repo, node.addr, err, out)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Fatal(e)
	}
	id := pusher.docker(t, "image", "inspect", "--format", "{{.Id}}", base)
	for i, repo := range repos {
		ref := c.nodes[i%len(c.nodes)].addr + "/" + repo + ":v1"
		if got := puller.docker(t, "image", "inspect", "--format", "{{.Id}}", ref); got != id {
			t.Fatalf("%s pulled as %s, pushed as %s", ref, got, id)
		}
	}
	for _, w := range c.nodes {
		held := catalogOf(t, w, "", "")
		for _, r := range repos {
			if !strings.Contains(strings.Join(held, " "), r) {
				t.Fatalf("%s does not list %s: %v", w.addr, r, held)
			}
		}
	}

	// The status page and the metrics show the cluster.
	ids := c.members(t)
	resp, err := http.Get(c.nodes[1].url("/"))
	if err != nil {
		t.Fatal(err)
	}
	page := readAll(t, resp)
	for id := range ids {
		if !strings.Contains(page, id) {
			t.Fatalf("status page does not list member %s:\n%s", id, page)
		}
	}
	if !strings.Contains(page, "(this node)") || strings.Count(page, ">answering") != 2 {
		t.Fatalf("status page's cluster section:\n%s", page)
	}
	metrics := scrape(t, c.metrics[1])
	for _, want := range []string{"wharf_cluster_members 3", "wharf_index_up 1", "wharf_blob_store_up 1"} {
		if !strings.Contains(metrics, want+"\n") {
			t.Fatalf("metrics lack %q:\n%s", want, metrics)
		}
	}

	// A node killed with SIGKILL right after acknowledging a push loses
	// nothing: the others serve it from the index and the bucket.
	layer := bytes.Repeat([]byte("acknowledged, then killed "), 40000)
	_, err = pushRaw(c.nodes[2], "e2e/killed", "v1", layer)
	if err != nil {
		t.Fatal(err)
	}
	c.nodes[2].kill()
	if err := pullBlobs(c.nodes[1], "e2e/killed", "v1", []digest.Digest{digest.FromBytes(layer)}); err != nil {
		t.Fatalf("a push acknowledged by a node killed right after: %v", err)
	}
	time.Sleep(1500 * time.Millisecond) // haproxy's health check takes the dead node out

	// One etcd member down: a push through haproxy and a pull elsewhere.
	c.etcd.Members[0].Stop()
	pusher.docker(t, "tag", base, c.front+"/e2e/degraded:v1")
	pusher.docker(t, "push", c.front+"/e2e/degraded:v1")
	puller.docker(t, "pull", c.nodes[1].addr+"/e2e/degraded:v1")

	// All of etcd down: node 0 still serves what it served (its caches
	// and local copies); a push is refused with 503. (Node 0 served it
	// again first: a read racing the change feed of its push is not
	// cached.)
	ref := c.nodes[0].addr + "/" + repos[0] + ":v1"
	puller.docker(t, "rmi", ref)
	puller.docker(t, "pull", ref)
	c.etcd.StopAll()
	puller.docker(t, "rmi", ref)
	puller.docker(t, "pull", ref)
	body := []byte("pushed while etcd is down")
	start := time.Now()
	resp, err = http.Post(c.nodes[1].url("/v2/e2e/other/blobs/uploads/?digest="+digest.FromBytes(body).String()), "application/octet-stream", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	msg := readAll(t, resp)
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(msg, "index (etcd) is unavailable") || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("push with etcd down: %s %s", resp.Status, msg)
	}
	if took := time.Since(start); took > 15*time.Second {
		t.Errorf("the refused push took %v", took)
	}
	if m := scrape(t, c.metrics[1]); !strings.Contains(m, "wharf_index_up 0\n") {
		t.Errorf("wharf_index_up with etcd down:\n%s", m)
	}

	// The outage lasts 25 s, longer than the nodes' leases (10 s): once
	// etcd is back, every node recovers by itself (it used to wedge for
	// good), and a node still stops on SIGTERM.
	time.Sleep(time.Until(start.Add(25 * time.Second)))
	for _, m := range c.etcd.Members {
		m.Restart(t)
	}
	c.etcd.WaitHealthy(t, 30*time.Second)
	back := time.Now()
	for i, w := range c.nodes[:2] { // node 2 was killed above
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(250 * time.Millisecond) {
			_, err := pushRaw(w, fmt.Sprintf("e2e/after-outage-%d", i), "v1", []byte(fmt.Sprintf("pushed to node %d after the outage", i)))
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("node %d after a 25 s etcd outage: %v\n%s", i, err, w.log)
			}
		}
		resp, err := (&http.Client{Timeout: 10 * time.Second}).Get(w.url("/readyz"))
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("node %d /readyz after the outage: %v %v", i, err, resp)
		}
		resp.Body.Close()
	}
	t.Logf("a 25 s etcd outage: every node pushes again %s after etcd was healthy", time.Since(back).Round(time.Millisecond))
	stopStart := time.Now()
	if err := c.nodes[1].stop(t); err != nil || time.Since(stopStart) > 30*time.Second {
		t.Fatalf("SIGTERM after the outage: %v after %s", err, time.Since(stopStart))
	}
}

func scrape(t *testing.T, addr string) string {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	return readAll(t, resp)
}

// pullBlobs GETs the manifest tag of repo from node, then each of blobs,
// and checks every digest.
func pullBlobs(node *wharfProc, repo, tag string, blobs []digest.Digest) error {
	req, _ := http.NewRequest(http.MethodGet, node.url("/v2/"+repo+"/manifests/"+tag), nil)
	req.Header.Set("Accept", "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("manifest %s:%s from %s: %s", repo, tag, node.addr, resp.Status)
	}
	for _, d := range blobs {
		resp, err := http.Get(node.url("/v2/" + repo + "/blobs/" + d.String()))
		if err != nil {
			return err
		}
		v := d.Verifier()
		_, err = io.Copy(v, resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK || !v.Verified() {
			return fmt.Errorf("blob %s from %s: %s, %v, verified %v", d, node.addr, resp.Status, err, v.Verified())
		}
	}
	return nil
}

// members is the cluster's membership as the nodes' data directories
// and addresses say.
func (c *cluster) members(t *testing.T) map[string]string {
	m := map[string]string{}
	for _, w := range c.nodes {
		id, err := os.ReadFile(filepath.Join(w.data, "node-id"))
		if err != nil {
			t.Fatal(err)
		}
		m[strings.TrimSpace(string(id))] = "http://" + w.addr
	}
	return m
}

// TestClusterColdPulls: 20 cold pulls of one image spread over three
// nodes make the fake hub serve each blob once for the whole cluster (the
// digest's owner downloads it, the other nodes fill from the owner). Then
// the owner of a large layer being downloaded is killed with SIGKILL: the
// pulls on the other nodes still complete, verified (from upstream).
func TestClusterColdPulls(t *testing.T) {
	hub := fakehub.Start(t)
	img := hub.Push("library/app", "v1", fakehub.ImageSpec{Platforms: []string{"linux/amd64"}, Layers: 4, LayerSize: 2 << 20, Seed: 31})
	hub.SetBandwidth(16 << 20)
	c := startCluster(t, 3, "--upstream", "docker.io="+hub.URL, "--tag-ttl", "2s")
	blobs := append([]digest.Digest{img.Configs["linux/amd64"]}, img.Layers["linux/amd64"]...)
	var wg sync.WaitGroup
	errs := make(chan error, 20)
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := pullBlobs(c.nodes[i%3], "library/app", "v1", blobs); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for _, d := range blobs {
		if n := hub.Count("GET blob " + d.String()); n != 1 {
			t.Errorf("the hub served %s %d times for 20 pulls over 3 nodes, want once", d, n)
		}
	}
	if n := hub.Count("GET manifest"); n != 1 {
		t.Errorf("the hub served the tag's manifest %d times for 20 pulls over 3 nodes, want once", n)
	}
	t.Logf("20 cold pulls over 3 nodes: %d blob GETs upstream for %d blobs, %d manifest GETs", hub.Count("GET blob"), len(blobs), hub.Count("GET manifest"))

	// The tag's TTL runs out: 15 pulls over the nodes revalidate it with
	// one HEAD for the cluster.
	time.Sleep(2100 * time.Millisecond)
	hub.ResetCounts()
	errs = make(chan error, 15)
	for i := range 15 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := pullBlobs(c.nodes[i%3], "library/app", "v1", nil); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if heads, gets := hub.Count("HEAD manifest"), hub.Count("GET manifest"); heads != 1 || gets != 0 {
		var logs strings.Builder
		for _, w := range c.nodes {
			logs.WriteString(w.log.String())
		}
		t.Errorf("revalidating an expired tag from 3 nodes: %d HEADs and %d GETs upstream, want 1 and 0\n%s", heads, gets, logs.String())
	}

	// Clients that send the peer header without a node token are clients:
	// a cold blob asked of every node at once is still downloaded once for
	// the cluster (believed, the header made each node fetch it itself).
	spoof := hub.Push("library/spoof", "v1", fakehub.ImageSpec{Platforms: []string{"linux/amd64"}, Layers: 1, LayerSize: 3 << 20, Seed: 33})
	spoofed := spoof.Layers["linux/amd64"][0]
	errs = make(chan error, 3)
	for _, w := range c.nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequest(http.MethodGet, w.url("/v2/library/spoof/blobs/"+spoofed.String()), nil)
			req.Header.Set("X-Wharf-Peer", "not-a-node")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				errs <- err
				return
			}
			defer resp.Body.Close()
			if got, err := digest.FromReader(resp.Body); resp.StatusCode != http.StatusOK || err != nil || got != spoofed {
				errs <- fmt.Errorf("spoofed peer GET on %s: %s %v", w.addr, resp.Status, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if n := hub.Count("GET blob " + spoofed.String()); n != 1 {
		t.Errorf("a cold blob asked of 3 nodes with a spoofed peer header: %d GETs upstream, want 1", n)
	}

	// A frozen owner (SIGSTOP: it accepts connections, answers nothing)
	// costs the first blob it owns a bounded wait, and is then skipped.
	frozen := hub.Push("library/frozen", "v1", fakehub.ImageSpec{Platforms: []string{"linux/amd64"}, Layers: 8, LayerSize: 64 << 10, Seed: 34})
	members := c.members(t)
	byOwner := map[string][]digest.Digest{}
	for _, d := range frozen.Layers["linux/amd64"] {
		id, _ := wcluster.BlobOwner(members, d)
		byOwner[id] = append(byOwner[id], d)
	}
	var stopped, asker *wharfProc
	for _, w := range c.nodes {
		id, _ := os.ReadFile(filepath.Join(w.data, "node-id"))
		if owned := byOwner[strings.TrimSpace(string(id))]; len(owned) >= 2 && stopped == nil {
			stopped = w
		} else if asker == nil {
			asker = w
		}
	}
	if stopped == nil || asker == nil {
		t.Fatalf("no node owns two of 8 layers: %v", byOwner)
	}
	stoppedID, _ := os.ReadFile(filepath.Join(stopped.data, "node-id"))
	owned := byOwner[strings.TrimSpace(string(stoppedID))]
	stopped.cmd.Process.Signal(syscall.SIGSTOP)
	for i, d := range owned[:2] {
		start := time.Now()
		got, err := blobDigest(http.DefaultClient, asker, "library/frozen", d)
		took := time.Since(start)
		if err != nil || got != d {
			stopped.cmd.Process.Signal(syscall.SIGCONT)
			t.Fatalf("blob %d owned by a frozen node: %s %v", i, got, err)
		}
		if i == 0 && took > 15*time.Second || i == 1 && took > 3*time.Second {
			stopped.cmd.Process.Signal(syscall.SIGCONT)
			t.Fatalf("blob %d owned by a frozen node took %s", i, took)
		}
		t.Logf("blob %d owned by a frozen node: %s", i, took.Round(time.Millisecond))
	}
	stopped.cmd.Process.Signal(syscall.SIGCONT)
	// Its lease may have run out while it was stopped: the section below
	// computes owners over all three nodes, so wait until every node sees
	// all three again.
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		all := true
		for _, m := range c.metrics {
			if !strings.Contains(scrape(t, m), "wharf_cluster_members 3\n") {
				all = false
			}
		}
		if all {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the node stopped with SIGSTOP did not rejoin within 30 s")
		}
	}

	// The owner of a slow layer dies mid-download.
	big := hub.Push("library/big", "v1", fakehub.ImageSpec{Platforms: []string{"linux/amd64"}, Layers: 1, LayerSize: 24 << 20, Seed: 32})
	hub.SetBandwidth(4 << 20)
	layer := big.Layers["linux/amd64"][0]
	ownerID, _ := wcluster.BlobOwner(c.members(t), layer)
	var owner *wharfProc
	var others []*wharfProc
	for _, w := range c.nodes {
		if id, _ := os.ReadFile(filepath.Join(w.data, "node-id")); strings.TrimSpace(string(id)) == ownerID {
			owner = w
		} else {
			others = append(others, w)
		}
	}
	errs = make(chan error, 4)
	for _, w := range others {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := pullBlobs(w, "library/big", "v1", []digest.Digest{layer}); err != nil {
				errs <- err
			}
		}()
	}
	deadline := time.Now().Add(20 * time.Second)
	for hub.Count("GET blob "+layer.String()) == 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(time.Second) // a few MiB into the layer
	owner.kill()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("a pull failed when the owner died: %v", err)
	}
	t.Logf("owner killed mid-download: %d GETs of the layer upstream (ranged segments included)", hub.Count("GET blob "+layer.String()))
}

// pushRaw pushes an image of the given layers (and a config naming tag)
// to repo:tag on node, one monolithic upload per blob, and returns the
// manifest's digest.
func pushRaw(node *wharfProc, repo, tag string, layers ...[]byte) (digest.Digest, error) {
	return pushRawAs(node, repo, tag, "", "", layers...)
}

// pushRawAs is pushRaw signed in as user (Basic; none when user is "").
func pushRawAs(node *wharfProc, repo, tag, user, pass string, layers ...[]byte) (digest.Digest, error) {
	do := func(req *http.Request) (*http.Response, error) {
		if user != "" {
			req.SetBasicAuth(user, pass)
		}
		return http.DefaultClient.Do(req)
	}
	cfg := []byte(`{"architecture":"amd64","os":"linux","tag":"` + tag + `"}`)
	var descs []string
	for _, b := range append([][]byte{cfg}, layers...) {
		d := digest.FromBytes(b)
		req, _ := http.NewRequest(http.MethodPost, node.url("/v2/"+repo+"/blobs/uploads/?digest="+d.String()), bytes.NewReader(b))
		req.Header.Set("Content-Type", "application/octet-stream")
		resp, err := do(req)
		if err != nil {
			return "", err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusCreated {
			return "", fmt.Errorf("blob %s of %s on %s: %s", d, repo, node.addr, resp.Status)
		}
		descs = append(descs, fmt.Sprintf(`{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"%s","size":%d}`, d, len(b)))
	}
	descs[0] = strings.Replace(descs[0], "image.layer.v1.tar", "image.config.v1+json", 1)
	body := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":` + descs[0] + `,"layers":[` + strings.Join(descs[1:], ",") + `]}`)
	req, _ := http.NewRequest(http.MethodPut, node.url("/v2/"+repo+"/manifests/"+tag), bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
	resp, err := do(req)
	if err != nil {
		return "", err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		return "", fmt.Errorf("manifest %s:%s on %s: %s", repo, tag, node.addr, resp.Status)
	}
	return digest.FromBytes(body), nil
}

// TestClusterUploadAcrossNodes: an upload session started on one node,
// continued on a second and finished on a third (as without a
// repository-hashing balancer) lands whole; the blob is readable on all.
func TestClusterUploadAcrossNodes(t *testing.T) {
	c := startCluster(t, 3, "--mirror=false")
	body := bytes.Repeat([]byte("chunked across nodes "), 50000)
	half := len(body) / 2
	resp, err := http.Post(c.nodes[0].url("/v2/team/up/blobs/uploads/"), "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	loc := resp.Header.Get("Location")
	if resp.StatusCode != http.StatusAccepted || loc == "" {
		t.Fatalf("start upload: %s %q", resp.Status, loc)
	}
	req, _ := http.NewRequest(http.MethodPatch, c.nodes[1].url(loc), bytes.NewReader(body[:half]))
	req.Header.Set("Content-Type", "application/octet-stream")
	req.Header.Set("Content-Range", fmt.Sprintf("0-%d", half-1))
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("PATCH on another node: %s", resp.Status)
	}
	loc = resp.Header.Get("Location")
	d := digest.FromBytes(body)
	sep := "?"
	if strings.Contains(loc, "?") {
		sep = "&"
	}
	req, _ = http.NewRequest(http.MethodPut, c.nodes[2].url(loc+sep+"digest="+d.String()), bytes.NewReader(body[half:]))
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	msg := readAll(t, resp)
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("PUT on a third node: %s %s", resp.Status, msg)
	}
	for _, w := range c.nodes {
		resp, err := http.Get(w.url("/v2/team/up/blobs/" + d.String()))
		if err != nil {
			t.Fatal(err)
		}
		got := readAll(t, resp)
		if resp.StatusCode != http.StatusOK || digest.FromString(got) != d {
			t.Fatalf("blob on %s: %s, %d bytes", w.addr, resp.Status, len(got))
		}
	}
}

// TestClusterGCWhilePushing: every node collects every 300 ms (one at a
// time: the cluster's collector lock) with a 1 s grace while two nodes
// take pushes that reuse a small pool of layers and a third deletes old
// tags, so that content is collected and pushed again all the time. Every
// push that was acknowledged and not deleted is then whole on every node,
// and `wharf fsck` of the shared index and bucket is clean.
func TestClusterGCWhilePushing(t *testing.T) {
	c := startCluster(t, 3, "--mirror=false", "--allow-delete", "--gc-interval", "300ms", "--gc-grace", "1s")
	pool := make([][]byte, 6)
	for i := range pool {
		pool[i] = bytes.Repeat([]byte(fmt.Sprintf("pool layer %d ", i)), 20000+i)
	}
	type pushed struct {
		repo, tag string
		d         digest.Digest
		layers    [][]byte
	}
	var mu sync.Mutex
	var kept []pushed
	stop := time.Now().Add(8 * time.Second)
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for p := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			node := c.nodes[1+p]
			for i := 0; time.Now().Before(stop); i++ {
				repo, tag := fmt.Sprintf("gc/team%d", i%3), fmt.Sprintf("p%d-%d", p, i)
				layers := [][]byte{pool[(i+p)%len(pool)], pool[(i*7+3)%len(pool)], fmt.Appendf(nil, "unique %d %d", p, i)}
				d, err := pushRaw(node, repo, tag, layers...)
				if err != nil {
					errs <- err
					return
				}
				mu.Lock()
				kept = append(kept, pushed{repo, tag, d, layers})
				mu.Unlock()
			}
		}()
	}
	deleted := 0
	for time.Now().Before(stop) {
		time.Sleep(150 * time.Millisecond)
		mu.Lock()
		if len(kept) < 4 {
			mu.Unlock()
			continue
		}
		victim := kept[0]
		kept = kept[1:]
		mu.Unlock()
		req, _ := http.NewRequest(http.MethodDelete, c.nodes[0].url("/v2/"+victim.repo+"/manifests/"+victim.d.String()), nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusAccepted {
			t.Fatalf("delete %s@%s: %s", victim.repo, victim.d, resp.Status)
		}
		deleted++
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("a push failed while collecting: %v", err)
	}
	time.Sleep(2 * time.Second) // more collections, past the grace
	var collections, freed int
	for _, w := range c.nodes {
		for _, m := range regexp.MustCompile(`msg="garbage collection" .* blobs=(\d+)`).FindAllStringSubmatch(w.log.String(), -1) {
			n, _ := strconv.Atoi(m[1])
			collections, freed = collections+1, freed+n
		}
	}
	if collections == 0 || deleted == 0 || freed == 0 {
		t.Fatalf("%d collections freed %d blobs after %d deletes: the test exercised nothing", collections, freed, deleted)
	}
	for _, p := range kept {
		for _, w := range c.nodes {
			if err := pullBlobs(w, p.repo, p.tag, nil); err != nil {
				t.Fatalf("acknowledged push lost: %v", err)
			}
			var blobs []digest.Digest
			for _, l := range p.layers {
				blobs = append(blobs, digest.FromBytes(l))
			}
			if err := pullBlobs(w, p.repo, p.tag, blobs); err != nil {
				t.Fatalf("acknowledged push lost a blob: %v", err)
			}
		}
	}
	out, err := runErr(2*time.Minute, nil, wharfBin, append([]string{"fsck"}, c.args[:4]...)...)
	if err != nil || !strings.Contains(out, "; 0 problems;") {
		t.Fatalf("wharf fsck of the cluster: %v\n%s", err, out)
	}
	t.Logf("%d pushes kept, %d deleted, %d collections freed %d blobs; fsck: %s", len(kept), deleted, collections, freed, strings.TrimSpace(out))
}

// TestClusterSameTagRace: 200 pushes of one tag, alternating between two
// nodes and eight at a time, each with its own manifest: afterwards the
// tag names one of the pushed manifests and all three nodes serve that
// same one; the 200 distinct tags pushed alongside are all listed.
func TestClusterSameTagRace(t *testing.T) {
	c := startCluster(t, 3, "--mirror=false")
	layer := []byte("the race's shared layer")
	var mu sync.Mutex
	pushed := map[digest.Digest]bool{}
	sem := make(chan struct{}, 8)
	var wg sync.WaitGroup
	errs := make(chan error, 400)
	for i := range 200 {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			node := c.nodes[i%2]
			unique := fmt.Appendf(nil, "push %d", i)
			d, err := pushRaw(node, "race/app", "latest", layer, unique)
			if err != nil {
				errs <- err
				return
			}
			if _, err := pushRaw(node, "race/app", fmt.Sprintf("t%d", i), layer, unique); err != nil {
				errs <- err
				return
			}
			mu.Lock()
			pushed[d] = true
			mu.Unlock()
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("a racing push failed: %v", err)
	}
	var first digest.Digest
	deadline := time.Now().Add(5 * time.Second)
	for i, w := range c.nodes {
		for {
			req, _ := http.NewRequest(http.MethodHead, w.url("/v2/race/app/manifests/latest"), nil)
			req.Header.Set("Accept", "application/vnd.oci.image.manifest.v1+json")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			d := digest.Digest(resp.Header.Get("Docker-Content-Digest"))
			if i == 0 && first == "" {
				first = d
			}
			if d == first {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("node %d serves latest as %s, node 0 as %s", i, d, first)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	if !pushed[first] {
		t.Fatalf("latest is %s, which no acknowledged push wrote", first)
	}
	resp, err := http.Get(c.nodes[2].url("/v2/race/app/tags/list"))
	if err != nil {
		t.Fatal(err)
	}
	var tags struct{ Tags []string }
	json.NewDecoder(resp.Body).Decode(&tags)
	resp.Body.Close()
	if len(tags.Tags) != 201 {
		t.Fatalf("%d tags listed after 200 distinct tag pushes and latest", len(tags.Tags))
	}
}
