package e2e

import (
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/wharf-registry/wharf/internal/fakehub"
)

// TestRegistry2StorageImportedAtStart: Wharf started on a directory the
// real CNCF Distribution v3.1.1 wrote (skopeo pushes: a two-platform index
// under two names, a moved tag, a repository with many layers, and
// library/alpine as a registry:2 pull-through cache keeps it) imports it
// before it listens. As soon as the server answers, every image pulls with
// registry:2's digests; the blobs are registry:2's own files (hard links:
// no second copy); the log says what was imported and how long it took,
// and names what was skipped. The second start imports nothing.
func TestRegistry2StorageImportedAtStart(t *testing.T) {
	requireTool(t, "skopeo")
	hub := fakehub.Start(t)
	alpine := hub.Push("library/alpine", "3", fakehub.ImageSpec{Platforms: []string{"linux/amd64", "linux/arm64"}, Layers: 2, LayerSize: 64 << 10, OCI: true, Seed: 1401})
	appA := hub.Push("library/app", "a", fakehub.ImageSpec{Platforms: []string{hostPlatform}, Layers: 1, LayerSize: 32 << 10, Seed: 1402})
	appB := hub.Push("library/app", "b", fakehub.ImageSpec{Platforms: []string{hostPlatform}, Layers: 1, LayerSize: 32 << 10, Seed: 1403})
	bulk := hub.Push("library/bulk", "1", fakehub.ImageSpec{Platforms: []string{hostPlatform}, Layers: 20, LayerSize: 16 << 10, Seed: 1404})

	root := t.TempDir()
	r2 := startRegistry2(t, root)
	for src, dst := range map[string][]string{
		"library/alpine:3": {"alpine:3", "team/base:1", "library/alpine:3"},
		"library/app:a":    {"app:v1"},
		"library/bulk:1":   {"bulk:1"},
	} {
		for _, d := range dst {
			skopeo(t, "copy", "--all", "--preserve-digests", "--src-tls-verify=false", "--dest-tls-verify=false",
				"docker://"+hub.Host()+"/"+src, "docker://"+r2+"/"+d)
		}
	}
	skopeo(t, "copy", "--all", "--preserve-digests", "--src-tls-verify=false", "--dest-tls-verify=false",
		"docker://"+hub.Host()+"/library/app:b", "docker://"+r2+"/app:v1") // the tag moves
	want := map[string]digest.Digest{"alpine:3": alpine.Index, "team/base:1": alpine.Index, "app:v1": appB.Index, "bulk:1": bulk.Index}

	w := startWharf(t, root, "--mirror=false")
	for ref, d := range want {
		if got := rawDigest(t, "docker://"+w.addr+"/"+ref); got != d {
			t.Fatalf("right after the start Wharf serves %s as %s; registry:2 held %s\n%s", ref, got, d, w.log)
		}
		skopeo(t, "copy", "--all", "--src-tls-verify=false", "docker://"+w.addr+"/"+ref, "dir:"+t.TempDir())
	}
	if resp, err := http.Get(w.url("/v2/app/manifests/" + appA.Index.String())); err != nil || resp.StatusCode != 200 {
		t.Fatalf("app's earlier image by digest: %v %v", err, resp)
	}
	if resp, err := http.Get(w.url("/v2/library/alpine/manifests/3")); err != nil || resp.StatusCode != http.StatusNotFound {
		t.Fatalf("library/alpine was imported: %v %v", err, resp)
	}
	// Taken in place: each blob is registry:2's file under another name.
	for _, d := range append(append([]digest.Digest{}, alpine.Blobs...), bulk.Blobs...) {
		r2file, err := os.Stat(filepath.Join(root, "docker/registry/v2/blobs/sha256", d.Encoded()[:2], d.Encoded(), "data"))
		if err != nil {
			t.Fatal(err)
		}
		own, err := os.Stat(filepath.Join(root, "blobs/sha256", d.Encoded()[:2], d.Encoded()))
		if err != nil || !os.SameFile(r2file, own) {
			t.Fatalf("blob %s is not registry:2's file taken in place: %v", d, err)
		}
	}
	log := w.log.String()
	line := regexp.MustCompile(`imported registry:2's storage[^\n]*repositories=(\d+) blobs=(\d+) files_in_place=(\d+) files_copied=(\d+)[^\n]*took=(\S+)`).FindStringSubmatch(log)
	if line == nil || line[1] != "4" || line[3] == "0" || line[4] != "0" {
		t.Fatalf("the log does not say what was imported, in place, and how long it took:\n%s", log)
	}
	t.Logf("first start on registry:2's directory: %s repositories, %s blobs (%s files in place, none copied), took %s", line[1], line[2], line[3], line[5])
	if !strings.Contains(log, "not imported: repository library/alpine") {
		t.Fatalf("the log does not name the skipped library/alpine:\n%s", log)
	}
	if _, err := os.Stat(filepath.Join(root, "registry2-imported")); err != nil {
		t.Fatalf("no record of the import: %v", err)
	}
	if err := w.stop(t); err != nil {
		t.Fatalf("stop: %v\n%s", err, w.log)
	}

	w2 := startWharf(t, root, "--mirror=false")
	if log := w2.log.String(); strings.Contains(log, "imported registry:2's storage:") || strings.Contains(log, "importing") ||
		!strings.Contains(log, "nothing to import") {
		t.Fatalf("the second start imported again (or did not say it had nothing to do):\n%s", log)
	}
	if got := rawDigest(t, "docker://"+w2.addr+"/app:v1"); got != appB.Index {
		t.Fatalf("after the second start app:v1 is %s, want %s", got, appB.Index)
	}
}
