package e2e

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestInstallRoot: `wharf install --root` lays out the binary, the units
// and a default config, and never overwrites an existing config.
func TestInstallRoot(t *testing.T) {
	root := t.TempDir()
	run(t, time.Minute, nil, wharfBin, "install", "--root", root)
	unit, _ := os.ReadFile("../../systemd/wharf.service")
	for path, want := range map[string][]byte{"lib/systemd/system/wharf.service": unit} {
		if got, err := os.ReadFile(filepath.Join(root, path)); err != nil || !bytes.Equal(got, want) {
			t.Fatalf("%s: %v", path, err)
		}
	}
	for _, p := range []string{"usr/bin/wharf", "usr/lib/sysusers.d/wharf.conf", "etc/wharf/config.yaml"} {
		if _, err := os.Stat(filepath.Join(root, p)); err != nil {
			t.Fatal(err)
		}
	}
	if out := run(t, time.Minute, nil, filepath.Join(root, "usr/bin/wharf"), "version"); !strings.HasPrefix(out, "wharf ") {
		t.Fatalf("installed binary: %s", out)
	}
	cfg := filepath.Join(root, "etc/wharf/config.yaml")
	os.WriteFile(cfg, []byte("addr: :6000\n"), 0o640)
	run(t, time.Minute, nil, wharfBin, "install", "--root", root)
	if b, _ := os.ReadFile(cfg); string(b) != "addr: :6000\n" {
		t.Fatal("install overwrote an existing config")
	}
}

// TestDebPackage: the .deb built from the repository installs with dpkg on
// this machine: the binary reports the package version, the unit files are
// where the README says, the wharf user exists, nothing is enabled.
func TestDebPackage(t *testing.T) {
	requireTool(t, "dpkg-deb")
	requireTool(t, "dpkg")
	if os.Geteuid() != 0 {
		if os.Getenv("WHARF_E2E_REQUIRE") == "1" {
			t.Fatal("installing the .deb needs root")
		}
		t.Skip("installing the .deb needs root")
	}
	dist := t.TempDir()
	build := exec.Command("go", "run", "./internal/pkgdeb", "-out", dist, "-version", "9.9.9~test")
	build.Dir = "../.."
	out, err := build.CombinedOutput()
	if err != nil {
		t.Fatalf("building the .deb: %v\n%s", err, out)
	}
	deb := strings.TrimSpace(string(out[bytes.LastIndexByte(bytes.TrimSpace(out), '\n')+1:]))
	t.Cleanup(func() { exec.Command("dpkg", "--purge", "wharf").Run() })
	run(t, 2*time.Minute, nil, "dpkg", "-i", deb)
	if v := run(t, time.Minute, nil, "/usr/bin/wharf", "version"); !strings.Contains(v, "9.9.9~test") {
		t.Fatalf("installed wharf version: %s", v)
	}
	unit, _ := os.ReadFile("../../systemd/wharf.service")
	if got, err := os.ReadFile("/lib/systemd/system/wharf.service"); err != nil || !bytes.Equal(got, unit) {
		t.Fatalf("unit file: %v", err)
	}
	for _, p := range []string{"/usr/lib/sysusers.d/wharf.conf", "/etc/wharf/config.yaml"} {
		if _, err := os.Stat(p); err != nil {
			t.Fatal(err)
		}
	}
	if out, err := exec.Command("getent", "passwd", "wharf").CombinedOutput(); err != nil {
		t.Fatalf("the package did not create the wharf user: %v %s", err, out)
	}
	if _, err := os.Stat("/etc/systemd/system/multi-user.target.wants/wharf.service"); err == nil {
		t.Fatal("the package enabled the service")
	}
}
