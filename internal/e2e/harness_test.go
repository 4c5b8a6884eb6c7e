package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/wharf-registry/wharf/internal/testport"
)

// wharfBin is the binary built once for the whole package by TestMain.
var wharfBin string

// WHARF_E2E_BIN, when set, names a binary to test instead (an older build,
// to show that a test catches what it is about).
func TestMain(m *testing.M) {
	if bin := os.Getenv("WHARF_E2E_BIN"); bin != "" {
		wharfBin = bin
		os.Exit(m.Run())
	}
	dir, err := os.MkdirTemp("", "wharf-e2e-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	wharfBin = filepath.Join(dir, "wharf")
	if out, err := exec.Command("go", "build", "-o", wharfBin, "../../cmd/wharf").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building wharf: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// requireTool returns the path of a client the test needs. Missing, it
// skips the test, or fails it when WHARF_E2E_REQUIRE=1.
func requireTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err == nil {
		return p
	}
	if os.Getenv("WHARF_E2E_REQUIRE") == "1" {
		t.Fatalf("%s is required (WHARF_E2E_REQUIRE=1) but not installed: %v", name, err)
	}
	t.Skipf("%s not installed", name)
	return ""
}

// syncBuffer collects a process's output for failure messages.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// wharfProc is a running `wharf serve`.
type wharfProc struct {
	cmd  *exec.Cmd
	addr string // host:port on loopback
	data string
	log  *syncBuffer
	done chan error
}

func (w *wharfProc) url(path string) string { return "http://" + w.addr + path }

// startWharf runs `wharf serve` on data (a new temp dir when empty) and
// waits until /v2/ answers. The process is killed, by its PID, at cleanup.
func startWharf(t *testing.T, data string, args ...string) *wharfProc {
	t.Helper()
	return startWharfWithEnv(t, data, nil, args...)
}

// startWharfWithEnv is startWharf with extra environment variables.
func startWharfWithEnv(t *testing.T, data string, env []string, args ...string) *wharfProc {
	t.Helper()
	return startWharfAt(t, testport.Pick(t), data, env, args...)
}

// startWharfAt is startWharfWithEnv on a given address (one a test had
// to name before the start, as an identity provider's redirect URL).
func startWharfAt(t *testing.T, addr, data string, env []string, args ...string) *wharfProc {
	t.Helper()
	if data == "" {
		data = t.TempDir()
	}
	w := &wharfProc{addr: addr, data: data, log: &syncBuffer{}, done: make(chan error, 1)}
	w.cmd = exec.Command(wharfBin, append([]string{"serve", "--addr", addr, "--data", data}, args...)...)
	if env != nil {
		w.cmd.Env = append(os.Environ(), env...)
	}
	w.cmd.Stdout, w.cmd.Stderr = w.log, w.log
	if err := w.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { w.done <- w.cmd.Wait() }()
	t.Cleanup(func() { w.kill() })
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get(w.url("/v2/"))
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK || resp.StatusCode == http.StatusUnauthorized { // 401: users exist
				return w
			}
		}
		select {
		case err := <-w.done:
			w.done <- err
			t.Fatalf("wharf exited during start-up: %v\n%s", err, w.log)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("wharf did not answer on %s within 20s\n%s", addr, w.log)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// kill sends SIGKILL to the process if it still runs and waits for it.
// It reports whether the process had already exited on its own.
func (w *wharfProc) kill() (exited bool, err error) {
	select {
	case err := <-w.done: // the waiter owns ProcessState: ask it, not the field
		w.done <- err
		return true, err
	default:
	}
	w.cmd.Process.Signal(syscall.SIGKILL)
	select {
	case err := <-w.done:
		w.done <- err
	case <-time.After(10 * time.Second):
	}
	return false, nil
}

// stop sends SIGTERM and returns the exit error.
func (w *wharfProc) stop(t *testing.T) error {
	t.Helper()
	if err := w.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-w.done:
		w.done <- err
		return err
	case <-time.After(30 * time.Second):
		t.Fatalf("wharf did not stop within 30s of SIGTERM\n%s", w.log)
		return nil
	}
}

// run runs a command with a deadline and returns its combined output,
// failing the test on error.
func run(t *testing.T, timeout time.Duration, env []string, name string, args ...string) string {
	t.Helper()
	out, err := runErr(timeout, env, name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}

func runErr(timeout time.Duration, env []string, name string, args ...string) (string, error) {
	return runInDir("", timeout, env, name, args...)
}

func runInDir(dir string, timeout time.Duration, env []string, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func execCommand(name string, args ...string) *exec.Cmd { return exec.Command(name, args...) }

func readAll(t *testing.T, resp *http.Response) string {
	t.Helper()
	var b strings.Builder
	if _, err := io.Copy(&b, resp.Body); err != nil {
		t.Fatal(err)
	}
	return b.String()
}
