package e2e

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wharf-registry/wharf/internal/testport"
)

// TestSdNotify: with NOTIFY_SOCKET, wharf sends READY=1 once its listener
// accepts connections, WATCHDOG=1 at half of WATCHDOG_USEC, and STOPPING=1
// on SIGTERM.
func TestSdNotify(t *testing.T) {
	sockDir := shortTempDir(t, "sdn")
	sock := filepath.Join(sockDir, "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	addr := testport.Pick(t)
	cmd := exec.Command(wharfBin, "serve", "--addr", addr, "--data", t.TempDir(), "--mirror=false")
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+sock, "WATCHDOG_USEC=400000")
	log := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() { cmd.Process.Kill(); <-done })

	type msg struct {
		text string
		at   time.Time
	}
	msgs := make(chan msg, 100)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				return
			}
			msgs <- msg{string(buf[:n]), time.Now()}
		}
	}()
	next := func(want string) msg {
		t.Helper()
		deadline := time.After(20 * time.Second)
		for {
			select {
			case m := <-msgs:
				if strings.Contains(m.text, want) {
					return m
				}
			case <-deadline:
				t.Fatalf("no %s from wharf\n%s", want, log)
			}
		}
	}
	next("READY=1")
	if c, err := net.DialTimeout("tcp", addr, time.Second); err != nil {
		t.Fatalf("READY=1 before the listener accepts: %v", err)
	} else {
		c.Close()
	}
	first := next("WATCHDOG=1")
	var last msg
	count := 0
	for count < 5 {
		last = next("WATCHDOG=1")
		count++
	}
	if every := last.at.Sub(first.at) / time.Duration(count); every < 120*time.Millisecond || every > 400*time.Millisecond {
		t.Fatalf("WATCHDOG=1 every %s, want about 200ms (half of WATCHDOG_USEC)", every)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	next("STOPPING=1")
	select {
	case err := <-done:
		done <- err
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("no exit after SIGTERM")
	}
}

// TestSystemdUnit: the shipped unit passes systemd-analyze verify, and its
// exposure score from systemd-analyze security is at most 2.5.
func TestSystemdUnit(t *testing.T) {
	requireTool(t, "systemd-analyze")
	raw, err := os.ReadFile("../../systemd/wharf.service")
	if err != nil {
		t.Fatal(err)
	}
	// verify checks that ExecStart exists: point a copy at the built binary.
	dir := t.TempDir()
	unit := filepath.Join(dir, "wharf.service")
	os.WriteFile(unit, []byte(strings.Replace(string(raw), "/usr/bin/wharf", wharfBin, 1)), 0o644)
	if out, err := runInDir(dir, time.Minute, nil, "systemd-analyze", "verify", unit); err != nil || strings.TrimSpace(out) != "" {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
	out, err := runInDir(dir, time.Minute, nil, "systemd-analyze", "security", "--offline=true", unit)
	if err != nil {
		t.Fatalf("systemd-analyze security: %v\n%s", err, out)
	}
	m := regexp.MustCompile(`Overall exposure level for wharf\.service: ([0-9.]+)`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no exposure score in:\n%s", out)
	}
	score, _ := strconv.ParseFloat(m[1], 64)
	t.Logf("exposure %.1f", score)
	if score > 2.5 {
		t.Fatalf("exposure %.1f, want at most 2.5\n%s", score, out)
	}
	if _, err := os.Stat("../../systemd/wharf.sysusers"); err != nil {
		t.Fatal(err)
	}
	// A start refused on a full filesystem (an index log to replay) is
	// retried until it succeeds: systemd's default start limit would give
	// up after five tries.
	for _, want := range []string{"Restart=on-failure", "StartLimitIntervalSec=0"} {
		if !regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(want) + `$`).Match(raw) {
			t.Errorf("the unit lacks %s", want)
		}
	}
}
