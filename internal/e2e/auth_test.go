package e2e

import (
	"crypto/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wharf-registry/wharf/internal/fakehub"
)

// makeUsers writes an htpasswd with the wharf CLI (password on stdin) and a
// config with rules.
func makeUsers(t *testing.T, users map[string]string, config string) (htpasswd, configFile string) {
	t.Helper()
	dir := t.TempDir()
	htpasswd = filepath.Join(dir, "htpasswd")
	for u, p := range users {
		cmd := exec.Command(wharfBin, "user", "add", "--htpasswd", htpasswd, u)
		cmd.Stdin = strings.NewReader(p + "\n")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("wharf user add %s: %v\n%s", u, err, out)
		}
	}
	configFile = filepath.Join(dir, "wharf.yaml")
	if err := os.WriteFile(configFile, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	return htpasswd, configFile
}

// TestDockerLoginPlainHTTP: docker login, push and pull as a user over
// plain HTTP (insecure-registries); a wrong password fails cleanly; an
// anonymous push fails within 2 s and an anonymous pull of the private
// repository is refused; and anonymous
// registry-mirrors pulls keep working with users configured.
func TestDockerLoginPlainHTTP(t *testing.T) {
	hub := fakehub.Start(t)
	img := hub.Push("library/busybox", "1", fakehub.ImageSpec{Platforms: []string{"linux/amd64", "linux/arm64"}, Layers: 2, LayerSize: 128 << 10, Seed: 31})
	htpasswd, config := makeUsers(t, map[string]string{"alice": "alice-s3cret"},
		"rules:\n  - repos: [\"team/*\"]\n    who: [alice]\n    actions: [pull, push]\nquotas:\n  - repos: [\"team/*\"]\n    max: 1M\n")
	w := startWharf(t, "", "--htpasswd", htpasswd, "--config", config, "--upstream", "docker.io="+hub.URL)
	d := startDockerdWith(t, map[string]any{"insecure-registries": []string{w.addr}, "registry-mirrors": []string{"http://" + w.addr}})
	login := func(pass string) (string, error) {
		cmd := exec.Command("docker", "login", w.addr, "-u", "alice", "--password-stdin")
		cmd.Env = append(os.Environ(), d.env()...)
		cmd.Stdin = strings.NewReader(pass)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	if out, err := login("wrong"); err == nil || !strings.Contains(strings.ToLower(out), "unauthorized") {
		t.Fatalf("login with a wrong password: %v\n%s", err, out)
	}
	if out, err := login("alice-s3cret"); err != nil || !strings.Contains(out, "Login Succeeded") {
		t.Fatalf("login: %v\n%s", err, out)
	}
	ref := w.addr + "/team/app:v1"
	d.buildImage(t, ref, "scratch", "a.bin", "b.bin")
	d.roundTrip(t, ref)
	// Under the namespace quota (1M, half of it used by now) a 2 MiB layer
	// is refused while docker streams it, with the quota named.
	bigDir := t.TempDir()
	big := make([]byte, 2<<20)
	rand.Read(big)
	os.WriteFile(filepath.Join(bigDir, "big.bin"), big, 0o644)
	os.WriteFile(filepath.Join(bigDir, "Dockerfile"), []byte("FROM scratch\nCOPY big.bin /big.bin\n"), 0o644)
	bigRef := w.addr + "/team/big:v1"
	d.docker(t, "build", "-q", "-t", bigRef, bigDir)
	if out, err := runErr(2*time.Minute, d.env(), "docker", "push", bigRef); err == nil || !strings.Contains(out, "denied") || !strings.Contains(out, "quota 1 (repos team/*, max 1M) is full") {
		t.Fatalf("pushing a layer over the quota: %v\n%s", err, out)
	}
	refusedPatch := false
	for _, line := range strings.Split(w.log.String(), "\n") {
		refusedPatch = refusedPatch || strings.Contains(line, "method=PATCH path=/v2/team/big/blobs/uploads/") && strings.Contains(line, "status=403")
	}
	if !refusedPatch {
		t.Fatalf("the refusal was not the upload's PATCH:\n%s", w.log)
	}
	d.docker(t, "rmi", bigRef)
	// alice may push team/*, not a mirrored name: a poisoned busybox for
	// the mirror's clients is refused.
	poison := w.addr + "/library/busybox:1"
	d.docker(t, "tag", ref, poison)
	if out, err := runErr(2*time.Minute, d.env(), "docker", "push", poison); err == nil || !strings.Contains(strings.ToLower(out), "denied") {
		t.Fatalf("alice pushing over library/busybox: %v\n%s", err, out)
	}
	// Signed out, a push fails at once with a clear message (docker retries
	// a 401 without detail for about a minute).
	d.docker(t, "logout", w.addr)
	start := time.Now()
	out, err := runErr(time.Minute, d.env(), "docker", "push", ref)
	if took := time.Since(start); err == nil || took > 2*time.Second || !strings.Contains(strings.ToLower(out), "authentication required") {
		t.Fatalf("anonymous push: %v after %s, want a failure within 2 s saying authentication is required\n%s", err, took, out)
	}
	d.docker(t, "rmi", ref, poison)
	if out, err := runErr(time.Minute, d.env(), "docker", "pull", ref); err == nil {
		t.Fatalf("anonymous pull of a private repository succeeded:\n%s", out)
	}
	// dockerd's mirror pulls are anonymous.
	if out, err := runErr(time.Minute, d.env(), "docker", "pull", "busybox:1"); err != nil {
		t.Fatalf("mirror pull: %v\n%s\n%s", err, out, w.log)
	}
	if got := d.docker(t, "image", "inspect", "--format", "{{.Id}}", "busybox:1"); got != img.Configs[hostPlatform].String() {
		t.Fatalf("mirror pull with users configured: image %s, want %s", got, img.Configs[hostPlatform])
	}
	if hub.Count("GET blob") == 0 {
		t.Fatal("the mirror pull did not go through Wharf")
	}
	if !strings.Contains(w.log.String(), `msg=audit event=login user=anonymous`) || !strings.Contains(w.log.String(), "event=push user=alice") {
		t.Fatalf("audit records missing:\n%s", w.log)
	}
}
