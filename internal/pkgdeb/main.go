// Command pkgdeb builds wharf's .deb from the repository: it builds the
// binary, lays the tree out with `wharf install --root`, adds the Debian
// control files and runs dpkg-deb. The package creates the wharf user and
// enables nothing.
//
// Run: go run ./internal/pkgdeb -out dist/ [-version 1.2.3]
package main

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
)

var (
	out     = flag.String("out", "dist", "directory for the .deb")
	version = flag.String("version", "0.0.0~dev", "package version")
)

func main() {
	flag.Parse()
	if err := build(); err != nil {
		fmt.Fprintln(os.Stderr, "pkgdeb:", err)
		os.Exit(1)
	}
}

func run(name string, args ...string) error {
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	return cmd.Run()
}

func build() error {
	stage, err := os.MkdirTemp("", "wharf-deb")
	if err != nil {
		return err
	}
	defer os.RemoveAll(stage)
	bin := filepath.Join(stage, "wharf-build")
	if err := run("go", "build", "-trimpath", "-ldflags", "-s -w -X main.version="+*version, "-o", bin, "./cmd/wharf"); err != nil {
		return err
	}
	root := filepath.Join(stage, "root")
	if err := run(bin, "install", "--root", root); err != nil {
		return err
	}
	arch := map[string]string{"amd64": "amd64", "arm64": "arm64"}[runtime.GOARCH]
	if arch == "" {
		return fmt.Errorf("no Debian architecture for %s", runtime.GOARCH)
	}
	files := map[string]string{
		"DEBIAN/control": fmt.Sprintf(`Package: wharf
Version: %s
Architecture: %s
Maintainer: Wharf developers <wharf@localhost>
Section: admin
Priority: optional
Depends: systemd
Homepage: https://github.com/wharf-registry/wharf
Description: container registry mirror appliance
 One binary that is the registry-mirrors endpoint of every docker daemon
 on a LAN and a private registry for pushed images.
`, *version, arch),
		"DEBIAN/conffiles": "/etc/wharf/config.yaml\n",
		// Creates the user; enables and starts nothing.
		"DEBIAN/postinst": `#!/bin/sh
set -e
if [ "$1" = configure ]; then
  systemd-sysusers /usr/lib/sysusers.d/wharf.conf || true
  chown root:wharf /etc/wharf /etc/wharf/config.yaml 2>/dev/null || true
  if [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi
  echo "wharf installed; start it with: systemctl enable --now wharf"
fi
`,
		"DEBIAN/postrm": `#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi
`,
	}
	for path, content := range files {
		mode := os.FileMode(0o644)
		if strings.HasPrefix(path, "DEBIAN/post") {
			mode = 0o755
		}
		p := filepath.Join(root, path)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		return err
	}
	deb := filepath.Join(*out, fmt.Sprintf("wharf_%s_%s.deb", *version, arch))
	if err := run("dpkg-deb", "--root-owner-group", "--build", root, deb); err != nil {
		return err
	}
	fmt.Println(deb)
	return nil
}
