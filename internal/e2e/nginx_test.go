package e2e

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wharf-registry/wharf/internal/testport"
)

// guideNginx is the "authenticate proxy with nginx" configuration the
// registry:2 guides print (TLS, optional Basic auth, the headers it
// forwards), with this test's addresses and files. Its location is the
// guide's /v2/, or / where Wharf's own token realm (/token) must be
// proxied too.
const guideNginx = `daemon off;
%[6]s
pid %[1]s/nginx.pid;
error_log %[1]s/error.log;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path %[1]s;
  proxy_temp_path %[1]s;
  fastcgi_temp_path %[1]s;
  uwsgi_temp_path %[1]s;
  scgi_temp_path %[1]s;
  upstream docker-registry {
    server %[2]s;
  }
  map $upstream_http_docker_distribution_api_version $docker_distribution_api_version {
    '' 'registry/2.0';
  }
  server {
    listen %[3]s ssl;
    server_name myregistrydomain.com;
    ssl_certificate %[4]s;
    ssl_certificate_key %[5]s;
    ssl_protocols TLSv1.2 TLSv1.3;
    client_max_body_size 0;
    chunked_transfer_encoding on;
    location %[8]s {
      if ($http_user_agent ~ "^(docker\/1\.(3|4|5(?!\.[0-9]-dev))|Go ).*$" ) {
        return 404;
      }
      %[7]s
      add_header 'Docker-Distribution-Api-Version' $docker_distribution_api_version always;
      proxy_pass                          http://docker-registry;
      proxy_set_header  Host              $http_host;
      proxy_set_header  X-Real-IP         $remote_addr;
      proxy_set_header  X-Forwarded-For   $proxy_add_x_forwarded_for;
      proxy_set_header  X-Forwarded-Proto $scheme;
      proxy_read_timeout                  900;
    }
  }
}
`

// startGuideNginx runs nginx with guideNginx in front of backend, on TLS
// with a certificate from ca; htpasswd "" leaves Basic auth out. It
// returns nginx's address.
func startGuideNginx(t *testing.T, ca *testCA, backend, htpasswd string) string {
	t.Helper()
	requireTool(t, "nginx")
	dir := t.TempDir()
	certFile, keyFile := ca.issue(t, dir, "nginx", "nginx", 900, false)
	addr := testport.Pick(t)
	user := ""
	if os.Geteuid() == 0 { // workers must read the test's files
		user = "user root;"
	}
	// nginx's Basic auth, as in the guide (location /v2/); without it,
	// Wharf's own users sign in at /token, which must be proxied too.
	auth, location := "", "/"
	if htpasswd != "" {
		auth = fmt.Sprintf("auth_basic \"Registry realm\";\n      auth_basic_user_file %s;", htpasswd)
		location = "/v2/"
	}
	conf := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(conf, []byte(fmt.Sprintf(guideNginx, dir, backend, addr, certFile, keyFile, user, auth, location)), 0o644); err != nil {
		t.Fatal(err)
	}
	startDaemon(t, func() error {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
		}
		return err
	}, "nginx", "-c", conf, "-p", dir)
	// dockerd trusts the test CA for nginx's address.
	certsDir := filepath.Join("/etc/docker/certs.d", addr)
	if err := os.MkdirAll(certsDir, 0o755); err != nil {
		t.Fatalf("installing the test CA for dockerd: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(certsDir) })
	if err := os.WriteFile(filepath.Join(certsDir, "ca.crt"), ca.pem, 0o644); err != nil {
		t.Fatal(err)
	}
	return addr
}

func dockerLogin(t *testing.T, d *dockerd, addr, user, pass string) {
	t.Helper()
	cmd := execCommand("docker", "login", addr, "-u", user, "--password-stdin")
	cmd.Env = append(os.Environ(), d.env()...)
	cmd.Stdin = strings.NewReader(pass)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("docker login %s: %v\n%s", addr, err, out)
	}
}

// TestBehindNginx: the guide's nginx (TLS and Basic auth) in front of
// Wharf without users: docker login, push and pull through it. Then the
// same nginx, TLS only, in front of Wharf with its own users and
// --trusted-proxy 127.0.0.1/32: the token realm is nginx's https address,
// so docker login and push work, and the audit log names the client, not
// nginx; forged X-Forwarded-* headers from an untrusted peer change
// nothing.
func TestBehindNginx(t *testing.T) {
	ca := newTestCA(t)
	d := startDockerd(t)

	htpasswd, _ := makeUsers(t, map[string]string{"alice": "alice-s3cret"}, "")
	plain := startWharf(t, "", "--mirror=false")
	front := startGuideNginx(t, ca, plain.addr, htpasswd)
	dockerLogin(t, d, front, "alice", "alice-s3cret")
	d.buildImage(t, front+"/centos", "scratch", "a.bin")
	d.roundTrip(t, front+"/centos")

	users, config := makeUsers(t, map[string]string{"bob": "bob-s3cret"},
		"rules:\n  - repos: [\"**\"]\n    who: [bob]\n    actions: [pull, push]\n")
	w := startWharf(t, "", "--mirror=false", "--htpasswd", users, "--config", config, "--trusted-proxy", "127.0.0.1/32")
	front2 := startGuideNginx(t, ca, w.addr, "")
	resp, err := ca.client(t).Get("https://" + front2 + "/v2/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if got, want := resp.Header.Get("WWW-Authenticate"), `Bearer realm="https://`+front2+`/token"`; !strings.HasPrefix(got, want) {
		t.Fatalf("challenge through nginx: %q, want %s…", got, want)
	}
	dockerLogin(t, d, front2, "bob", "bob-s3cret")
	d.buildImage(t, front2+"/my-ubuntu", "scratch", "b.bin")
	d.roundTrip(t, front2+"/my-ubuntu")
	// nginx passed the client's address (dockerd's, 127.0.0.1) in
	// X-Forwarded-For: the audit record carries it (port 0: forwarded),
	// not nginx's own connection.
	pushes := 0
	for _, line := range strings.Split(w.log.String(), "\n") {
		if strings.Contains(line, "event=push") {
			pushes++
			if !strings.Contains(line, "client=127.0.0.1:0") {
				t.Fatalf("audit record behind the trusted proxy does not name the forwarded client: %s", line)
			}
		}
	}
	if pushes == 0 {
		t.Fatalf("no audit record of the push:\n%s", w.log)
	}

	// Directly from an untrusted loopback address, with forged headers.
	c, err := dialFrom("127.0.0.7", w.addr, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(c, "GET /v2/ HTTP/1.1\r\nHost: %s\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: evil.example\r\nX-Forwarded-For: 10.9.9.9\r\n\r\n", w.addr)
	forged, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	forged.Body.Close()
	if got, want := forged.Header.Get("WWW-Authenticate"), `Bearer realm="http://`+w.addr+`/token"`; !strings.HasPrefix(got, want) {
		t.Fatalf("challenge for an untrusted peer with forged headers: %q, want %s…", got, want)
	}
	fmt.Fprintf(c, "GET /token?scope=repository:x:push HTTP/1.1\r\nHost: %s\r\nAuthorization: Basic %s\r\nX-Forwarded-For: 10.9.9.9\r\n\r\n", w.addr, "Ym9iOndyb25n")
	if resp, err := http.ReadResponse(bufio.NewReader(c), nil); err == nil {
		resp.Body.Close()
	}
	time.Sleep(100 * time.Millisecond)
	if log := w.log.String(); strings.Contains(log, "10.9.9.9") || !strings.Contains(log, "127.0.0.7") {
		t.Fatalf("an untrusted peer's X-Forwarded-For reached the log, or its own address did not:\n%s", log)
	}
}
