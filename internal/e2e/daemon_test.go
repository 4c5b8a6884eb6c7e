package e2e

import (
	"os"
	"syscall"
	"testing"
	"time"
)

// shortTempDir makes a directory under /tmp: unix socket paths are limited
// to ~108 bytes, too short for t.TempDir() paths.
func shortTempDir(t *testing.T, prefix string) string {
	t.Helper()
	dir, err := os.MkdirTemp("/tmp", prefix)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// startDaemon starts a client daemon (dockerd, containerd) in a process
// group of its own, waits until ready succeeds, and at cleanup stops the
// whole group (dockerd's containerd with it): SIGTERM, then SIGKILL.
func startDaemon(t *testing.T, ready func() error, name string, args ...string) {
	t.Helper()
	log := &syncBuffer{}
	cmd := execCommand(name, args...)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
		}
	})
	deadline := time.Now().Add(60 * time.Second)
	for ready() != nil {
		select {
		case <-done:
			t.Fatalf("%s exited during start-up\n%s", name, log)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not come up within 60s\n%s", name, log)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
