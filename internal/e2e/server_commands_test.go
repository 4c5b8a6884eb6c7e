package e2e

import (
	"bytes"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

// TestServerCommands: `wharf ls`, `rm`, `gc` and `du` against a running
// server's admin API with credentials: a tag removed by `wharf rm` is
// freed by `wharf gc --server` at once (no grace), the server keeps
// serving meanwhile, and a user without the right, or no user, is refused
// with the reason.
func TestServerCommands(t *testing.T) {
	users, config := makeUsers(t, map[string]string{"root": "root-pw", "alice": "alice-pw"},
		"rules:\n  - repos: [\"**\"]\n    who: [root]\n    actions: [pull, push, delete, admin]\n"+
			"  - repos: [\"team/**\"]\n    who: [everyone]\n    actions: [pull, push]\n")
	w := startWharf(t, "", "--mirror=false", "--htpasswd", users, "--config", config)
	layer := bytes.Repeat([]byte("removed by wharf rm "), 30000)
	if _, err := pushRaw(w, "team/app", "v1", layer); err != nil {
		t.Fatal(err)
	}
	if _, err := pushRaw(w, "team/app", "keep", []byte("kept layer")); err != nil {
		t.Fatal(err)
	}
	wharf := func(password string, args ...string) (string, error) {
		env := []string{"WHARF_SERVER=http://" + w.addr}
		if password != "" {
			env = append(env, "WHARF_PASSWORD="+password)
		}
		return runErr(time.Minute, env, wharfBin, args...)
	}
	out, err := wharf("root-pw", "ls", "--user", "root")
	if err != nil || !strings.Contains(out, "team/app") || !strings.Contains(out, "pushed") {
		t.Fatalf("wharf ls: %v\n%s", err, out)
	}
	for range 2 { // two pulls of keep
		resp, err := http.Get(w.url("/v2/team/app/manifests/keep"))
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("GET keep: %v %v", resp, err)
		}
		resp.Body.Close()
	}
	out, err = wharf("root-pw", "ls", "--user", "root", "team/app")
	if err != nil || !strings.Contains(out, "v1") || !strings.Contains(out, "keep") || !strings.Contains(out, "sha256:") {
		t.Fatalf("wharf ls team/app: %v\n%s", err, out)
	}
	if !regexp.MustCompile(`(?m)^keep .* 2 +20\d\d-\d\d-\d\dT[^ ]+Z$`).MatchString(out) || !regexp.MustCompile(`(?m)^v1 .* 0 +-$`).MatchString(out) {
		t.Fatalf("wharf ls team/app: pulls and last pull of keep (2) and v1 (none):\n%s", out)
	}
	if out, err := wharf("", "rm", "team/app:v1"); err == nil || !strings.Contains(out, "give --user") {
		t.Fatalf("wharf rm without a user: %v\n%s", err, out)
	}
	if out, err := wharf("alice-pw", "rm", "--user", "alice", "team/app:v1"); err == nil || !strings.Contains(out, "alice may not delete") {
		t.Fatalf("wharf rm as alice: %v\n%s", err, out)
	}
	if out, err := wharf("root-pw", "rm", "--user", "root", "team/app:v1"); err != nil || !strings.Contains(out, "deleted team/app:v1") {
		t.Fatalf("wharf rm: %v\n%s", err, out)
	}
	out, err = wharf("root-pw", "gc", "--user", "root", "--dry-run")
	if err != nil || !strings.Contains(out, "would free") || !strings.Contains(out, digest.FromBytes(layer).String()) {
		t.Fatalf("wharf gc --dry-run: %v\n%s", err, out)
	}
	out, err = wharf("root-pw", "gc", "--user", "root")
	if err != nil || !strings.Contains(out, "freed ") || !strings.Contains(out, " 3 blobs") {
		t.Fatalf("wharf gc: %v\n%s", err, out)
	}
	if st := blobStatus(t, w, "team/app", digest.FromBytes(layer)); st != http.StatusNotFound {
		t.Fatalf("the freed layer answers %d", st)
	}
	// Without a gc: the server collects what a deliberate delete released
	// within about 10 s (no grace).
	other := bytes.Repeat([]byte("collected by the server itself "), 20000)
	if _, err := pushRaw(w, "team/other", "v1", other); err != nil {
		t.Fatal(err)
	}
	if out, err := wharf("root-pw", "rm", "--user", "root", "team/other:v1"); err != nil {
		t.Fatalf("wharf rm team/other:v1: %v\n%s", err, out)
	}
	deleted := time.Now()
	for blobStatus(t, w, "team/other", digest.FromBytes(other)) != http.StatusNotFound {
		if time.Since(deleted) > 25*time.Second {
			t.Fatal("a deleted image's layer is still stored 25 s after the delete")
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("the server freed a deleted image's layer %v after the delete", time.Since(deleted).Round(100*time.Millisecond))
	out, err = wharf("root-pw", "du", "--user", "root")
	if err != nil || !strings.Contains(out, "team/app") || !strings.Contains(out, "blob store") {
		t.Fatalf("wharf du --server: %v\n%s", err, out)
	}
}

// blobStatus is the status of a GET of blob d of repo, as root.
func blobStatus(t *testing.T, w *wharfProc, repo string, d digest.Digest) int {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, w.url("/v2/"+repo+"/blobs/"+d.String()), nil)
	req.SetBasicAuth("root", "root-pw")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}
