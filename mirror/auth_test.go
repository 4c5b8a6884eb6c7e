package mirror

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/wharf-registry/wharf/cache"
	"github.com/wharf-registry/wharf/policy"
)

func basic(user, pass string) map[string]string {
	return map[string]string{"Authorization": "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pass))}
}

func testPolicy(t *testing.T) (*policy.Users, *policy.Policy) {
	t.Helper()
	users, err := policy.ParseHtpasswd(strings.NewReader(""))
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range []string{"alice", "bob", "bot"} {
		if err := users.Set(u, u+"-pw"); err != nil {
			t.Fatal(err)
		}
	}
	pol, err := policy.New(users.Len(), policy.Config{
		Groups: map[string][]string{"team": {"alice"}},
		Rules: []policy.Rule{
			{Repos: []string{"team/*"}, Who: []string{"group:team"}, Actions: []policy.Action{policy.Pull, policy.Push, policy.Delete}},
			{Repos: []string{"bob/*"}, Who: []string{"bob"}, Actions: []policy.Action{policy.Pull, policy.Push}},
			{Repos: []string{"library/internal"}, Who: []string{"bot"}, Actions: []policy.Action{policy.Pull, policy.Push}},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	return users, pol
}

// pushAs pushes a one-layer image to repo:tag with hdr and returns the
// status of the first refused step (or 201).
func (r *testRegistry) pushAs(t *testing.T, repo, tag string, hdr map[string]string, layer []byte) int {
	t.Helper()
	d := digest.FromBytes(layer)
	resp, _ := r.do(t, "POST", "/v2/"+repo+"/blobs/uploads/?digest="+d.String(), layer, hdr)
	if resp.StatusCode != http.StatusCreated {
		return resp.StatusCode
	}
	cfg := []byte(`{"os":"linux"}`)
	cd := digest.FromBytes(cfg)
	if resp, _ := r.do(t, "POST", "/v2/"+repo+"/blobs/uploads/?digest="+cd.String(), cfg, hdr); resp.StatusCode != http.StatusCreated {
		return resp.StatusCode
	}
	m, _ := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": cache.MediaTypeOCIManifest,
		"config": map[string]any{"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": len(cfg)},
		"layers": []any{map[string]any{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": len(layer)}}})
	h := map[string]string{"Content-Type": cache.MediaTypeOCIManifest}
	for k, v := range hdr {
		h[k] = v
	}
	resp, _ = r.do(t, "PUT", "/v2/"+repo+"/manifests/"+tag, m, h)
	return resp.StatusCode
}

// TestAccessControl: login, per-rule push and pull, 401 for anonymous and
// 403 for signed-in callers, filtered catalog, private blob isolation and
// mount rights.
func TestAccessControl(t *testing.T) {
	users, pol := testPolicy(t)
	var logs bytes.Buffer
	var mu sync.Mutex
	reg := newTestRegistry(t, Options{Users: users, Policy: pol, Logger: slog.New(slog.NewJSONHandler(lockedWriter{&mu, &logs}, nil))})
	alice, bob := basic("alice", "alice-pw"), basic("bob", "bob-pw")

	resp, body := reg.do(t, "GET", "/v2/", nil, nil)
	if resp.StatusCode != 401 || !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), `Bearer realm="http://`) || ociError(t, body) != "UNAUTHORIZED" {
		t.Fatalf("anonymous /v2/: %s %v", resp.Status, resp.Header)
	}
	// The realm: anonymous, good and bad credentials.
	token := func(hdr map[string]string) map[string]string {
		resp, body := reg.do(t, "GET", "/token?service=wharf&scope=repository:team/app:pull", nil, hdr)
		var tok struct{ Token string }
		if json.Unmarshal(body, &tok) != nil || resp.StatusCode != 200 || tok.Token == "" {
			t.Fatalf("token: %s %s", resp.Status, body)
		}
		return map[string]string{"Authorization": "Bearer " + tok.Token}
	}
	anonTok, aliceTok, badTok := token(nil), token(basic("alice", "alice-pw")), token(basic("alice", "nope"))
	for _, c := range []struct {
		name string
		hdr  map[string]string
		want int
	}{{"anonymous token", anonTok, 200}, {"alice's token", aliceTok, 200}, {"token for a wrong password", badTok, 401},
		{"forged token", map[string]string{"Authorization": "Bearer eyJ1IjoiYWxpY2UifQ.forged"}, 401}} {
		if resp, _ := reg.do(t, "GET", "/v2/", nil, c.hdr); resp.StatusCode != c.want {
			t.Fatalf("/v2/ with %s: %s, want %d", c.name, resp.Status, c.want)
		}
	}
	if resp, _ := reg.do(t, "GET", "/v2/", nil, basic("alice", "wrong")); resp.StatusCode != 401 {
		t.Fatalf("wrong password: %s", resp.Status)
	}
	if resp, _ := reg.do(t, "GET", "/v2/", nil, alice); resp.StatusCode != 200 {
		t.Fatalf("login: %s", resp.Status)
	}

	if st := reg.pushAs(t, "team/app", "v1", alice, []byte("private layer")); st != 201 {
		t.Fatalf("alice push team/app: %d", st)
	}
	if st := reg.pushAs(t, "team/app", "v0", aliceTok, []byte("private layer")); st != 201 {
		t.Fatalf("alice push team/app with her token: %d", st)
	}
	for _, hdr := range []map[string]string{anonTok, badTok} {
		if resp, _ := reg.do(t, "GET", "/v2/team/app/manifests/v1", nil, hdr); resp.StatusCode != 401 ||
			!strings.Contains(resp.Header.Get("WWW-Authenticate"), `scope="repository:team/app:pull,push"`) {
			t.Fatalf("private pull with an anonymous token: %s %v", resp.Status, resp.Header)
		}
	}
	if st := reg.pushAs(t, "team/app", "v2", nil, []byte("x")); st != 401 {
		t.Fatalf("anonymous push: %d, want 401", st)
	}
	if st := reg.pushAs(t, "team/app", "v2", bob, []byte("x")); st != 403 {
		t.Fatalf("bob push team/app: %d, want 403", st)
	}
	if st := reg.pushAs(t, "bob/tool", "v1", bob, []byte("bob layer")); st != 201 {
		t.Fatalf("bob push bob/tool: %d", st)
	}
	for _, c := range []struct {
		hdr  map[string]string
		want int
	}{{nil, 401}, {bob, 403}, {alice, 200}} {
		if resp, _ := reg.do(t, "GET", "/v2/team/app/manifests/v1", nil, c.hdr); resp.StatusCode != c.want {
			t.Fatalf("pull team/app: %s, want %d", resp.Status, c.want)
		}
		if resp, _ := reg.do(t, "GET", "/v2/team/app/tags/list", nil, c.hdr); resp.StatusCode != c.want {
			t.Fatalf("tags team/app: %s, want %d", resp.Status, c.want)
		}
	}
	catalog := func(hdr map[string]string) string {
		_, b := reg.do(t, "GET", "/v2/_catalog", nil, hdr)
		return string(b)
	}
	if c := catalog(bob); strings.Contains(c, "team/app") || !strings.Contains(c, "bob/tool") {
		t.Fatalf("bob's catalog: %s", c)
	}
	if c := catalog(nil); strings.Contains(c, "team/app") || strings.Contains(c, "bob/tool") {
		t.Fatalf("anonymous catalog: %s", c)
	}
	if c := catalog(alice); !strings.Contains(c, "team/app") {
		t.Fatalf("alice's catalog: %s", c)
	}

	// Private blob isolation: bob knows the digest of alice's layer.
	private := digest.FromBytes([]byte("private layer"))
	if resp, body := reg.do(t, "GET", "/v2/bob/tool/blobs/"+private.String(), nil, bob); resp.StatusCode != 404 || ociError(t, body) != "BLOB_UNKNOWN" {
		t.Fatalf("private layer through bob/tool: %s", resp.Status)
	}
	// ... and a mount needs pull rights on the source: it falls back to an
	// upload session, and the blob stays unreadable for bob.
	resp, _ = reg.do(t, "POST", "/v2/bob/tool/blobs/uploads/?mount="+private.String()+"&from=team/app", nil, bob)
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("mount without pull rights on the source: %s", resp.Status)
	}
	if resp, _ := reg.do(t, "GET", "/v2/bob/tool/blobs/"+private.String(), nil, bob); resp.StatusCode != 404 {
		t.Fatalf("private layer after a refused mount: %s", resp.Status)
	}
	mu.Lock()
	audit := logs.String()
	mu.Unlock()
	for _, want := range []string{`"event":"login","user":"alice"`, `"event":"login","user":"anonymous"`, `"event":"denied","user":"bob"`, `"event":"push"`} {
		if !strings.Contains(audit, want) {
			t.Errorf("audit log lacks %s", want)
		}
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func (r *testRegistry) reg() *Server { return r.srv.Config.Handler.(*Server) }

// TestNoPoisoningMirroredNames: a user with push rights on team/* cannot
// push library/alpine (or alpine, or a registry-prefixed name) and the next
// mirror pull gets the upstream bytes; Docker Hub credentials forwarded by
// dockerd do not break it; an explicit rule can allow such a push.
func TestNoPoisoningMirroredNames(t *testing.T) {
	users, pol := testPolicy(t)
	e := newMirrorEnv(t, Options{Users: users, Policy: pol})
	img := e.hub.Push("library/alpine", "latest", smallImage(30))
	alice := basic("alice", "alice-pw")
	for _, name := range []string{"library/alpine", "alpine", "docker.io/library/alpine", "ghcr.io/team/app"} {
		if st := e.pushAs(t, name, "latest", alice, []byte("poison")); st != http.StatusForbidden {
			t.Fatalf("alice push %s: %d, want 403", name, st)
		}
	}
	hubCreds := basic("someone-on-docker-hub", "hub-password")
	resp, _ := e.do(t, "GET", "/v2/library/alpine/manifests/latest", nil, hubCreds)
	if resp.StatusCode != 200 || resp.Header.Get("Docker-Content-Digest") != img.Index.String() {
		t.Fatalf("mirror pull with forwarded Hub credentials: %s %s", resp.Status, resp.Header.Get("Docker-Content-Digest"))
	}
	if err := e.pull(context.Background(), "library/alpine", "latest", ""); err != nil {
		t.Fatalf("anonymous mirror pull: %v", err)
	}
	if st := e.pushAs(t, "library/internal", "v1", basic("bot", "bot-pw"), []byte("internal")); st != 201 {
		t.Fatalf("explicitly allowed push to library/internal: %d", st)
	}
}

// TestSSRF: ?ns= and prefixes naming registries off the allow-list are
// refused at once, without a connection.
func TestSSRF(t *testing.T) {
	e := newMirrorEnv(t, Options{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan struct{}, 4)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
			accepted <- struct{}{}
		}
	}()
	for _, path := range []string{
		"/v2/x/y/manifests/latest?ns=" + ln.Addr().String(),
		"/v2/x/y/manifests/latest?ns=127.0.0.1:1",
		"/v2/x/y/manifests/latest?ns=169.254.169.254",
		"/v2/x/y/blobs/" + digest.FromString("x").String() + "?ns=169.254.169.254",
		"/v2/evil.example.com/x/manifests/latest",
		"/v2/localhost/x/manifests/latest",
	} {
		start := time.Now()
		resp, body := e.do(t, "GET", path, nil, nil)
		if resp.StatusCode != http.StatusForbidden || ociError(t, body) != "DENIED" || time.Since(start) > time.Second {
			t.Fatalf("%s: %s %s after %s", path, resp.Status, body, time.Since(start))
		}
	}
	select {
	case <-accepted:
		t.Fatal("Wharf connected to a registry that is not allowed")
	case <-time.After(100 * time.Millisecond):
	}
}

// TestStatusErrorsFollowPullRights: the status page lists a repository's
// recent errors only to those who may pull it; errors of no repository to
// everyone.
func TestStatusErrorsFollowPullRights(t *testing.T) {
	users, pol := testPolicy(t)
	reg := newTestRegistry(t, Options{Users: users, Policy: pol})
	reg.reg().svc.Refused("team/secret-app", "GET /v2/team/secret-app/manifests/v1 500: disk trouble")
	reg.reg().svc.Refused("", "GET /v2/_catalog 500: index trouble")
	for _, c := range []struct {
		name       string
		hdr        map[string]string
		seesSecret bool
	}{{"anonymous", nil, false}, {"bob", basic("bob", "bob-pw"), false}, {"alice", basic("alice", "alice-pw"), true}} {
		resp, body := reg.do(t, "GET", "/", nil, c.hdr)
		if resp.StatusCode != 200 {
			t.Fatalf("status page for %s: %s", c.name, resp.Status)
		}
		if !strings.Contains(string(body), "index trouble") {
			t.Errorf("%s does not see an error of no repository", c.name)
		}
		if strings.Contains(string(body), "secret-app") != c.seesSecret {
			t.Errorf("%s sees team/secret-app's error: %v, want %v", c.name, !c.seesSecret, c.seesSecret)
		}
	}
}
