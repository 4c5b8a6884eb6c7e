package e2e

import (
	"bytes"
	"crypto/rand"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

// smallFS mounts a tmpfs of size MiB for the test and unmounts it at the
// end. It skips when mounting is impossible, unless WHARF_E2E_REQUIRE=1.
func smallFS(t *testing.T, mib int) string {
	t.Helper()
	dir := t.TempDir()
	out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+strconv.Itoa(mib)+"m", "tmpfs", dir).CombinedOutput()
	if err != nil {
		if os.Getenv("WHARF_E2E_REQUIRE") == "1" {
			t.Fatalf("cannot mount a tmpfs for the disk-full test: %v %s", err, out)
		}
		t.Skipf("cannot mount a tmpfs: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", dir).Run() })
	return dir
}

// TestDiskFull: with the filesystem full, a push fails with a clear 507,
// nothing partial is left, reads keep working, and once space is freed
// pushes work again without a restart.
func TestDiskFull(t *testing.T) {
	fsDir := smallFS(t, 192)
	data := filepath.Join(fsDir, "data")
	w := startWharf(t, data, "--mirror=false")
	push := func(size int) (int, string) {
		b := make([]byte, size)
		rand.Read(b)
		resp, err := http.Post(w.url("/v2/full/app/blobs/uploads/?digest="+digest.FromBytes(b).String()), "application/octet-stream", bytes.NewReader(b))
		if err != nil {
			return 0, err.Error()
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp.StatusCode, string(body)
	}
	keep := make([]byte, 1<<20)
	rand.Read(keep)
	if resp, err := http.Post(w.url("/v2/full/app/blobs/uploads/?digest="+digest.FromBytes(keep).String()), "", bytes.NewReader(keep)); err != nil || resp.StatusCode != 201 {
		t.Fatalf("first push: %v %v", err, resp)
	}
	// Fill the filesystem but for a few MiB with a ballast file.
	ballast := filepath.Join(fsDir, "ballast")
	f, err := os.Create(ballast)
	if err != nil {
		t.Fatal(err)
	}
	chunk := make([]byte, 1<<20)
	for {
		if _, err := f.Write(chunk); err != nil {
			break
		}
	}
	f.Close()
	os.Truncate(ballast, mustSize(t, ballast)-(6<<20))

	status, body := push(16 << 20)
	if status != http.StatusInsufficientStorage || !strings.Contains(body, "storage is full") {
		t.Fatalf("push onto a full disk: %d %s", status, body)
	}
	if entries, _ := os.ReadDir(filepath.Join(data, "ingest")); len(entries) != 0 {
		t.Fatalf("partial upload left behind: %v", entries)
	}
	resp, err := http.Get(w.url("/v2/full/app/blobs/" + digest.FromBytes(keep).String()))
	if err != nil {
		t.Fatal(err)
	}
	got, _ := digest.FromReader(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || got != digest.FromBytes(keep) {
		t.Fatalf("read with the disk full: %s", resp.Status)
	}
	if !strings.Contains(w.log.String(), "storage full") {
		t.Fatalf("no log line for the full disk:\n%s", w.log)
	}
	os.Remove(ballast)
	deadline := time.Now().Add(10 * time.Second)
	for {
		status, body = push(16 << 20)
		if status == http.StatusCreated {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no recovery after space was freed: %d %s", status, body)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func mustSize(t *testing.T, p string) int64 {
	st, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return st.Size()
}
