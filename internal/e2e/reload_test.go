package e2e

import (
	"bytes"
	"encoding/base64"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

// TestSIGHUPReload: one SIGHUP brings in a new user, a changed rule and a
// renewed certificate, while a long download that started before goes on
// unbroken.
func TestSIGHUPReload(t *testing.T) {
	ca := newTestCA(t)
	dir := t.TempDir()
	certFile, keyFile := ca.issue(t, dir, "server", "wharf", 500, false)
	htpasswd, config := makeUsers(t, map[string]string{"alice": "alice-pw"},
		"rules:\n  - repos: [\"team/*\"]\n    who: [alice]\n    actions: [pull, push]\n")
	w := startWharfTLS(t, ca, "--tls-cert", certFile, "--tls-key", keyFile, "--htpasswd", htpasswd, "--config", config, "--mirror=false")
	c := ca.client(t)
	basicAuth := func(user, pass string) string {
		return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pass))
	}
	push := func(auth, repo string, b []byte) int {
		req, _ := http.NewRequest(http.MethodPost, "https://"+w.addr+"/v2/"+repo+"/blobs/uploads/?digest="+digest.FromBytes(b).String(), bytes.NewReader(b))
		req.Header.Set("Authorization", auth)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	big := bytes.Repeat([]byte("wharf reload "), 5<<20) // 65 MB
	if st := push(basicAuth("alice", "alice-pw"), "team/big", big); st != http.StatusCreated {
		t.Fatalf("alice push: %d", st)
	}
	req, _ := http.NewRequest(http.MethodGet, "https://"+w.addr+"/v2/team/big/blobs/"+digest.FromBytes(big).String(), nil)
	req.Header.Set("Authorization", basicAuth("alice", "alice-pw"))
	slow, err := c.Do(req)
	if err != nil || slow.StatusCode != 200 {
		t.Fatalf("download: %v %v", err, slow)
	}
	done := slowDigest(slow.Body, 4*time.Millisecond)

	if st := push(basicAuth("bob", "bob-pw"), "bob/tool", []byte("x")); st != http.StatusUnauthorized {
		t.Fatalf("bob before the reload: %d", st)
	}
	cmd := exec.Command(wharfBin, "user", "add", "--htpasswd", htpasswd, "bob")
	cmd.Stdin = strings.NewReader("bob-pw\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("user add: %v %s", err, out)
	}
	os.WriteFile(config, []byte("rules:\n  - repos: [\"team/*\"]\n    who: [alice]\n    actions: [pull]\n  - repos: [\"bob/*\"]\n    who: [bob]\n    actions: [pull, push]\n"), 0o644)
	ca.issue(t, dir, "server", "wharf", 501, false)
	w.cmd.Process.Signal(syscall.SIGHUP)

	deadline := time.Now().Add(10 * time.Second)
	for push(basicAuth("bob", "bob-pw"), "bob/tool", []byte("x")) != http.StatusCreated {
		if time.Now().After(deadline) {
			t.Fatalf("new user not in effect after SIGHUP\n%s", w.log)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if st := push(basicAuth("alice", "alice-pw"), "team/other", []byte("y")); st != http.StatusForbidden {
		t.Fatalf("alice's push right should be gone after the rule change: %d", st)
	}
	waitSerial(t, ca, w.addr, 501)
	select {
	case got := <-done:
		if got != digest.FromBytes(big) {
			t.Fatalf("download across the reload: %s", got)
		}
	case <-time.After(2 * time.Minute):
		t.Fatal("download did not finish")
	}
	if !strings.Contains(w.log.String(), "reloaded users and rules") {
		t.Fatal("no log line for the reload")
	}
}
