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

// TestRetentionCommand: `wharf retention --dry-run` against a running
// server lists what the config file's retention policy would remove and
// removes nothing; `wharf retention` removes it (audited), and the blobs
// only those tags held leave the data directory within seconds; the
// scheduler applies the policy by itself to tags pushed later; wharf du
// shows the namespace quota's usage.
func TestRetentionCommand(t *testing.T) {
	dir := t.TempDir()
	config := filepath.Join(dir, "wharf.yaml")
	os.WriteFile(config, []byte(`rules:
  - repos: ["**"]
    who: [root]
    actions: [pull, push, delete, admin]
retention-policies:
  - repos: ["team/**"]
    keep-last: 2
    keep-tags: ["release-*"]
quotas:
  - repos: ["team/**"]
    max: 10M
`), 0o644)
	htpasswd, _ := makeUsers(t, map[string]string{"root": "root-pw"}, "")
	w := startWharf(t, "", "--config", config, "--htpasswd", htpasswd, "--retention-policies-interval", "0")
	for i, tag := range []string{"release-1", "b1", "b2", "b3", "b4"} {
		layer := make([]byte, 256<<10)
		for j := range layer {
			layer[j] = byte(i*31 + j%251)
		}
		if _, err := pushRawAs(w, "team/app", tag, "root", "root-pw", layer); err != nil {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond) // distinct push times
	}
	env := []string{"WHARF_PASSWORD=root-pw"}
	out := run(t, time.Minute, env, wharfBin, "retention", "--dry-run", "--server", w.url(""), "--user", "root")
	if !strings.Contains(out, "would remove 2 tags (kept 3)") || !strings.Contains(out, "team/app    b1") || !strings.Contains(out, "team/app    b2") {
		t.Fatalf("wharf retention --dry-run:\n%s", out)
	}
	if got := len(listTags(t, w, "team/app")); got != 5 {
		t.Fatalf("the dry run removed tags: %d left", got)
	}
	before := dirBytes(t, filepath.Join(w.data, "blobs"))
	out = run(t, time.Minute, env, wharfBin, "retention", "--server", w.url(""), "--user", "root")
	if !strings.Contains(out, "removed 2 tags (kept 3)") {
		t.Fatalf("wharf retention:\n%s", out)
	}
	if tags := listTags(t, w, "team/app"); strings.Join(tags, ",") != "b3,b4,release-1" {
		t.Fatalf("tags after the run: %v", tags)
	}
	if out := run(t, time.Minute, env, wharfBin, "du", "--server", w.url(""), "--user", "root"); !strings.Contains(out, "quota 1 (repos team/**, max 10M): ") {
		t.Fatalf("wharf du does not show the quota:\n%s", out)
	}
	if !strings.Contains(w.log.String(), "retention-delete") {
		t.Fatalf("the removals were not audited:\n%s", w.log)
	}
	deadline := time.Now().Add(30 * time.Second)
	for dirBytes(t, filepath.Join(w.data, "blobs")) > before-2*(256<<10) {
		if time.Now().After(deadline) {
			t.Fatalf("the data directory did not shrink by the removed layers: %d → %d bytes", before, dirBytes(t, filepath.Join(w.data, "blobs")))
		}
		time.Sleep(200 * time.Millisecond)
	}
	w.stop(t)

	// The scheduler applies it by itself.
	w2 := startWharf(t, w.data, "--config", config, "--htpasswd", htpasswd, "--retention-policies-interval", "1s")
	if _, err := pushRawAs(w2, "team/app", "b5", "root", "root-pw", []byte("b5's layer")); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(20 * time.Second)
	for strings.Join(listTags(t, w2, "team/app"), ",") != "b4,b5,release-1" {
		if time.Now().After(deadline) {
			t.Fatalf("the scheduler did not apply the policy: %v", listTags(t, w2, "team/app"))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func listTags(t *testing.T, w *wharfProc, repo string) []string {
	t.Helper()
	var list struct{ Tags []string }
	apiGet(t, w, "/v2/"+repo+"/tags/list", "root", "root-pw", &list)
	return list.Tags
}

func dirBytes(t *testing.T, dir string) int64 {
	t.Helper()
	var n int64
	filepath.Walk(dir, func(_ string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() {
			n += fi.Size()
		}
		return nil
	})
	return n
}
