package e2e

import (
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

// TestOperatorCommands: gc, fsck and du refuse a data directory a server
// holds; with the server stopped, du reports, gc frees what a deleted tag
// left (dry run first), fsck finds a flipped byte and --repair quarantines
// it, and the server then serves the intact image.
func TestOperatorCommands(t *testing.T) {
	data := t.TempDir()
	w := startWharf(t, data, "--mirror=false", "--allow-delete")
	p := &pusher{base: "http://" + w.addr, client: http.DefaultClient, mu: new(sync.Mutex), attempts: new([]ackedPush)}
	keep, err := p.pushImage("ops/app", "keep", 0)
	if err != nil {
		t.Fatal(err)
	}
	drop, err := p.pushImage("ops/app", "drop", 2)
	if err != nil {
		t.Fatal(err)
	}
	if out, err := runErr(time.Minute, nil, wharfBin, "gc", "--data", data); err == nil || !strings.Contains(out, "in use") {
		t.Fatalf("gc next to a running server: %v\n%s", err, out)
	}
	req, _ := http.NewRequest(http.MethodDelete, w.url("/v2/ops/app/manifests/drop"), nil)
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != http.StatusAccepted {
		t.Fatalf("delete tag: %v %v", err, resp)
	}
	if err := w.stop(t); err != nil {
		t.Fatal(err)
	}

	if out := run(t, time.Minute, nil, wharfBin, "du", "--data", data); !strings.Contains(out, "ops/app") || !strings.Contains(out, "private") {
		t.Fatalf("du:\n%s", out)
	}
	out := run(t, time.Minute, nil, wharfBin, "gc", "--data", data, "--grace", "1ms", "--dry-run")
	if !strings.Contains(out, "would free") || !strings.Contains(out, drop.manifest.String()) {
		t.Fatalf("gc --dry-run:\n%s", out)
	}
	out = run(t, time.Minute, nil, wharfBin, "gc", "--data", data, "--grace", "1ms")
	if !strings.Contains(out, "freed") || !strings.Contains(out, "1 manifests") {
		t.Fatalf("gc:\n%s", out)
	}

	layer := keep.blobs[0]
	path := filepath.Join(data, "blobs", "sha256", layer.Encoded()[:2], layer.Encoded())
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0x55
	os.WriteFile(path, b, 0o640)
	if out, err := runErr(time.Minute, nil, wharfBin, "fsck", "--data", data); err == nil || !strings.Contains(out, "corrupt blob "+layer.String()) {
		t.Fatalf("fsck missed the flipped byte: %v\n%s", err, out)
	}
	run(t, time.Minute, nil, wharfBin, "fsck", "--data", data, "--repair")
	if _, err := os.Stat(filepath.Join(data, "quarantine", "sha256-"+layer.Encoded())); err != nil {
		t.Fatalf("not quarantined: %v", err)
	}
	if out := run(t, time.Minute, nil, wharfBin, "fsck", "--data", data); !strings.Contains(out, "0 problems") {
		t.Fatalf("fsck after repair:\n%s", out)
	}
	w = startWharf(t, data, "--mirror=false")
	resp, err := http.Get(w.url("/v2/ops/app/blobs/" + layer.String()))
	if err != nil {
		t.Fatal(err)
	}
	got, _ := digest.FromReader(resp.Body)
	resp.Body.Close()
	if resp.StatusCode == http.StatusOK && got != layer {
		t.Fatal("served the corrupt bytes after repair")
	}
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("quarantined blob: %s", resp.Status)
	}
}

// TestPushedUnderRegistryNameNeverEvicted: a private registry
// (--mirror=false) with a tiny quota keeps an image pushed under a
// registry-named path (as `skopeo sync` into wharf:5000/quay.io/org/app
// does): pushed content is never evicted, whatever its name.
func TestPushedUnderRegistryNameNeverEvicted(t *testing.T) {
	w := startWharf(t, "", "--mirror=false", "--max-size", "1K", "--evict-interval", "200ms", "--gc-grace", "1ms")
	p := &pusher{base: "http://" + w.addr, client: http.DefaultClient, mu: new(sync.Mutex), attempts: new([]ackedPush)}
	if _, err := p.pushImage("quay.io/org/app", "v1", 0); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1500 * time.Millisecond) // several eviction checks, all over the quota
	resp, err := http.Get(w.url("/v2/quay.io/org/app/manifests/v1"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("pushed quay.io/org/app after eviction checks: %s\n%s", resp.Status, w.log)
	}
	if strings.Contains(w.log.String(), "evicted least recently used") {
		t.Fatalf("eviction touched pushed content:\n%s", w.log)
	}
}
