package e2e

import (
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wharf-registry/wharf/internal/testport"
)

// startWharfEnv starts `wharf serve` over TLS with extra environment and
// args exactly as given (the test's REGISTRY_* settings may give the
// address and data directory), and waits for HTTPS on addr.
func startWharfEnv(t *testing.T, ca *testCA, addr string, env []string, args ...string) *wharfProc {
	t.Helper()
	w := &wharfProc{addr: addr, log: &syncBuffer{}, done: make(chan error, 1)}
	w.cmd = execCommand(wharfBin, append([]string{"serve"}, args...)...)
	w.cmd.Env = append(os.Environ(), env...)
	w.cmd.Stdout, w.cmd.Stderr = w.log, w.log
	if err := w.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { w.done <- w.cmd.Wait() }()
	t.Cleanup(func() { w.kill() })
	c := ca.client(t)
	deadline := time.Now().Add(20 * time.Second)
	for {
		if resp, err := c.Get("https://" + addr + "/v2/"); err == nil {
			resp.Body.Close()
			return w
		}
		select {
		case err := <-w.done:
			w.done <- err
			t.Fatalf("wharf exited during start-up: %v\n%s", err, w.log)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("wharf did not answer on %s\n%s", addr, w.log)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestRegistry2Configuration: the guide's `docker run -e REGISTRY_AUTH=htpasswd
// -e REGISTRY_AUTH_HTPASSWD_PATH=… -e REGISTRY_HTTP_TLS_CERTIFICATE=… registry:2`
// with wharf in place of registry:2, and the same through registry:2's
// config.yml: docker login, push, pull and delete work; a storage driver
// Wharf has no counterpart for (storage.azure) stops the start with a
// message naming it (storage.s3 is --blob-store: TestRegistry2S3Variables).
func TestRegistry2Configuration(t *testing.T) {
	requireTool(t, "dockerd")
	ca := newTestCA(t)
	dir := t.TempDir()
	certFile, keyFile := ca.issue(t, dir, "domain", "registry", 1100, false)
	htpasswd, _ := makeUsers(t, map[string]string{"testuser": "testpassword"}, "")
	d := startDockerd(t)
	trust := func(addr string) {
		certsDir := filepath.Join("/etc/docker/certs.d", addr)
		if err := os.MkdirAll(certsDir, 0o755); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(certsDir) })
		if err := os.WriteFile(filepath.Join(certsDir, "ca.crt"), ca.pem, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	check := func(w *wharfProc) {
		t.Helper()
		trust(w.addr)
		dockerLogin(t, d, w.addr, "testuser", "testpassword")
		ref := w.addr + "/centos:latest"
		d.buildImage(t, ref, "scratch", "c.bin")
		d.roundTrip(t, ref)
		c := ca.client(t)
		req, _ := http.NewRequest(http.MethodHead, "https://"+w.addr+"/v2/centos/manifests/latest", nil)
		req.SetBasicAuth("testuser", "testpassword")
		req.Header.Set("Accept", "application/vnd.docker.distribution.manifest.v2+json")
		resp, err := c.Do(req)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("HEAD centos:latest: %v %v", err, resp)
		}
		resp.Body.Close()
		req, _ = http.NewRequest(http.MethodDelete, "https://"+w.addr+"/v2/centos/manifests/"+resp.Header.Get("Docker-Content-Digest"), nil)
		req.SetBasicAuth("testuser", "testpassword")
		if resp, err = c.Do(req); err != nil || resp.StatusCode != http.StatusAccepted {
			t.Fatalf("DELETE (storage.delete.enabled): %v %v", err, resp)
		}
		resp.Body.Close()
	}

	data := t.TempDir()
	addr := testport.Pick(t)
	w := startWharfEnv(t, ca, addr, []string{
		"REGISTRY_HTTP_ADDR=" + addr, "REGISTRY_AUTH=htpasswd", "REGISTRY_AUTH_HTPASSWD_REALM=Registry Realm",
		"REGISTRY_AUTH_HTPASSWD_PATH=" + htpasswd, "REGISTRY_HTTP_TLS_CERTIFICATE=" + certFile,
		"REGISTRY_HTTP_TLS_KEY=" + keyFile, "REGISTRY_STORAGE_DELETE_ENABLED=true",
		"REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY=" + data,
	}, "--mirror=false")
	check(w)
	if _, err := os.Stat(filepath.Join(data, "index")); err != nil {
		t.Fatalf("REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY was not the data directory: %v", err)
	}
	if err := w.stop(t); err != nil {
		t.Fatal(err)
	}

	addr = testport.Pick(t)
	cfg := filepath.Join(dir, "config.yml")
	yml := `version: 0.1
log:
  fields:
    service: registry
storage:
  filesystem:
    rootdirectory: ` + t.TempDir() + `
  delete:
    enabled: true
http:
  addr: ` + addr + `
  tls:
    certificate: ` + certFile + `
    key: ` + keyFile + `
auth:
  htpasswd:
    realm: basic-realm
    path: ` + htpasswd + "\n"
	if err := os.WriteFile(cfg, []byte(yml), 0o644); err != nil {
		t.Fatal(err)
	}
	w = startWharfEnv(t, ca, addr, nil, "--mirror=false", "--registry-config", cfg)
	check(w)
	if !strings.Contains(w.log.String(), "log.fields.service") {
		t.Fatalf("no warning for the ignored log.fields:\n%s", w.log)
	}
	w.stop(t)

	if err := os.WriteFile(cfg, []byte(strings.Replace(yml, "storage:\n", "storage:\n  azure:\n    accountname: acct\n    container: images\n", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := runErr(20*time.Second, nil, wharfBin, "serve", "--mirror=false", "--registry-config", cfg)
	if err == nil || !strings.Contains(out, "storage.azure.accountname") {
		t.Fatalf("start with storage.azure: %v\n%s", err, out)
	}
}
