package main

import (
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"os"
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
		&cli.StringFlag{Name: "addr", Usage: "the server's listen address (default: WHARF_ADDR, REGISTRY_HTTP_ADDR, :5000)"},
		&cli.BoolFlag{Name: "tls", Usage: "the server speaks HTTPS (default: when WHARF_TLS_CERT or REGISTRY_HTTP_TLS_CERTIFICATE is set)"},
		&cli.DurationFlag{Name: "timeout", Value: 5 * time.Second, Usage: "give up after this"},
	},
	Action: func(c *cli.Context) error {
		addr := firstNonEmpty(c.String("addr"), os.Getenv("WHARF_ADDR"), os.Getenv("REGISTRY_HTTP_ADDR"), ":5000")
		host, port, err := net.SplitHostPort(addr)
		if err != nil {
			return cli.Exit(fmt.Sprintf("health: address %q: %v", addr, err), 2)
		}
		if host == "" || host == "0.0.0.0" || host == "::" {
			host = "127.0.0.1"
		}
		scheme := "http"
		if c.Bool("tls") || os.Getenv("WHARF_TLS_CERT") != "" || os.Getenv("REGISTRY_HTTP_TLS_CERTIFICATE") != "" {
			scheme = "https"
		}
		client := &http.Client{Timeout: c.Duration("timeout"), Transport: &http.Transport{
			// A probe of this machine's own server: its certificate names
			// the public host, not 127.0.0.1.
			TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, //nolint:gosec
		}}
		url := scheme + "://" + net.JoinHostPort(host, port) + "/healthz"
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

func firstNonEmpty(vs ...string) string {
	for _, v := range vs {
		if v != "" {
			return v
		}
	}
	return ""
}
