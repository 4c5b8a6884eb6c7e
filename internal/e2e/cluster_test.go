package e2e

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/wharf-registry/wharf/internal/etcdtest"
	"github.com/wharf-registry/wharf/internal/fakehub"
	"github.com/wharf-registry/wharf/internal/s3test"
	"github.com/wharf-registry/wharf/mirror"
)

// cluster is n Wharf nodes on one etcd index and one bucket, sharing a
// token key, behind haproxy.
type cluster struct {
	etcd  *etcdtest.Cluster
	s3    *s3test.Server
	nodes []*wharfProc
	front string
	args  []string // every node's serve arguments
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
	c.args = append([]string{"--index", c.etcd.URL("e2e") + "?timeout=2s",
		"--blob-store", "s3://" + c.s3.Bucket + "/e2e?endpoint=" + c.s3.Addr + "&insecure=true",
		"--token-key-file", key}, extra...)
	var backends []string
	for range n {
		w := startWharf(t, "", c.args...)
		c.nodes, backends = append(c.nodes, w), append(backends, w.addr)
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

	// One etcd member down: a push through haproxy and a pull elsewhere.
	c.etcd.Members[0].Stop()
	pusher.docker(t, "tag", base, c.front+"/e2e/degraded:v1")
	pusher.docker(t, "push", c.front+"/e2e/degraded:v1")
	puller.docker(t, "pull", c.nodes[2].addr+"/e2e/degraded:v1")

	// All of etcd down: node 0 still serves what it served (its caches
	// and local copies); a push is refused with 503.
	c.etcd.StopAll()
	ref := c.nodes[0].addr + "/" + repos[0] + ":v1"
	puller.docker(t, "rmi", ref)
	puller.docker(t, "pull", ref)
	body := []byte("pushed while etcd is down")
	start := time.Now()
	resp, err := http.Post(c.nodes[1].url("/v2/e2e/other/blobs/uploads/?digest="+digest.FromBytes(body).String()), "application/octet-stream", bytes.NewReader(body))
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

	// The owner of a slow layer dies mid-download.
	big := hub.Push("library/big", "v1", fakehub.ImageSpec{Platforms: []string{"linux/amd64"}, Layers: 1, LayerSize: 24 << 20, Seed: 32})
	hub.SetBandwidth(4 << 20)
	layer := big.Layers["linux/amd64"][0]
	ownerID, _ := mirror.BlobOwner(c.members(t), layer)
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
