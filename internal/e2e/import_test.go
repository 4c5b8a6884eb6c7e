package e2e

import (
	"bytes"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/wharf-registry/wharf/internal/fakehub"
	"github.com/wharf-registry/wharf/internal/testport"
)

var (
	registry2Once sync.Once
	registry2Bin  string
	registry2Err  error
)

// buildRegistry2 builds CNCF Distribution's registry command (v3.1.1, from
// the tools module in internal/tools/registry2), once per test binary.
func buildRegistry2(t *testing.T) string {
	t.Helper()
	registry2Once.Do(func() {
		dir, err := os.MkdirTemp("", "registry2-bin")
		if err != nil {
			registry2Err = err
			return
		}
		registry2Bin = filepath.Join(dir, "registry")
		cmd := exec.Command("go", "build", "-o", registry2Bin, "github.com/distribution/distribution/v3/cmd/registry")
		cmd.Dir = "../tools/registry2"
		if out, err := cmd.CombinedOutput(); err != nil {
			registry2Err = err
			registry2Bin = string(out)
		}
	})
	if registry2Err != nil {
		t.Fatalf("building CNCF Distribution's registry: %v\n%s", registry2Err, registry2Bin)
	}
	return registry2Bin
}

// startRegistry2 runs the real registry:2 on loopback with filesystem
// storage under root and returns its address.
func startRegistry2(t *testing.T, root string) string {
	t.Helper()
	bin := buildRegistry2(t)
	addr := testport.Pick(t)
	cfg := filepath.Join(t.TempDir(), "config.yml")
	yml := "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: " + root +
		"\n  delete:\n    enabled: true\nhttp:\n  addr: " + addr + "\n"
	if err := os.WriteFile(cfg, []byte(yml), 0o644); err != nil {
		t.Fatal(err)
	}
	startDaemon(t, func() error {
		resp, err := http.Get("http://" + addr + "/v2/")
		if err == nil {
			resp.Body.Close()
		}
		return err
	}, bin, "serve", cfg)
	return addr
}

func countFiles(dir string) int {
	n := 0
	filepath.WalkDir(dir, func(_ string, e fs.DirEntry, err error) error {
		if err == nil && !e.IsDir() {
			n++
		}
		return nil
	})
	return n
}

// TestImportFromRegistry2: images pushed with skopeo into the real
// registry:2 (an index, a layer shared by two repositories, a tag moved to
// another image, a single-component name, a repository with many layers)
// are imported into a stopped Wharf's data directory. A corrupted blob file
// is reported and not imported; an import killed with SIGKILL half-way and
// run again ends complete; a third run imports nothing; every image then
// pulls from Wharf with registry:2's digests.
func TestImportFromRegistry2(t *testing.T) {
	requireTool(t, "skopeo")
	hub := fakehub.Start(t)
	alpine := hub.Push("library/alpine", "3", fakehub.ImageSpec{Platforms: []string{"linux/amd64", "linux/arm64"}, Layers: 2, LayerSize: 64 << 10, OCI: true, Seed: 1301})
	appA := hub.Push("library/app", "a", fakehub.ImageSpec{Platforms: []string{hostPlatform}, Layers: 1, LayerSize: 32 << 10, Seed: 1302})
	appB := hub.Push("library/app", "b", fakehub.ImageSpec{Platforms: []string{hostPlatform}, Layers: 1, LayerSize: 32 << 10, Seed: 1303})
	broken := hub.Push("library/broken", "1", fakehub.ImageSpec{Platforms: []string{hostPlatform}, Layers: 1, LayerSize: 32 << 10, Seed: 1304})
	bulk := hub.Push("library/bulk", "1", fakehub.ImageSpec{Platforms: []string{hostPlatform}, Layers: 60, LayerSize: 16 << 10, Seed: 1305})

	root := t.TempDir()
	r2 := startRegistry2(t, root)
	copyTo := func(src, dst string) {
		t.Helper()
		skopeo(t, "copy", "--all", "--preserve-digests", "--src-tls-verify=false", "--dest-tls-verify=false",
			"docker://"+hub.Host()+"/"+src, "docker://"+r2+"/"+dst)
	}
	copyTo("library/alpine:3", "alpine:3")
	copyTo("library/alpine:3", "team/base:1") // every layer shared with alpine
	copyTo("library/app:a", "app:v1")
	copyTo("library/app:b", "app:v1") // the tag moves; a's manifest stays untagged
	copyTo("library/broken:1", "broken:1")
	copyTo("library/bulk:1", "bulk:1")
	copyTo("library/alpine:3", "library/alpine:3") // what a registry:2 pull-through cache holds
	wantIndex := map[string]digest.Digest{"alpine:3": alpine.Index, "team/base:1": alpine.Index, "app:v1": appB.Index, "bulk:1": bulk.Index}
	for ref, d := range wantIndex {
		if got := rawDigest(t, "docker://"+r2+"/"+ref); got != d {
			t.Fatalf("registry:2 holds %s as %s, want %s", ref, got, d)
		}
	}
	// Corrupt broken's layer in registry:2's blob store (same length).
	bad := broken.Layers[hostPlatform][0]
	badFile := filepath.Join(root, "docker/registry/v2/blobs/sha256", bad.Encoded()[:2], bad.Encoded(), "data")
	if fi, err := os.Stat(badFile); err != nil {
		t.Fatal(err)
	} else if err := os.WriteFile(badFile, bytes.Repeat([]byte("x"), int(fi.Size())), 0o644); err != nil {
		t.Fatal(err)
	}

	data := t.TempDir()
	// First run: killed with SIGKILL once some blobs are in.
	cmd := execCommand(wharfBin, "import", "--registry-root", root, "--data", data)
	var out1 syncBuffer
	cmd.Stdout, cmd.Stderr = &out1, &out1
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	killed := false
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline) && !killed; {
		select {
		case err := <-exited:
			t.Fatalf("the import finished (%v) before it could be killed half-way: make it bigger\n%s", err, &out1)
		default:
		}
		if countFiles(filepath.Join(data, "blobs")) >= 10 {
			cmd.Process.Kill()
			<-exited
			killed = true
		}
		time.Sleep(2 * time.Millisecond)
	}
	if !killed {
		t.Fatalf("no blob imported within 60 s\n%s", &out1)
	}
	// Second run: completes, reports the corrupt blob and what needed it.
	out2 := run(t, 2*time.Minute, nil, wharfBin, "import", "--quiet", "--registry-root", root, "--data", data)
	t.Logf("import after a SIGKILL half-way:\n%s", out2)
	if !strings.Contains(out2, "blob broken@"+bad.String()+": its bytes do not match its digest") ||
		!strings.Contains(out2, "manifest broken@"+broken.Manifests[hostPlatform].String()) {
		t.Fatalf("the report does not name the corrupt blob and the manifest that needs it:\n%s", out2)
	}
	if !strings.Contains(out2, "repository library/alpine: Docker Hub's library/ namespace") {
		t.Fatalf("library/alpine was not reported as skipped:\n%s", out2)
	}
	// Third run: nothing left to import.
	out3 := run(t, 2*time.Minute, nil, wharfBin, "import", "--quiet", "--registry-root", root, "--data", data)
	if !strings.Contains(out3, "0 blobs (0 B), 0 manifests, 0 tags") {
		t.Fatalf("a second complete run imported something:\n%s", out3)
	}

	// Every image pulls from Wharf with registry:2's digests.
	w := startWharf(t, data, "--mirror=false")
	for ref, d := range wantIndex {
		if got := rawDigest(t, "docker://"+w.addr+"/"+ref); got != d {
			t.Fatalf("Wharf serves imported %s as %s, want %s", ref, got, d)
		}
		dir := t.TempDir()
		skopeo(t, "copy", "--all", "--src-tls-verify=false", "docker://"+w.addr+"/"+ref, "dir:"+dir)
	}
	for _, img := range []*fakehub.Image{alpine, appB, bulk} {
		for _, d := range img.Blobs {
			resp, err := http.Get(w.url("/v2/" + map[*fakehub.Image]string{alpine: "team/base", appB: "app", bulk: "bulk"}[img] + "/blobs/" + d.String()))
			if err != nil {
				t.Fatal(err)
			}
			got, _ := digest.FromReader(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || got != d {
				t.Fatalf("imported blob %s: %s, %s", d, resp.Status, got)
			}
		}
	}
	// The moved tag's earlier image is there by digest, untagged.
	if resp, err := http.Get(w.url("/v2/app/manifests/" + appA.Index.String())); err != nil || resp.StatusCode != 200 {
		t.Fatalf("app's earlier image by digest: %v %v", err, resp)
	}
	if resp, err := http.Get(w.url("/v2/library/alpine/manifests/3")); err != nil || resp.StatusCode != http.StatusNotFound {
		t.Fatalf("library/alpine was imported: %v %v", err, resp)
	}
	if resp, err := http.Get(w.url("/v2/broken/manifests/1")); err != nil || resp.StatusCode != http.StatusNotFound {
		t.Fatalf("broken:1, whose layer is corrupt, was imported: %v %v", err, resp)
	}
	// Wharf started on registry:2's own directory imports it, and names in
	// its log the corrupt blob it left out.
	w2 := startWharf(t, root, "--mirror=false")
	if !strings.Contains(w2.log.String(), "not imported: blob broken@"+bad.String()+": its bytes do not match") {
		t.Fatalf("the start on registry:2's storage does not name the corrupt blob it skipped:\n%s", w2.log)
	}
	// With the server running, the import refuses the data directory.
	if out, err := runErr(time.Minute, nil, wharfBin, "import", "--registry-root", root, "--data", data); err == nil || !strings.Contains(out, "stop it first") {
		t.Fatalf("import into a running server's data directory: %v\n%s", err, out)
	}
}
