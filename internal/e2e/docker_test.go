package e2e

import (
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// dockerd is a daemon started by the test with its own root, exec root,
// socket and pidfile.
type dockerd struct {
	host   string // DOCKER_HOST value
	config string // DOCKER_CONFIG: the client's own logins
}

func startDockerd(t *testing.T) *dockerd {
	t.Helper()
	return startDockerdWith(t, map[string]any{})
}

// startDockerdWith starts dockerd with the given daemon.json settings.
func startDockerdWith(t *testing.T, daemonJSON map[string]any) *dockerd {
	t.Helper()
	requireTool(t, "dockerd")
	requireTool(t, "docker")
	root := shortTempDir(t, "wd")
	cfg, _ := json.Marshal(daemonJSON)
	if err := os.WriteFile(filepath.Join(root, "daemon.json"), cfg, 0o644); err != nil {
		t.Fatal(err)
	}
	d := &dockerd{host: "unix://" + filepath.Join(root, "docker.sock"), config: filepath.Join(root, "client")}
	startDaemon(t, func() error {
		_, err := runErr(10*time.Second, d.env(), "docker", "version")
		return err
	}, "dockerd",
		"--data-root", filepath.Join(root, "data"), "--exec-root", filepath.Join(root, "exec"),
		"--pidfile", filepath.Join(root, "docker.pid"), "-H", d.host,
		"--config-file", filepath.Join(root, "daemon.json"),
		"--storage-driver", "vfs", "--iptables=false", "--bridge=none", "--ip-masq=false")
	return d
}

func (d *dockerd) env() []string {
	return []string{"DOCKER_HOST=" + d.host, "DOCKER_BUILDKIT=0", "DOCKER_CONFIG=" + d.config}
}

func (d *dockerd) docker(t *testing.T, args ...string) string {
	t.Helper()
	return strings.TrimSpace(run(t, 5*time.Minute, d.env(), "docker", args...))
}

// buildImage builds, with no network, an image FROM base (or scratch)
// with one layer per file of random content.
func (d *dockerd) buildImage(t *testing.T, tag, base string, files ...string) {
	t.Helper()
	ctx := t.TempDir()
	df := "FROM " + base + "\n"
	for _, f := range files {
		b := make([]byte, 256<<10)
		rand.Read(b)
		if err := os.WriteFile(filepath.Join(ctx, f), b, 0o644); err != nil {
			t.Fatal(err)
		}
		df += fmt.Sprintf("COPY %s /%s\n", f, f)
	}
	if err := os.WriteFile(filepath.Join(ctx, "Dockerfile"), []byte(df), 0o644); err != nil {
		t.Fatal(err)
	}
	d.docker(t, "build", "-q", "-t", tag, ctx)
}

// roundTrip pushes ref, removes it locally, pulls it back and checks the
// image ID is unchanged.
func (d *dockerd) roundTrip(t *testing.T, ref string) {
	t.Helper()
	id := d.docker(t, "image", "inspect", "--format", "{{.Id}}", ref)
	d.docker(t, "push", ref)
	d.docker(t, "rmi", ref)
	if _, err := runErr(time.Minute, d.env(), "docker", "image", "inspect", ref); err == nil {
		t.Fatal("image still present after rmi")
	}
	d.docker(t, "pull", ref)
	if got := d.docker(t, "image", "inspect", "--format", "{{.Id}}", ref); got != id {
		t.Fatalf("pulled image ID %s, pushed %s", got, id)
	}
}

// TestDockerPushPull pushes a multi-layer image from a real dockerd to
// Wharf, removes it, pulls it back and compares image IDs; a second image
// sharing three layers must not upload them again.
func TestDockerPushPull(t *testing.T) {
	w := startWharf(t, "")
	d := startDockerd(t)
	ref := w.addr + "/e2e/app:v1"
	d.buildImage(t, ref, "scratch", "a.bin", "b.bin", "c.bin")
	d.roundTrip(t, ref)
	if n := len(strings.Fields(d.docker(t, "image", "inspect", "--format", "{{range .RootFS.Layers}}{{.}} {{end}}", ref))); n != 3 {
		t.Fatalf("pulled image has %d layers, want 3", n)
	}

	ref2 := w.addr + "/e2e/other:v1"
	d.buildImage(t, ref2, ref, "d.bin")
	out := d.docker(t, "push", ref2)
	pushed := strings.Count(out, ": Pushed")
	reused := strings.Count(out, ": Mounted from e2e/app") + strings.Count(out, ": Layer already exists")
	if pushed != 1 || reused != 3 {
		t.Fatalf("second push uploaded %d layers and reused %d, want 1 and 3:\n%s", pushed, reused, out)
	}

	resp, err := http.Get(w.url("/v2/_catalog"))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body := readAll(t, resp)
	if !strings.Contains(body, `"e2e/app"`) || !strings.Contains(body, `"e2e/other"`) {
		t.Fatalf("catalog %s lacks the pushed repositories", body)
	}
}
