package e2e

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/rand"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

type mediaTypes struct{ index, manifest, config, layer string }

var (
	ociTypes = mediaTypes{
		index: "application/vnd.oci.image.index.v1+json", manifest: "application/vnd.oci.image.manifest.v1+json",
		config: "application/vnd.oci.image.config.v1+json", layer: "application/vnd.oci.image.layer.v1.tar+gzip",
	}
	dockerTypes = mediaTypes{
		index: "application/vnd.docker.distribution.manifest.list.v2+json", manifest: "application/vnd.docker.distribution.manifest.v2+json",
		config: "application/vnd.docker.container.image.v1+json", layer: "application/vnd.docker.image.rootfs.diff.tar.gzip",
	}
)

type desc struct {
	MediaType   string            `json:"mediaType"`
	Digest      digest.Digest     `json:"digest"`
	Size        int64             `json:"size"`
	Platform    map[string]string `json:"platform,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

// ociLayout writes an OCI image layout holding one multi-platform index
// tagged "v1" and returns the index digest.
func ociLayout(t *testing.T, dir string, mt mediaTypes) digest.Digest {
	t.Helper()
	put := func(mediaType string, b []byte) desc {
		d := digest.FromBytes(b)
		p := filepath.Join(dir, "blobs", "sha256", d.Encoded())
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return desc{MediaType: mediaType, Digest: d, Size: int64(len(b))}
	}
	mustJSON := func(v any) []byte {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	var children []desc
	for _, arch := range []string{"amd64", "arm64"} {
		tarball, gz := randomLayer(t)
		layer := put(mt.layer, gz)
		cfg := put(mt.config, mustJSON(map[string]any{
			"architecture": arch, "os": "linux", "config": map[string]any{},
			"rootfs": map[string]any{"type": "layers", "diff_ids": []digest.Digest{digest.FromBytes(tarball)}},
		}))
		m := put(mt.manifest, mustJSON(map[string]any{
			"schemaVersion": 2, "mediaType": mt.manifest, "config": cfg, "layers": []desc{layer},
		}))
		m.Platform = map[string]string{"architecture": arch, "os": "linux"}
		children = append(children, m)
	}
	idx := put(mt.index, mustJSON(map[string]any{"schemaVersion": 2, "mediaType": mt.index, "manifests": children}))
	idx.Annotations = map[string]string{"org.opencontainers.image.ref.name": "v1"}
	if err := os.WriteFile(filepath.Join(dir, "oci-layout"), []byte(`{"imageLayoutVersion":"1.0.0"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "index.json"), mustJSON(map[string]any{"schemaVersion": 2, "manifests": []desc{idx}}), 0o644); err != nil {
		t.Fatal(err)
	}
	return idx.Digest
}

// randomLayer returns a tar with one random file, and its gzip.
func randomLayer(t *testing.T) (tarball, gz []byte) {
	t.Helper()
	content := make([]byte, 64<<10)
	rand.Read(content)
	var tb bytes.Buffer
	tw := tar.NewWriter(&tb)
	tw.WriteHeader(&tar.Header{Name: "data.bin", Mode: 0o644, Size: int64(len(content)), ModTime: time.Unix(0, 0)})
	tw.Write(content)
	tw.Close()
	var zb bytes.Buffer
	zw := gzip.NewWriter(&zb)
	zw.Write(tb.Bytes())
	zw.Close()
	return tb.Bytes(), zb.Bytes()
}

// TestSkopeoCopyMultiArch copies a multi-arch OCI index and a Docker
// manifest list into Wharf with skopeo, then registry to registry and back
// out to a layout; every digest must stay the same.
func TestSkopeoCopyMultiArch(t *testing.T) {
	requireTool(t, "skopeo")
	w := startWharf(t, "")
	for _, tc := range []struct {
		name string
		mt   mediaTypes
	}{{"oci-index", ociTypes}, {"docker-list", dockerTypes}} {
		t.Run(tc.name, func(t *testing.T) {
			src := t.TempDir()
			want := ociLayout(t, src, tc.mt)
			from := "oci:" + src + ":v1"
			if tc.mt == dockerTypes {
				// skopeo's oci: transport resolves only OCI descriptors, so
				// the list is seeded over HTTP, copied out of Wharf into a
				// dir: layout by skopeo, and pushed back in from there.
				pushLayout(t, w, "e2e/seed", src, want, "v1")
				seed := t.TempDir()
				skopeo(t, "copy", "--all", "--preserve-digests", "--src-tls-verify=false", "docker://"+w.addr+"/e2e/seed:v1", "dir:"+seed)
				from = "dir:" + seed
			}
			dst := "docker://" + w.addr + "/e2e/" + tc.name + ":v1"
			skopeo(t, "copy", "--all", "--preserve-digests", "--dest-tls-verify=false", from, dst)
			if got := rawDigest(t, dst); got != want {
				t.Fatalf("index digest in Wharf %s, pushed %s", got, want)
			}
			again := "docker://" + w.addr + "/e2e/" + tc.name + "-copy:v1"
			skopeo(t, "copy", "--all", "--preserve-digests", "--src-tls-verify=false", "--dest-tls-verify=false", dst, again)
			if got := rawDigest(t, again); got != want {
				t.Fatalf("index digest after registry-to-registry copy %s, want %s", got, want)
			}
			out := t.TempDir()
			if tc.mt == dockerTypes {
				skopeo(t, "copy", "--all", "--preserve-digests", "--src-tls-verify=false", again, "dir:"+out)
				checkDirLayout(t, out, src, want)
			} else {
				skopeo(t, "copy", "--all", "--preserve-digests", "--src-tls-verify=false", again, "oci:"+out+":v1")
				checkOCILayout(t, out, src, want)
			}
		})
	}
}

func skopeo(t *testing.T, args ...string) string {
	t.Helper()
	return run(t, 2*time.Minute, nil, "skopeo", append([]string{"--insecure-policy"}, args...)...)
}

func rawDigest(t *testing.T, ref string) digest.Digest {
	t.Helper()
	raw := run(t, time.Minute, nil, "skopeo", "inspect", "--raw", "--tls-verify=false", ref)
	return digest.FromString(strings.TrimSuffix(raw, "\n"))
}

// checkOCILayout checks that the layout copied out of Wharf has the index
// want and every blob of the source layout, byte-identical.
func checkOCILayout(t *testing.T, out, src string, want digest.Digest) {
	t.Helper()
	var index struct{ Manifests []desc }
	b, err := os.ReadFile(filepath.Join(out, "index.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &index); err != nil || len(index.Manifests) != 1 || index.Manifests[0].Digest != want {
		t.Fatalf("layout copied out of Wharf references %s (err %v), want %s", b, err, want)
	}
	for _, hex := range layoutBlobs(t, src) {
		checkFileDigest(t, filepath.Join(out, "blobs", "sha256", hex), hex)
	}
}

// checkDirLayout does the same for skopeo's dir: transport, which keeps the
// top manifest as manifest.json and instances as <hex>.manifest.json.
func checkDirLayout(t *testing.T, out, src string, want digest.Digest) {
	t.Helper()
	checkFileDigest(t, filepath.Join(out, "manifest.json"), want.Encoded())
	for _, hex := range layoutBlobs(t, src) {
		if hex == want.Encoded() {
			continue
		}
		p := filepath.Join(out, hex)
		if _, err := os.Stat(p); err != nil {
			p += ".manifest.json"
		}
		checkFileDigest(t, p, hex)
	}
}

func layoutBlobs(t *testing.T, layout string) []string {
	t.Helper()
	paths, err := filepath.Glob(filepath.Join(layout, "blobs", "sha256", "*"))
	if err != nil || len(paths) == 0 {
		t.Fatalf("no blobs in %s: %v", layout, err)
	}
	hexes := make([]string, len(paths))
	for i, p := range paths {
		hexes[i] = filepath.Base(p)
	}
	return hexes
}

func checkFileDigest(t *testing.T, path, hex string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("content %s missing after the round trip: %v", hex, err)
	}
	if digest.FromBytes(b).Encoded() != hex {
		t.Fatalf("content %s changed in the round trip", hex)
	}
}
