package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/wharf-registry/wharf/internal/fakehub"
)

var hostPlatform = "linux/" + runtime.GOARCH

// TestDockerRegistryMirror: a real dockerd whose daemon.json names Wharf in
// registry-mirrors pulls a multi-layer, multi-arch image that Wharf
// fetches from the fake hub; the image ID equals a direct pull's. A second
// pull after rmi costs the hub no blob GET.
func TestDockerRegistryMirror(t *testing.T) {
	hub := fakehub.Start(t)
	img := hub.Push("library/alpine", "3.20", fakehub.ImageSpec{Platforms: []string{"linux/amd64", "linux/arm64"}, Layers: 3, LayerSize: 512 << 10, Seed: 21})
	w := startWharf(t, "", "--upstream", "docker.io="+hub.URL)
	d := startDockerdWith(t, map[string]any{"registry-mirrors": []string{"http://" + w.addr}})

	d.docker(t, "pull", "alpine:3.20")
	viaMirror := d.docker(t, "image", "inspect", "--format", "{{.Id}}", "alpine:3.20")
	if want := img.Configs[hostPlatform].String(); viaMirror != want {
		t.Fatalf("image ID through the mirror %s, want %s", viaMirror, want)
	}
	if n := hub.Count("GET blob"); n != 4 {
		t.Fatalf("hub served %d blob GETs, want 4 (config and 3 layers of %s)", n, hostPlatform)
	}
	direct := hub.Host() + "/library/alpine:3.20"
	d.docker(t, "pull", direct)
	if got := d.docker(t, "image", "inspect", "--format", "{{.Id}}", direct); got != viaMirror {
		t.Fatalf("direct pull gives image ID %s, mirror %s", got, viaMirror)
	}
	d.docker(t, "rmi", "alpine:3.20", direct)
	hub.ResetCounts()
	d.docker(t, "pull", "alpine:3.20")
	if n := hub.Count("GET blob"); n != 0 {
		t.Fatalf("second pull through the mirror cost %d upstream blob GETs", n)
	}
}

// TestContainerdNamespaceMirror: ctr with a hosts.toml that makes Wharf
// the mirror of a second registry (requests carry ?ns=ghcr.io).
func TestContainerdNamespaceMirror(t *testing.T) {
	hub := fakehub.Start(t)
	ghcr := fakehub.Start(t)
	img := ghcr.Push("org/app", "v1", fakehub.ImageSpec{Platforms: []string{"linux/amd64", "linux/arm64"}, Layers: 2, LayerSize: 256 << 10, OCI: true, Seed: 22})
	w := startWharf(t, "", "--upstream", "docker.io="+hub.URL, "--upstream", "ghcr.io="+ghcr.URL)
	sock := startContainerd(t)
	hosts := t.TempDir()
	os.MkdirAll(filepath.Join(hosts, "ghcr.io"), 0o755)
	toml := "server = \"https://ghcr.io\"\n\n[host.\"http://" + w.addr + "\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
	if err := os.WriteFile(filepath.Join(hosts, "ghcr.io", "hosts.toml"), []byte(toml), 0o644); err != nil {
		t.Fatal(err)
	}
	run(t, 2*time.Minute, nil, "ctr", "-a", sock, "images", "pull", "--hosts-dir", hosts, "ghcr.io/org/app:v1")
	if out := run(t, time.Minute, nil, "ctr", "-a", sock, "images", "ls"); !strings.Contains(out, img.Index.String()) {
		t.Fatalf("ctr pulled another digest than %s:\n%s", img.Index, out)
	}
	if ghcr.Count("GET blob") == 0 || hub.Count("GET manifest")+hub.Count("HEAD manifest") != 0 {
		t.Fatalf("ghcr.io content: %d blob GETs from ghcr, %d manifest requests to docker.io", ghcr.Count("GET blob"), hub.Count("GET manifest"))
	}
}

// TestSkopeoPathPrefix: a plain client reaches another registry through
// Wharf by naming it as the first path component.
func TestSkopeoPathPrefix(t *testing.T) {
	requireTool(t, "skopeo")
	ghcr := fakehub.Start(t)
	img := ghcr.Push("org/tool", "2", fakehub.ImageSpec{Platforms: []string{"linux/amd64", "linux/arm64"}, Layers: 2, LayerSize: 128 << 10, OCI: true, Seed: 23})
	w := startWharf(t, "", "--upstream", "ghcr.io="+ghcr.URL)
	ref := "docker://" + w.addr + "/ghcr.io/org/tool:2"
	if got := rawDigest(t, ref); got != img.Index {
		t.Fatalf("index through the path prefix %s, want %s", got, img.Index)
	}
	out := t.TempDir()
	skopeo(t, "copy", "--all", "--preserve-digests", "--src-tls-verify=false", ref, "oci:"+out+":2")
	var index struct{ Manifests []desc }
	b, _ := os.ReadFile(filepath.Join(out, "index.json"))
	if err := json.Unmarshal(b, &index); err != nil || len(index.Manifests) != 1 || index.Manifests[0].Digest != img.Index {
		t.Fatalf("copied layout: %s (%v)", b, err)
	}
	for _, d := range img.Blobs {
		checkFileDigest(t, filepath.Join(out, "blobs", "sha256", d.Encoded()), d.Encoded())
	}
}

// TestEdgeChainsToCore: an edge Wharf whose docker.io upstream is a core
// Wharf; a pull through the edge fills both, and the hub serves each blob
// once.
func TestEdgeChainsToCore(t *testing.T) {
	requireTool(t, "skopeo")
	hub := fakehub.Start(t)
	img := hub.Push("library/nginx", "1.27", fakehub.ImageSpec{Platforms: []string{"linux/amd64", "linux/arm64"}, Layers: 2, LayerSize: 128 << 10, OCI: true, Seed: 24})
	core := startWharf(t, "", "--upstream", "docker.io="+hub.URL)
	edge := startWharf(t, "", "--upstream", "docker.io=http://"+core.addr)
	for i, w := range []*wharfProc{edge, core} {
		out := t.TempDir()
		skopeo(t, "copy", "--all", "--preserve-digests", "--src-tls-verify=false", "docker://"+w.addr+"/library/nginx:1.27", "oci:"+out+":1")
		for _, d := range img.Blobs {
			checkFileDigest(t, filepath.Join(out, "blobs", "sha256", d.Encoded()), d.Encoded())
		}
		if i == 0 {
			hub.ResetCounts() // the core is warm now: the second copy must not reach the hub
		}
	}
	if n := hub.Count("GET blob"); n != 0 {
		t.Fatalf("pull from the warm core cost the hub %d blob GETs", n)
	}
}

// TestPrefetchCommand: `wharf prefetch` warms the cache so that pulls work
// with the upstream gone.
func TestPrefetchCommand(t *testing.T) {
	hub := fakehub.Start(t)
	img := hub.Push("library/redis", "7", fakehub.ImageSpec{Platforms: []string{"linux/amd64", "linux/arm64"}, Layers: 2, LayerSize: 256 << 10, OCI: true, Seed: 25})
	w := startWharf(t, "", "--upstream", "docker.io="+hub.URL)
	list := filepath.Join(t.TempDir(), "images.txt")
	os.WriteFile(list, []byte("# warm these\nredis:7\n"), 0o644)
	out := run(t, 2*time.Minute, nil, wharfBin, "prefetch", "--server", "http://"+w.addr, "--platform", "all", "--from", list)
	if !strings.Contains(out, "redis:7: cached 3 manifests, 6 blobs") {
		t.Fatalf("prefetch output:\n%s", out)
	}
	if n := hub.Count("GET blob"); n != len(img.Blobs) {
		t.Fatalf("prefetch fetched %d blobs from the hub, want %d", n, len(img.Blobs))
	}
	hub.Close()
	requireTool(t, "skopeo")
	dst := t.TempDir()
	skopeo(t, "copy", "--all", "--preserve-digests", "--src-tls-verify=false", "docker://"+w.addr+"/redis:7", "oci:"+dst+":7")
	if _, err := runErr(time.Minute, nil, wharfBin, "prefetch", "--server", "http://"+w.addr, "nosuch:1"); err == nil {
		t.Fatal("prefetch of an image the upstream cannot give succeeded")
	}
}
