// Package etcdtest runs a real etcd cluster for tests: Debian's etcd-server
// (/usr/bin/etcd), its members on loopback ports, started and stopped by
// PID.
package etcdtest

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/wharf-registry/wharf/internal/testport"
)

// Cluster is a running etcd cluster of len(Members) members.
type Cluster struct {
	Members []*Member
	t       testing.TB
	tls     *TLSFiles
}

// Member is one etcd process.
type Member struct {
	Name, Client, Peer string // name, client and peer host:port
	dir                string
	args               []string
	mu                 sync.Mutex
	cmd                *exec.Cmd
	log                *bytes.Buffer
}

// TLSFiles are the PEM files of a cluster started with StartTLS: the CA
// that signed the members' and the client's certificates, and the
// client's certificate and key.
type TLSFiles struct{ CA, Cert, Key string }

// StartTLS runs an n-member cluster whose client port speaks only TLS with
// client certificates (--client-cert-auth), from a CA made for the test.
func StartTLS(t testing.TB, n int) (*Cluster, TLSFiles) {
	t.Helper()
	dir := t.TempDir()
	files := makeCerts(t, dir)
	c := start(t, n, "https", &files, "--cert-file", filepath.Join(dir, "server.pem"), "--key-file", filepath.Join(dir, "server-key.pem"),
		"--trusted-ca-file", files.CA, "--client-cert-auth")
	return c, files
}

// Start runs an n-member cluster and waits until it has a leader. Without
// /usr/bin/etcd it skips, or fails when WHARF_E2E_REQUIRE=1 (CI). Extra
// flags go to every member.
func Start(t testing.TB, n int, extra ...string) *Cluster {
	t.Helper()
	return start(t, n, "http", nil, extra...)
}

func start(t testing.TB, n int, scheme string, tlsFiles *TLSFiles, extra ...string) *Cluster {
	t.Helper()
	bin, err := exec.LookPath("etcd")
	if err != nil {
		if os.Getenv("WHARF_E2E_REQUIRE") == "1" {
			t.Fatalf("etcd not installed (Debian etcd-server): %v", err)
		}
		t.Skipf("etcd not installed (Debian etcd-server): %v", err)
	}
	c := &Cluster{t: t, tls: tlsFiles}
	var initial []string
	for i := range n {
		m := &Member{Name: fmt.Sprintf("m%d", i), Client: testport.Pick(t), Peer: testport.Pick(t), dir: filepath.Join(t.TempDir(), "etcd")}
		c.Members = append(c.Members, m)
		initial = append(initial, m.Name+"=http://"+m.Peer)
	}
	for _, m := range c.Members {
		m.args = append([]string{bin,
			"--name", m.Name, "--data-dir", m.dir,
			"--listen-client-urls", scheme + "://" + m.Client, "--advertise-client-urls", scheme + "://" + m.Client,
			"--listen-peer-urls", "http://" + m.Peer, "--initial-advertise-peer-urls", "http://" + m.Peer,
			"--initial-cluster", strings.Join(initial, ","), "--initial-cluster-state", "new",
			"--initial-cluster-token", "wharf-test",
			"--logger", "zap", "--log-level", "warn",
			// A shared, loaded test machine: elections only when a member is
			// really gone.
			"--heartbeat-interval", "100", "--election-timeout", "1500",
		}, extra...)
		m.start(t)
	}
	t.Cleanup(c.StopAll)
	c.WaitHealthy(t, 30*time.Second)
	return c
}

func (m *Member) start(t testing.TB) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cmd != nil {
		return
	}
	cmd := exec.Command(m.args[0], m.args[1:]...)
	m.log = &bytes.Buffer{}
	cmd.Stdout, cmd.Stderr = m.log, m.log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	m.cmd = cmd
}

// Stop kills the member by PID (SIGKILL: as a crash).
func (m *Member) Stop() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cmd == nil {
		return
	}
	m.cmd.Process.Kill()
	m.cmd.Wait()
	m.cmd = nil
}

// Restart starts a stopped member again on its data directory.
func (m *Member) Restart(t testing.TB) { m.start(t) }

// Log is what the member printed.
func (m *Member) Log() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.log == nil {
		return ""
	}
	return m.log.String()
}

// StopAll stops every member.
func (c *Cluster) StopAll() {
	for _, m := range c.Members {
		m.Stop()
	}
}

// Endpoints lists the members' client addresses.
func (c *Cluster) Endpoints() []string {
	var out []string
	for _, m := range c.Members {
		out = append(out, m.Client)
	}
	return out
}

// URL is the --index value for the cluster, under prefix.
func (c *Cluster) URL(prefix string) string {
	u := "etcd://" + strings.Join(c.Endpoints(), ",") + "/" + prefix
	if c.tls != nil {
		u += "?ca=" + c.tls.CA + "&cert=" + c.tls.Cert + "&key=" + c.tls.Key
	}
	return u
}

// WaitHealthy waits until a write through the running members succeeds.
func (c *Cluster) WaitHealthy(t testing.TB, d time.Duration) {
	t.Helper()
	var eps []string
	for _, m := range c.Members {
		m.mu.Lock()
		if m.cmd != nil {
			eps = append(eps, m.Client)
		}
		m.mu.Unlock()
	}
	cfg := clientv3.Config{Endpoints: eps, DialTimeout: 2 * time.Second, Logger: zap.NewNop()}
	if c.tls != nil {
		cfg.TLS = c.tls.config(t)
	}
	cli, err := clientv3.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	deadline := time.Now().Add(d)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err := cli.Put(ctx, "etcdtest/alive", time.Now().String())
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			var logs strings.Builder
			for _, m := range c.Members {
				fmt.Fprintf(&logs, "--- %s\n%s\n", m.Name, m.Log())
			}
			t.Fatalf("etcd cluster not healthy after %v: %v\n%s", d, err, logs.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
}
