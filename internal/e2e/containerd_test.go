package e2e

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// startContainerd runs a containerd of the test's own (root, state, socket)
// and returns its socket address.
func startContainerd(t *testing.T) string {
	t.Helper()
	requireTool(t, "containerd")
	requireTool(t, "ctr")
	root := shortTempDir(t, "ctd")
	sock := filepath.Join(root, "c.sock")
	cfg := filepath.Join(root, "config.toml")
	// No CRI plugin: this containerd only stores and moves content.
	if err := os.WriteFile(cfg, []byte("version = 2\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	startDaemon(t, func() error {
		_, err := runErr(5*time.Second, nil, "ctr", "-a", sock, "version")
		return err
	}, "containerd", "--config", cfg, "--root", filepath.Join(root, "root"), "--state", filepath.Join(root, "state"), "--address", sock)
	return sock
}

// TestContainerdPullPush pulls a multi-arch image from Wharf with ctr,
// configured the way the README says (certs.d hosts.toml, plain HTTP), and
// pushes it back under another name: the index digest must not change.
func TestContainerdPullPush(t *testing.T) {
	w := startWharf(t, "")
	sock := startContainerd(t)
	layout := t.TempDir()
	want := ociLayout(t, layout, ociTypes)
	pushLayout(t, w, "e2e/ctr", layout, want, "v1")

	hosts := t.TempDir()
	dir := filepath.Join(hosts, w.addr)
	os.MkdirAll(dir, 0o755)
	toml := fmt.Sprintf("server = \"http://%[1]s\"\n\n[host.\"http://%[1]s\"]\n  capabilities = [\"pull\", \"resolve\", \"push\"]\n", w.addr)
	if err := os.WriteFile(filepath.Join(dir, "hosts.toml"), []byte(toml), 0o644); err != nil {
		t.Fatal(err)
	}
	ctr := func(args ...string) string {
		return run(t, 2*time.Minute, nil, "ctr", append([]string{"-a", sock}, args...)...)
	}
	ref := w.addr + "/e2e/ctr:v1"
	ctr("images", "pull", "--all-platforms", "--hosts-dir", hosts, ref)
	if out := ctr("images", "ls", "-q"); !strings.Contains(out, ref) {
		t.Fatalf("ctr images ls after pull: %s", out)
	}
	if out := ctr("images", "ls"); !strings.Contains(out, want.String()) {
		t.Fatalf("pulled image has another digest than %s:\n%s", want, out)
	}
	copyRef := w.addr + "/e2e/ctr-copy:v1"
	ctr("images", "tag", ref, copyRef)
	ctr("images", "push", "--hosts-dir", hosts, copyRef)
	resp, err := http.Head(w.url("/v2/e2e/ctr-copy/manifests/v1"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Docker-Content-Digest") != want.String() {
		t.Fatalf("ctr push: %s, digest %s want %s", resp.Status, resp.Header.Get("Docker-Content-Digest"), want)
	}
}
