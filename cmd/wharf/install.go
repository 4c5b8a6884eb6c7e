package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/urfave/cli/v2"

	"github.com/wharf-registry/wharf/systemd"
)

// defaultConfig is the /etc/wharf/config.yaml a fresh install gets.
const defaultConfig = `# Wharf configuration: every key is a "wharf serve" flag name.
# See https://github.com/wharf-registry/wharf#configuration
addr: ":5000"
# data is set by the unit (--data /var/lib/wharf).
upstream: [docker.io]
# max-size: 80%
# htpasswd: /etc/wharf/htpasswd
# tls-cert: /etc/wharf/tls.crt
# tls-key: /etc/wharf/tls.key
# metrics-addr: 127.0.0.1:9100
`

// The paths a package or install puts Wharf's files at, under a root.
const (
	binPath      = "usr/bin/wharf"
	unitPath     = "lib/systemd/system/wharf.service"
	sysusersPath = "usr/lib/sysusers.d/wharf.conf"
	configPath   = "etc/wharf/config.yaml"
)

var installCommand = &cli.Command{
	Name:  "install",
	Usage: "lay out the binary, systemd units and a default config under a root (enables nothing)",
	Flags: []cli.Flag{
		&cli.StringFlag{Name: "root", Value: "/", Usage: "install under this directory (a package staging tree, or /)"},
	},
	Action: func(c *cli.Context) error {
		root := c.String("root")
		self, err := os.Executable()
		if err != nil {
			return err
		}
		if err := copyFile(self, filepath.Join(root, binPath), 0o755); err != nil {
			return err
		}
		for path, content := range map[string][]byte{unitPath: systemd.Service, sysusersPath: systemd.Sysusers} {
			if err := writeFile(filepath.Join(root, path), content, 0o644); err != nil {
				return err
			}
		}
		cfg := filepath.Join(root, configPath)
		if _, err := os.Stat(cfg); errors.Is(err, fs.ErrNotExist) {
			if err := writeFile(cfg, []byte(defaultConfig), 0o640); err != nil {
				return err
			}
		}
		fmt.Fprintf(c.App.Writer, "installed under %s: /%s /%s /%s /%s\nnext: systemd-sysusers && systemctl daemon-reload && systemctl enable --now wharf\n",
			root, binPath, unitPath, sysusersPath, configPath)
		return nil
	},
}

func writeFile(path string, b []byte, mode os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, b, mode)
}

func copyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	tmp := dst + ".new"
	out, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, dst) // replaces a running binary safely
}
