package e2e

import (
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestImmutableTags: with `immutable: [{repos: ["team/**"], tags: ["v*"]}]`
// real dockerd pushes team/app:v1, is refused (with the rule named) when
// it pushes another image as v1, pushes the same image again, and moves a
// tag the rule leaves out. Deleting v1, or the manifest it names, needs
// the admin action: alice (pull, push, delete) gets 403 through the
// registry and the admin API, root deletes it.
func TestImmutableTags(t *testing.T) {
	requireTool(t, "dockerd")
	dir := t.TempDir()
	config := filepath.Join(dir, "wharf.yaml")
	os.WriteFile(config, []byte(`rules:
  - repos: ["**"]
    who: [root]
    actions: [pull, push, delete, admin]
  - repos: ["team/**"]
    who: [alice]
    actions: [pull, push, delete]
immutable:
  - repos: ["team/**"]
    tags: ["v*"]
`), 0o644)
	htpasswd, _ := makeUsers(t, map[string]string{"root": "root-pw", "alice": "alice-pw"}, "")
	w := startWharf(t, "", "--config", config, "--htpasswd", htpasswd, "--allow-delete")
	d := startDockerdWith(t, map[string]any{"insecure-registries": []string{w.addr}})
	dockerLogin(t, d, w.addr, "alice", "alice-pw")

	v1 := w.addr + "/team/app:v1"
	d.buildImage(t, v1, "scratch", "one.bin")
	d.docker(t, "push", v1)
	digest1 := getDigest(t, w, "team/app", "v1", "alice", "alice-pw")

	d.buildImage(t, v1, "scratch", "two.bin") // another image under the same tag
	out, err := runErr(2*time.Minute, d.env(), "docker", "push", v1)
	if err == nil || !strings.Contains(out, "immutable") || !strings.Contains(out, "tags v*") {
		t.Fatalf("pushing another image as v1: %v\n%s", err, out)
	}
	if got := getDigest(t, w, "team/app", "v1", "alice", "alice-pw"); got != digest1 {
		t.Fatalf("v1 moved to %s", got)
	}
	// The same image again is no move.
	d.docker(t, "tag", v1, w.addr+"/team/app:dev")
	d.docker(t, "push", w.addr+"/team/app:dev")
	d.docker(t, "rmi", v1) // the refused image; pulling v1 brings back the pushed one
	d.docker(t, "pull", v1)
	d.docker(t, "push", v1)
	// dev is not immutable: it moves.
	d.buildImage(t, w.addr+"/team/app:dev", "scratch", "three.bin")
	d.docker(t, "push", w.addr+"/team/app:dev")

	// Deletes: alice may delete dev, not v1 nor its manifest; root may.
	for _, ref := range []string{"v1", digest1} {
		if got := deleteAs(t, w, "/v2/team/app/manifests/"+ref, "alice", "alice-pw"); got != http.StatusForbidden {
			t.Fatalf("alice deletes %s: %d, want 403", ref, got)
		}
	}
	if got := deleteAs(t, w, "/api/v1/repositories/team/app/tags/v1", "alice", "alice-pw"); got != http.StatusForbidden {
		t.Fatalf("alice deletes v1 through the admin API: %d, want 403", got)
	}
	if got := deleteAs(t, w, "/v2/team/app/manifests/dev", "alice", "alice-pw"); got != http.StatusAccepted {
		t.Fatalf("alice deletes dev: %d, want 202", got)
	}
	if got := deleteAs(t, w, "/v2/team/app/manifests/v1", "root", "root-pw"); got != http.StatusAccepted {
		t.Fatalf("root deletes v1: %d, want 202", got)
	}
}

func deleteAs(t *testing.T, w *wharfProc, path, user, pass string) int {
	t.Helper()
	return apiDo(t, w, http.MethodDelete, path, user, pass)
}

// getDigest is the digest tag of repo names (HEAD, as user).
func getDigest(t *testing.T, w *wharfProc, repo, tag, user, pass string) string {
	t.Helper()
	req, _ := http.NewRequest(http.MethodHead, w.url("/v2/"+repo+"/manifests/"+tag), nil)
	req.Header.Set("Accept", "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json")
	req.SetBasicAuth(user, pass)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("HEAD %s:%s: %s", repo, tag, resp.Status)
	}
	return resp.Header.Get("Docker-Content-Digest")
}
