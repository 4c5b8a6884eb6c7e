package e2e

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/wharf-registry/wharf/internal/etcdtest"
	"github.com/wharf-registry/wharf/internal/s3test"
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
