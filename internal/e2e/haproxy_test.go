package e2e

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wharf-registry/wharf/internal/testport"
)

// startHaproxy runs Debian's haproxy with docs/haproxy.cfg, its bind and
// server lines replaced by a loopback port and backends (health checks
// every 500 ms instead of 2 s, so the test need not wait), and returns its
// address. It is stopped by its PID at cleanup.
func startHaproxy(t *testing.T, backends []string) (addr string, logs *syncBuffer) {
	t.Helper()
	bin := requireTool(t, "haproxy")
	doc, err := os.ReadFile(filepath.Join("..", "..", "docs", "haproxy.cfg"))
	if err != nil {
		t.Fatal(err)
	}
	addr = testport.Pick(t)
	var cfg []string
	servers := 0
	for _, line := range strings.Split(string(doc), "\n") {
		switch f := strings.Fields(line); {
		case len(f) > 0 && f[0] == "bind":
			line = "    bind " + addr
		case len(f) > 0 && f[0] == "server":
			if servers == 0 {
				for i, b := range backends {
					cfg = append(cfg, fmt.Sprintf("    server wharf%d %s check inter 500ms fall 1 rise 1", i+1, b))
				}
			}
			servers++
			continue
		}
		cfg = append(cfg, line)
	}
	if servers == 0 {
		t.Fatal("docs/haproxy.cfg has no server lines")
	}
	file := filepath.Join(t.TempDir(), "haproxy.cfg")
	if err := os.WriteFile(file, []byte(strings.Join(cfg, "\n")), 0o644); err != nil {
		t.Fatal(err)
	}
	logs = &syncBuffer{}
	cmd := exec.Command(bin, "-db", "-f", file)
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get("http://" + addr + "/v2/")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK || resp.StatusCode == http.StatusUnauthorized {
				return addr, logs
			}
		}
		select {
		case <-done:
			t.Fatalf("haproxy exited during start-up\n%s", logs)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("haproxy did not answer within 20s\n%s", logs)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// catalogOf lists the repositories node w holds, asked directly.
func catalogOf(t *testing.T, w *wharfProc, user, pass string) []string {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, w.url("/v2/_catalog"), nil)
	req.SetBasicAuth(user, pass)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var c struct{ Repositories []string }
	if err := json.NewDecoder(resp.Body).Decode(&c); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("catalog of %s: %s %v", w.addr, resp.Status, err)
	}
	return c.Repositories
}

// headManifest asks for repo:tag through addr with Basic credentials and
// returns the status.
func headManifest(t *testing.T, addr, repo, tag, user, pass string) int {
	t.Helper()
	req, _ := http.NewRequest(http.MethodHead, "http://"+addr+"/v2/"+repo+"/manifests/"+tag, nil)
	req.SetBasicAuth(user, pass)
	req.Header.Set("Accept", "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestHaproxyThreeNodes: three independent Wharf nodes sharing a token
// key behind haproxy with docs/haproxy.cfg. A real dockerd signs in once
// through haproxy and pushes eight repositories: every upload's POST,
// PATCH and PUT reach one node (the push succeeds), each repository lives
// on exactly one node, the nodes share the work, and a token issued by one
// node is accepted by the others. Stopping one node moves only its
// repositories: the others still answer from the nodes that hold them,
// and a repository of the stopped node can be pushed again at once.
func TestHaproxyThreeNodes(t *testing.T) {
	const user, pass = "alice", "alice-s3cret"
	users, config := makeUsers(t, map[string]string{user: pass},
		"rules:\n  - repos: [\"**\"]\n    who: [alice]\n    actions: [pull, push]\n")
	key := filepath.Join(t.TempDir(), "token.key")
	raw := make([]byte, 32)
	rand.Read(raw)
	if err := os.WriteFile(key, []byte(base64.StdEncoding.EncodeToString(raw)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var nodes []*wharfProc
	var backends []string
	for range 3 {
		w := startWharf(t, "", "--mirror=false", "--htpasswd", users, "--config", config, "--token-key-file", key)
		nodes, backends = append(nodes, w), append(backends, w.addr)
	}
	front, logs := startHaproxy(t, backends)
	d := startDockerd(t)
	dockerLogin(t, d, front, user, pass)

	var repos []string
	base := front + "/e2e/base:v1"
	d.buildImage(t, base, "scratch", "a.bin", "b.bin")
	for i := range 8 {
		repo := fmt.Sprintf("e2e/team%d/app", i)
		repos = append(repos, repo)
		d.docker(t, "tag", base, front+"/"+repo+":v1")
		d.docker(t, "push", front+"/"+repo+":v1")
	}
	owner := map[string]int{}
	used := 0
	for i, w := range nodes {
		held := catalogOf(t, w, user, pass)
		if len(held) > 0 {
			used++
		}
		for _, r := range held {
			if r == "e2e/base" {
				continue
			}
			if prev, dup := owner[r]; dup {
				t.Fatalf("%s on node %d and node %d", r, prev, i)
			}
			owner[r] = i
		}
	}
	for _, r := range repos {
		if _, ok := owner[r]; !ok {
			t.Fatalf("%s on no node; owners %v\n%s", r, owner, logs)
		}
	}
	if used < 2 {
		t.Fatalf("all repositories on one node: %v", owner)
	}

	// A token from one node works on the others: same key.
	req, _ := http.NewRequest(http.MethodGet, nodes[0].url("/token?service=wharf&scope=repository:"+repos[0]+":pull"), nil)
	req.SetBasicAuth(user, pass)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var tok struct{ Token string }
	json.NewDecoder(resp.Body).Decode(&tok)
	resp.Body.Close()
	if tok.Token == "" {
		t.Fatalf("no token from node 1: %s", resp.Status)
	}
	for _, w := range nodes[1:] {
		req, _ := http.NewRequest(http.MethodGet, w.url("/v2/_catalog"), nil)
		req.Header.Set("Authorization", "Bearer "+tok.Token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("node 1's token on %s: %s", w.addr, resp.Status)
		}
	}

	// Pull everything back through haproxy.
	for _, r := range repos {
		d.docker(t, "rmi", front+"/"+r+":v1")
	}
	for _, r := range repos {
		d.docker(t, "pull", front+"/"+r+":v1")
	}

	// Stop the node holding the most repositories.
	count := make([]int, len(nodes))
	for _, n := range owner {
		count[n]++
	}
	gone := slices.Index(count, slices.Max(count))
	if err := nodes[gone].stop(t); err != nil {
		t.Fatalf("stopping node %d: %v", gone+1, err)
	}
	var moved, stayed []string
	for _, r := range repos {
		if owner[r] == gone {
			moved = append(moved, r)
		} else {
			stayed = append(stayed, r)
		}
	}
	// Once haproxy has seen the node down, a moved repository lands on a
	// node that never held it: 404, not an error from haproxy.
	deadline := time.Now().Add(15 * time.Second)
	for headManifest(t, front, moved[0], "v1", user, pass) != http.StatusNotFound {
		if time.Now().After(deadline) {
			t.Fatalf("haproxy still sends %s to the stopped node after 15s\n%s", moved[0], logs)
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, r := range stayed {
		if st := headManifest(t, front, r, "v1", user, pass); st != http.StatusOK {
			t.Fatalf("%s (node %d, still up) answered %d through haproxy after node %d stopped: it moved", r, owner[r]+1, st, gone+1)
		}
	}
	for _, r := range moved {
		if st := headManifest(t, front, r, "v1", user, pass); st != http.StatusNotFound {
			t.Fatalf("%s of the stopped node answered %d", r, st)
		}
	}
	d.docker(t, "push", front+"/"+moved[0]+":v1")
	if st := headManifest(t, front, moved[0], "v1", user, pass); st != http.StatusOK {
		t.Fatalf("%s pushed again after its node stopped: %d", moved[0], st)
	}
	found := false
	for i, w := range nodes {
		if i != gone && slices.Contains(catalogOf(t, w, user, pass), moved[0]) {
			found = true
		}
	}
	if !found {
		t.Fatalf("%s pushed again is on no surviving node", moved[0])
	}
	// haproxy's own log shows the check that took the node out.
	if !regexp.MustCompile(`wharf/wharf\d is DOWN`).MatchString(logs.String()) {
		t.Logf("haproxy log:\n%s", logs)
		t.Fatal("haproxy never logged the stopped node as DOWN")
	}
}
