package e2e

import (
	"net/http"
	"strings"
	"testing"
	"time"
)

// createTokenCLI runs `wharf token create` against w as user and returns
// the secret (the last line of its output).
func createTokenCLI(t *testing.T, server, user, pass string, args ...string) string {
	t.Helper()
	out := run(t, time.Minute, []string{"WHARF_PASSWORD=" + pass}, wharfBin,
		append([]string{"token", "create", "--server", server, "--user", user}, args...)...)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	secret := lines[len(lines)-1]
	if !strings.HasPrefix(secret, "wharf_") {
		t.Fatalf("wharf token create printed no secret on its last line:\n%s", out)
	}
	return secret
}

// TestAccessTokensDocker: alice (htpasswd) creates a token with the CLI
// for team/** (pull, push); a real dockerd logs in with it (docker login
// -u NAME -p SECRET), pushes and pulls team/app, and is refused a push
// outside the scope; `wharf token ls` shows it with its last use (kept in
// memory until the minute's flush); `wharf token revoke` makes the next
// push fail at once.
func TestAccessTokensDocker(t *testing.T) {
	requireTool(t, "dockerd")
	htpasswd, _ := makeUsers(t, map[string]string{"alice": "alice-pw"}, "")
	w := startWharf(t, "", "--mirror=false", "--htpasswd", htpasswd)
	secret := createTokenCLI(t, w.url(""), "alice", "alice-pw", "--name", "ci-push", "--repos", "team/**", "--actions", "pull,push", "--expires", "90d")

	d := startDockerdWith(t, map[string]any{"insecure-registries": []string{w.addr}})
	dockerLogin(t, d, w.addr, "ci-push", secret)
	ref := w.addr + "/team/app:v1"
	d.buildImage(t, ref, "scratch", "t.bin")
	d.roundTrip(t, ref)
	other := w.addr + "/other/app:v1"
	d.docker(t, "tag", ref, other)
	if out, err := runErr(time.Minute, d.env(), "docker", "push", other); err == nil || !strings.Contains(strings.ToLower(out), "denied") {
		t.Fatalf("push outside the token's scope: %v\n%s", err, out)
	}

	ls := run(t, time.Minute, []string{"WHARF_PASSWORD=alice-pw"}, wharfBin, "token", "ls", "--server", w.url(""), "--user", "alice")
	if !strings.Contains(ls, "ci-push") || !strings.Contains(ls, "alice") || !strings.Contains(ls, "pull,push on team/**") ||
		strings.Contains(strings.Split(ls, "ci-push")[1], "  -\n") {
		t.Fatalf("wharf token ls (name, owner, scope, last use):\n%s", ls)
	}
	if !strings.Contains(w.log.String(), `token=ci-push`) {
		t.Fatalf("the token's push is not audited as the token's:\n%s", w.log)
	}

	run(t, time.Minute, []string{"WHARF_PASSWORD=alice-pw"}, wharfBin, "token", "revoke", "--server", w.url(""), "--user", "alice", "ci-push")
	d.buildImage(t, w.addr+"/team/app:v2", "scratch", "t2.bin")
	if out, err := runErr(time.Minute, d.env(), "docker", "push", w.addr+"/team/app:v2"); err == nil {
		t.Fatalf("push with a revoked token succeeded:\n%s", out)
	}
}

// TestAccessTokensCluster: a token created through one node signs in on
// every node; revoked through another, every node refuses it at once
// (within the change feed's delay, checked within 2 s).
func TestAccessTokensCluster(t *testing.T) {
	htpasswd, _ := makeUsers(t, map[string]string{"alice": "alice-pw"}, "")
	c := startCluster(t, 3, "--mirror=false", "--htpasswd", htpasswd)
	secret := createTokenCLI(t, c.nodes[0].url(""), "alice", "alice-pw", "--name", "robot", "--repos", "team/**", "--actions", "pull,push")
	for i, n := range c.nodes {
		if _, err := pushRawAs(n, "team/cl", "v1", "robot", secret, []byte("token cluster layer")); err != nil {
			t.Fatalf("node %d: push with the token: %v", i, err)
		}
	}
	run(t, time.Minute, []string{"WHARF_PASSWORD=alice-pw"}, wharfBin, "token", "revoke", "--server", c.nodes[1].url(""), "--user", "alice", "robot")
	for i, n := range c.nodes {
		deadline := time.Now().Add(2 * time.Second)
		for {
			req, _ := http.NewRequest(http.MethodGet, n.url("/v2/team/cl/manifests/v1"), nil)
			req.SetBasicAuth("robot", secret)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode == http.StatusUnauthorized {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("node %d still takes the revoked token: %s", i, resp.Status)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}
