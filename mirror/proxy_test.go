package mirror

import (
	"encoding/json"
	"io"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// TestTrustedProxy: X-Forwarded-* headers set the token realm and the
// client's address only from a trusted peer; from any other peer they
// change nothing; --public-url fixes the realm.
func TestTrustedProxy(t *testing.T) {
	users, pol := testPolicy(t)
	realm := func(reg *testRegistry, hdr map[string]string) string {
		t.Helper()
		resp, _ := reg.do(t, "GET", "/v2/", nil, hdr)
		if resp.StatusCode != 401 {
			t.Fatalf("/v2/: %s", resp.Status)
		}
		return resp.Header.Get("WWW-Authenticate")
	}
	fwd := map[string]string{"X-Forwarded-Proto": "https", "X-Forwarded-Host": "registry.example", "X-Forwarded-For": "203.0.113.9, 198.51.100.7"}

	trusting := newTestRegistry(t, Options{Users: users, Policy: pol, MaxUploadsPerClient: 1,
		TrustedProxies: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("198.51.100.0/24")}})
	if got := realm(trusting, fwd); !strings.HasPrefix(got, `Bearer realm="https://registry.example/token"`) {
		t.Fatalf("realm behind a trusted proxy: %s", got)
	}
	if got := realm(trusting, map[string]string{"X-Forwarded-Proto": "https"}); !strings.HasPrefix(got, `Bearer realm="https://127.0.0.1:`) {
		t.Fatalf("realm with only X-Forwarded-Proto: %s", got)
	}
	if got := realm(trusting, map[string]string{"X-Forwarded-Host": `evil"/x`}); !strings.HasPrefix(got, `Bearer realm="http://127.0.0.1:`) {
		t.Fatalf("realm with a malformed X-Forwarded-Host: %s", got)
	}
	// The client's address is the nearest untrusted X-Forwarded-For entry:
	// per-client upload limits apply to it, not to the proxy.
	alice := basic("alice", "alice-pw")
	hold := func(client string) (release func()) {
		pr, pw := io.Pipe()
		req, _ := http.NewRequest("POST", trusting.srv.URL+"/v2/team/a/blobs/uploads/?digest=sha256:"+strings.Repeat("0", 64), pr)
		req.Header.Set("Authorization", alice["Authorization"])
		req.Header.Set("X-Forwarded-For", client)
		done := make(chan struct{})
		go func() {
			defer close(done)
			if resp, err := trusting.srv.Client().Do(req); err == nil {
				resp.Body.Close()
			}
		}()
		pw.Write([]byte("x"))
		for i := 0; ; i++ {
			_, n := trusting.reg().reg.Uploads(client)
			if n == 1 {
				break
			}
			if i == 1000 {
				t.Fatalf("the upload from %s never started", client)
			}
			time.Sleep(5 * time.Millisecond)
		}
		return func() { pw.Close(); <-done }
	}
	release := hold("203.0.113.9")
	upload := func(xff string) int {
		resp, _ := trusting.do(t, "POST", "/v2/team/b/blobs/uploads/", nil, map[string]string{"Authorization": alice["Authorization"], "X-Forwarded-For": xff})
		return resp.StatusCode
	}
	if st := upload("203.0.113.10"); st != http.StatusAccepted {
		t.Fatalf("another client behind the same proxy: %d", st)
	}
	if st := upload("203.0.113.9, 198.51.100.7"); st != http.StatusTooManyRequests {
		t.Fatalf("the same client again, through two proxies: %d, want 429", st)
	}
	release()

	// From a peer that is not trusted, the same headers change nothing.
	other := newTestRegistry(t, Options{Users: users, Policy: pol, MaxUploadsPerClient: 1,
		TrustedProxies: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}})
	if got := realm(other, fwd); !strings.HasPrefix(got, `Bearer realm="http://127.0.0.1:`) {
		t.Fatalf("realm with forged headers from an untrusted peer: %s", got)
	}
	if r := other.reg().gate.FromProxy(&http.Request{RemoteAddr: "127.0.0.1:1", Header: http.Header{"X-Forwarded-For": {"203.0.113.9"}}}); r.RemoteAddr != "127.0.0.1:1" {
		t.Fatalf("client address from an untrusted peer's X-Forwarded-For: %s", r.RemoteAddr)
	}

	fixed := newTestRegistry(t, Options{Users: users, Policy: pol, PublicURL: "https://registry.example:8443"})
	if got := realm(fixed, nil); !strings.HasPrefix(got, `Bearer realm="https://registry.example:8443/token"`) {
		t.Fatalf("realm with a public URL: %s", got)
	}
}

// TestSharedSecret: a token issued by one node is accepted by another with
// the same --secret (registry:2's http.secret), and refused by a node
// with another secret or none.
func TestSharedSecret(t *testing.T) {
	users, pol := testPolicy(t)
	a := newTestRegistry(t, Options{Users: users, Policy: pol, Secret: "shared"})
	b := newTestRegistry(t, Options{Users: users, Policy: pol, Secret: "shared"})
	c := newTestRegistry(t, Options{Users: users, Policy: pol, Secret: "other"})
	d := newTestRegistry(t, Options{Users: users, Policy: pol})
	resp, body := a.do(t, "GET", "/token?service=wharf&scope=repository:team/app:push,pull", nil, basic("alice", "alice-pw"))
	var tok struct{ Token string }
	if err := json.Unmarshal(body, &tok); err != nil || resp.StatusCode != 200 || tok.Token == "" {
		t.Fatalf("token from a: %s %s", resp.Status, body)
	}
	bearer := map[string]string{"Authorization": "Bearer " + tok.Token}
	for _, n := range []struct {
		name string
		reg  *testRegistry
		want int
	}{{"a", a, 200}, {"b (same secret)", b, 200}, {"c (another secret)", c, 401}, {"d (no secret)", d, 401}} {
		if resp, _ := n.reg.do(t, "GET", "/v2/", nil, bearer); resp.StatusCode != n.want {
			t.Errorf("a's token on %s: %s, want %d", n.name, resp.Status, n.want)
		}
	}
}
