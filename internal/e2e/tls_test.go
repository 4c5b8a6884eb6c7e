package e2e

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/wharf-registry/wharf/internal/testport"
)

// testCA issues certificates for loopback servers and clients.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "wharf test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &testCA{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// issue writes a certificate (server: for 127.0.0.1; client: for cn) and
// its key to dir and returns their paths.
func (ca *testCA) issue(t *testing.T, dir, name, cn string, serial int64, client bool) (certFile, keyFile string) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageDigitalSignature}
	if client {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	} else {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.IPAddresses = []net.IP{net.ParseIP("127.0.0.1")}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalECPrivateKey(key)
	certFile, keyFile = filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
	// Write to temp names and rename, as certificate tooling does.
	for path, b := range map[string][]byte{
		certFile: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		keyFile:  pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}),
	} {
		if err := os.WriteFile(path+".tmp", b, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(path+".tmp", path); err != nil {
			t.Fatal(err)
		}
	}
	return certFile, keyFile
}

func (ca *testCA) client(t *testing.T, certs ...tls.Certificate) *http.Client {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca.pem)
	return &http.Client{Timeout: time.Minute, Transport: &http.Transport{ForceAttemptHTTP2: true,
		TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: certs}}}
}

// serial returns the serial of the certificate a new connection sees.
func serial(t *testing.T, ca *testCA, addr string) int64 {
	t.Helper()
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca.pem)
	c, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: pool})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0].SerialNumber.Int64()
}

// TestTLSReloadKeepsDownloads: HTTPS with HTTP/2; a renewed certificate is
// picked up on SIGHUP and on a file change, while a slow download that
// started before continues unbroken.
func TestTLSReloadKeepsDownloads(t *testing.T) {
	ca := newTestCA(t)
	dir := t.TempDir()
	certFile, keyFile := ca.issue(t, dir, "server", "wharf", 100, false)
	w := startWharfTLS(t, ca, "--tls-cert", certFile, "--tls-key", keyFile, "--mirror=false")
	c := ca.client(t)
	blob := bytes.Repeat([]byte("0123456789abcdef"), 4<<20) // 64 MiB
	d := digest.FromBytes(blob)
	resp, err := c.Post("https://"+w.addr+"/v2/tls/blob/blobs/uploads/?digest="+d.String(), "application/octet-stream", bytes.NewReader(blob))
	if err != nil || resp.StatusCode != 201 {
		t.Fatalf("push over TLS: %v %v", err, resp)
	}
	resp.Body.Close()
	if resp.Proto != "HTTP/2.0" {
		t.Fatalf("protocol %s, want HTTP/2.0", resp.Proto)
	}
	if s := serial(t, ca, w.addr); s != 100 {
		t.Fatalf("serial %d", s)
	}
	slow, err := c.Get("https://" + w.addr + "/v2/tls/blob/blobs/" + d.String())
	if err != nil {
		t.Fatal(err)
	}
	done := slowDigest(slow.Body, 5*time.Millisecond) // ~50 MB/s: seconds for 64 MiB
	ca.issue(t, dir, "server", "wharf", 101, false)
	w.cmd.Process.Signal(syscall.SIGHUP)
	waitSerial(t, ca, w.addr, 101)
	ca.issue(t, dir, "server", "wharf", 102, false) // no signal: the file change is noticed
	waitSerial(t, ca, w.addr, 102)
	select {
	case got := <-done:
		if got != d {
			t.Fatalf("download across reloads: got %s, want %s", got, d)
		}
	case <-time.After(2 * time.Minute):
		t.Fatal("slow download did not finish")
	}
}

// slowDigest reads body in 256 KiB pieces with a pause after each, as a
// slow client does, and sends the digest of what it got when the body ends.
func slowDigest(body io.ReadCloser, pause time.Duration) <-chan digest.Digest {
	done := make(chan digest.Digest, 1)
	go func() {
		defer body.Close()
		h := digest.Canonical.Digester()
		buf := make([]byte, 256<<10)
		for {
			n, err := body.Read(buf)
			h.Hash().Write(buf[:n])
			if err != nil {
				break
			}
			time.Sleep(pause)
		}
		done <- h.Digest()
	}()
	return done
}

func waitSerial(t *testing.T, ca *testCA, addr string, want int64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for serial(t, ca, addr) != want {
		if time.Now().After(deadline) {
			t.Fatalf("certificate %d not served within 10s", want)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// startWharfTLS starts wharf serving HTTPS and waits for it.
func startWharfTLS(t *testing.T, ca *testCA, args ...string) *wharfProc {
	t.Helper()
	addr, data := testport.Pick(t), t.TempDir()
	w := startWharfEnv(t, ca, addr, nil, append([]string{"--addr", addr, "--data", data}, args...)...)
	w.data = data
	return w
}

// TestClientCertificatePush: with --tls-client-ca, a CI machine's
// certificate signs its CN in; rules grant it push.
func TestClientCertificatePush(t *testing.T) {
	ca := newTestCA(t)
	dir := t.TempDir()
	certFile, keyFile := ca.issue(t, dir, "server", "wharf", 200, false)
	ccert, ckey := ca.issue(t, dir, "ci", "ci-runner", 201, true)
	htpasswd, config := makeUsers(t, map[string]string{"alice": "pw"},
		"rules:\n  - repos: [\"ci/**\"]\n    who: [ci-runner]\n    actions: [pull, push]\n")
	caFile := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(caFile, ca.pem, 0o644); err != nil {
		t.Fatal(err)
	}
	w := startWharfTLS(t, ca, "--tls-cert", certFile, "--tls-key", keyFile, "--tls-client-ca", caFile,
		"--htpasswd", htpasswd, "--config", config, "--mirror=false")
	pair, err := tls.LoadX509KeyPair(ccert, ckey)
	if err != nil {
		t.Fatal(err)
	}
	blob := []byte("built by CI")
	push := func(c *http.Client, repo string) int {
		resp, err := c.Post("https://"+w.addr+"/v2/"+repo+"/blobs/uploads/?digest="+digest.FromBytes(blob).String(), "application/octet-stream", bytes.NewReader(blob))
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	if st := push(ca.client(t, pair), "ci/app"); st != http.StatusCreated {
		t.Fatalf("push with the CI certificate: %d", st)
	}
	if st := push(ca.client(t), "ci/app"); st != http.StatusUnauthorized {
		t.Fatalf("push without a certificate: %d, want 401", st)
	}
	if st := push(ca.client(t, pair), "team/app"); st != http.StatusForbidden {
		t.Fatalf("push with the CI certificate outside its rule: %d, want 403", st)
	}
}

// TestDockerLoginTLS: docker login, push and pull over TLS, the test CA
// installed in the daemon's certs.d for Wharf's address. (dockerd counts
// loopback registries as insecure, so it would not refuse a bad chain
// here; that the registry speaks only TLS is what this proves.)
func TestDockerLoginTLS(t *testing.T) {
	requireTool(t, "dockerd")
	ca := newTestCA(t)
	dir := t.TempDir()
	certFile, keyFile := ca.issue(t, dir, "server", "wharf", 300, false)
	htpasswd, config := makeUsers(t, map[string]string{"alice": "alice-s3cret"},
		"rules:\n  - repos: [\"team/*\"]\n    who: [alice]\n    actions: [pull, push]\n")
	w := startWharfTLS(t, ca, "--tls-cert", certFile, "--tls-key", keyFile, "--htpasswd", htpasswd, "--config", config, "--mirror=false")
	certsDir := filepath.Join("/etc/docker/certs.d", w.addr)
	if err := os.MkdirAll(certsDir, 0o755); err != nil {
		t.Fatalf("installing the test CA for dockerd: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(certsDir) })
	if err := os.WriteFile(filepath.Join(certsDir, "ca.crt"), ca.pem, 0o644); err != nil {
		t.Fatal(err)
	}
	d := startDockerd(t)
	login := func(pass string) (string, error) {
		cmd := execCommand("docker", "login", w.addr, "-u", "alice", "--password-stdin")
		cmd.Env = append(os.Environ(), d.env()...)
		cmd.Stdin = bytes.NewReader([]byte(pass))
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	if out, err := login("wrong"); err == nil {
		t.Fatalf("login over TLS with a wrong password succeeded:\n%s", out)
	}
	if out, err := login("alice-s3cret"); err != nil {
		t.Fatalf("login over TLS: %v\n%s", err, out)
	}
	ref := w.addr + "/team/tls:v1"
	d.buildImage(t, ref, "scratch", "t.bin")
	d.roundTrip(t, ref)
}
