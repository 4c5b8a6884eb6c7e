package main

import (
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	// Root certificates for upstream TLS where the system has none (the
	// container image is FROM scratch); a system's own roots win.
	_ "golang.org/x/crypto/x509roots/fallback"
)

// healthCommand probes a server on this machine: the container image's
// HEALTHCHECK (a scratch image has no shell and no curl).
var healthCommand = &cli.Command{
	Name:  "health",
	Usage: "exit 0 if the server on this machine answers /healthz (for container health checks)",
	Flags: []cli.Flag{
		&cli.StringFlag{Name: "addr", Usage: "the server's listen address (default: what the server recorded in its data directory, else WHARF_ADDR, REGISTRY_HTTP_ADDR, :5000)"},
		&cli.StringFlag{Name: "data", Value: "./wharf-data", Usage: "the server's data directory, where it records its address", EnvVars: []string{"WHARF_DATA", "REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY"}},
		&cli.BoolFlag{Name: "tls", Usage: "the server speaks HTTPS (default: when WHARF_TLS_CERT or REGISTRY_HTTP_TLS_CERTIFICATE is set)"},
		&cli.DurationFlag{Name: "timeout", Value: 5 * time.Second, Usage: "give up after this"},
	},
	Action: func(c *cli.Context) error {
		url := ""
		if c.String("addr") == "" {
			dir := c.String("data")
			if v, ok := registry2Volume(dir); ok {
				dir = v
			}
			url = recordedServeURL(dir)
			if url == "" {
				if b, err := os.ReadFile(filepath.Join(dir, registry2ImportingFile)); err == nil {
					return cli.Exit("health: not serving yet: "+strings.TrimSpace(string(b)), 1)
				}
			}
		}
		if url == "" {
			var err error
			if url, err = guessedServeURL(c); err != nil {
				return err
			}
		}
		client := &http.Client{Timeout: c.Duration("timeout"), Transport: &http.Transport{
			// A probe of this machine's own server: its certificate names
			// the public host, not 127.0.0.1.
			TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, //nolint:gosec
		}}
		url += "/healthz"
		resp, err := client.Get(url)
		if err != nil {
			return cli.Exit(fmt.Sprintf("health: %v", err), 1)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return cli.Exit(fmt.Sprintf("health: %s: %s", url, resp.Status), 1)
		}
		fmt.Fprintln(c.App.Writer, "ok")
		return nil
	},
}

// guessedServeURL is the server's URL from the flags and variables it
// reads (when it recorded none).
func guessedServeURL(c *cli.Context) (string, error) {
	addr := firstNonEmpty(c.String("addr"), os.Getenv("WHARF_ADDR"), os.Getenv("REGISTRY_HTTP_ADDR"), ":5000")
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", cli.Exit(fmt.Sprintf("health: address %q: %v", addr, err), 2)
	}
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "127.0.0.1"
	}
	scheme := "http"
	if c.Bool("tls") || os.Getenv("WHARF_TLS_CERT") != "" || os.Getenv("REGISTRY_HTTP_TLS_CERTIFICATE") != "" {
		scheme = "https"
	}
	return scheme + "://" + net.JoinHostPort(host, port), nil
}

// serveURLFile, in the data directory, is the URL the running server
// listens at (scheme and bound address), for `wharf health`.
const serveURLFile = "serve.url"

// recordServeURL records the server's listen address (an unspecified
// one as loopback) and scheme in the data directory.
func recordServeURL(dir string, addr net.Addr, tls bool) error {
	host, port, err := net.SplitHostPort(addr.String())
	if err != nil {
		return err
	}
	if ip := net.ParseIP(host); ip == nil || ip.IsUnspecified() {
		host = "127.0.0.1"
		if ip != nil && ip.To4() == nil {
			host = "::1"
		}
	}
	scheme := "http"
	if tls {
		scheme = "https"
	}
	tmp := filepath.Join(dir, serveURLFile+".tmp")
	if err := os.WriteFile(tmp, []byte(scheme+"://"+net.JoinHostPort(host, port)+"\n"), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(dir, serveURLFile))
}

// recordedServeURL is the URL the server in dir recorded ("": none).
func recordedServeURL(dir string) string {
	b, err := os.ReadFile(filepath.Join(dir, serveURLFile))
	if err != nil {
		return ""
	}
	u := strings.TrimSpace(string(b))
	if !strings.HasPrefix(u, "http://") && !strings.HasPrefix(u, "https://") {
		return ""
	}
	return u
}

func firstNonEmpty(vs ...string) string {
	for _, v := range vs {
		if v != "" {
			return v
		}
	}
	return ""
}

// imageDataDir is the container image's data directory (its Dockerfile
// sets it as REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY).
const imageDataDir = "/var/lib/wharf"

// registry2Volume is the data directory to use instead of dir when dir is
// the image's default and registry:2's volume path is mounted: the image
// names that path in WHARF_REGISTRY2_VOLUME, and a user who swaps
// registry:2's image name for Wharf's keeps `-v DIR:/var/lib/registry`.
// Without that mount (or with another data directory) nothing changes.
func registry2Volume(dir string) (string, bool) {
	v := os.Getenv("WHARF_REGISTRY2_VOLUME")
	if v == "" || filepath.Clean(dir) != imageDataDir || !isMountPoint(v) {
		return "", false
	}
	return v, true
}

// isMountPoint reports whether path is a mount point of this process's
// mount namespace (/proc/self/mountinfo's fifth field).
func isMountPoint(path string) bool {
	raw, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	path = filepath.Clean(path)
	for _, line := range strings.Split(string(raw), "\n") {
		if f := strings.Fields(line); len(f) > 4 && unescapeMount(f[4]) == path {
			return true
		}
	}
	return false
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space, …).
func unescapeMount(s string) string {
	if !strings.Contains(s, "\\") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
