package main

import (
	"context"
	"crypto/tls"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"time"
)

// sdNotify sends a state to systemd (sd_notify protocol) when the service
// runs with NOTIFY_SOCKET; otherwise it does nothing.
func sdNotify(state string) error {
	addr := os.Getenv("NOTIFY_SOCKET")
	if addr == "" {
		return nil
	}
	if addr[0] == '@' { // abstract socket
		addr = "\x00" + addr[1:]
	}
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		return err
	}
	defer conn.Close()
	_, err = conn.Write([]byte(state))
	return err
}

// watchdogInterval is how often to send WATCHDOG=1: half of WatchdogSec,
// or 0 when systemd asks for none (or asks another process).
func watchdogInterval() time.Duration {
	usec, err := strconv.ParseInt(os.Getenv("WATCHDOG_USEC"), 10, 64)
	if err != nil || usec <= 0 {
		return 0
	}
	if pid := os.Getenv("WATCHDOG_PID"); pid != "" && pid != strconv.Itoa(os.Getpid()) {
		return 0
	}
	return time.Duration(usec) * time.Microsecond / 2
}

// watchdog sends a keep-alive each interval, but only after a request to
// /healthz through the server's own listener succeeded: a wedged accept
// loop or handler stops the keep-alives and systemd restarts the service.
func watchdog(ctx context.Context, interval time.Duration, addr string, useTLS bool, log *slog.Logger) error {
	host, port, _ := net.SplitHostPort(addr)
	if ip := net.ParseIP(host); host == "" || ip == nil || ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	scheme := "http"
	if useTLS {
		scheme = "https"
	}
	url := scheme + "://" + net.JoinHostPort(host, port) + "/healthz"
	client := &http.Client{Timeout: interval, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, // our own listener, on loopback
	}}
	return every(ctx, interval, func() {
		resp, err := client.Get(url)
		if err == nil {
			resp.Body.Close()
		}
		if err != nil || resp.StatusCode != http.StatusOK {
			log.Error("watchdog self-check failed: no keep-alive sent", "url", url, "err", err)
			return
		}
		if err := sdNotify("WATCHDOG=1"); err != nil {
			log.Warn("watchdog keep-alive", "err", err)
		}
	})
}
