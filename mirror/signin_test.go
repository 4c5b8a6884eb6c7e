package mirror

import (
	"encoding/json"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/wharf-registry/wharf/policy"
)

// countingUsers counts bcrypt checks.
type countingUsers struct {
	*policy.Users
	verifies atomic.Int64
}

func (c *countingUsers) Verify(user, pass string) bool {
	c.verifies.Add(1)
	return c.Users.Verify(user, pass)
}

func tokenFor(t *testing.T, reg *testRegistry, hdr map[string]string) (int, map[string]string) {
	t.Helper()
	resp, body := reg.do(t, "GET", "/token?service=wharf&scope=repository:team/app:pull", nil, hdr)
	var tok struct{ Token string }
	json.Unmarshal(body, &tok)
	return resp.StatusCode, map[string]string{"Authorization": "Bearer " + tok.Token}
}

// TestTokensFollowCredentials: a token stops working as soon as its user
// is deleted or their password changes (the reload that follows), not when
// it expires.
func TestTokensFollowCredentials(t *testing.T) {
	users, pol := testPolicy(t)
	reg := newTestRegistry(t, Options{Users: users, Policy: pol})
	_, aliceTok := tokenFor(t, reg, basic("alice", "alice-pw"))
	_, bobTok := tokenFor(t, reg, basic("bob", "bob-pw"))
	for _, hdr := range []map[string]string{aliceTok, bobTok} {
		if resp, _ := reg.do(t, "GET", "/v2/", nil, hdr); resp.StatusCode != 200 {
			t.Fatalf("fresh token: %s", resp.Status)
		}
	}
	// A new users file: alice deleted, bob's password changed.
	next, err := policy.ParseHtpasswd(strings.NewReader(""))
	if err != nil {
		t.Fatal(err)
	}
	next.Set("bob", "bob-new-pw")
	next.Set("bot", "bot-pw")
	reg.reg().SetAccess(next, pol)
	for name, hdr := range map[string]map[string]string{"deleted user's": aliceTok, "old password's": bobTok} {
		if resp, _ := reg.do(t, "GET", "/v2/", nil, hdr); resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("%s token after the reload: %s", name, resp.Status)
		}
	}
	if _, tok := tokenFor(t, reg, basic("bob", "bob-new-pw")); true {
		if resp, _ := reg.do(t, "GET", "/v2/", nil, tok); resp.StatusCode != 200 {
			t.Fatalf("token for the new password: %s", resp.Status)
		}
	}
}

// TestSignInThrottle: 100 wrong passwords from one address are slowed down
// (429 with Retry-After after the first five, with no bcrypt run for
// them) and audited; another user from another address signs in at once;
// repeating one wrong credential, as dockerd does with its Docker Hub
// login, is no new guess and keeps anonymous pulls working; and requests
// anonymous callers may make never run bcrypt.
func TestSignInThrottle(t *testing.T) {
	plain, pol := testPolicy(t)
	users := &countingUsers{Users: plain}
	reg := newTestRegistry(t, Options{Users: users, Policy: pol})
	stopped := time.Now()
	reg.reg().gate.SetClock(func() time.Time { return stopped }) // no backoff runs out during the test
	statuses := map[int]int{}
	for i := 0; i < 100; i++ {
		st, _ := tokenFor(t, reg, basic("alice", "guess-"+string(rune('a'+i%26))+string(rune('a'+i/26))))
		statuses[st]++
	}
	if statuses[http.StatusTooManyRequests] != 95 || users.verifies.Load() != 5 {
		t.Fatalf("100 guesses: statuses %v, %d bcrypt checks", statuses, users.verifies.Load())
	}
	resp, _ := reg.do(t, "GET", "/v2/", nil, basic("alice", "guess-zz"))
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("Basic guess while throttled: %s %v", resp.Status, resp.Header)
	}
	// bob, from another address, is not slowed by alice's guesser.
	req, _ := http.NewRequest("GET", reg.srv.URL+"/v2/", nil)
	req.SetBasicAuth("bob", "bob-pw")
	rec := &responseRecorder{header: http.Header{}}
	req.RemoteAddr = "127.0.0.77:4000"
	reg.srv.Config.Handler.ServeHTTP(rec, req)
	if rec.status != 200 {
		t.Fatalf("bob from another address: %d", rec.status)
	}

	// Anonymous-allowed requests with credentials: no bcrypt at all.
	layer := []byte("public layer")
	if st := reg.pushAs(t, "team/pub", "1", basic("alice", "alice-pw"), layer); st != http.StatusTooManyRequests {
		// alice is throttled from this address: her push must wait too.
		t.Fatalf("push by a throttled user: %d", st)
	}
	open, _ := policy.New(0, policy.Config{})
	reg.reg().SetAccess(users, open) // nobody needs to sign in for anything
	before := users.verifies.Load()
	d := digest.FromBytes(layer)
	if st := reg.pushAs(t, "team/pub", "1", basic("docker-hub-user", "hub-pw"), layer); st != 201 {
		t.Fatalf("push where anonymous callers may: %d", st)
	}
	for i := 0; i < 20; i++ {
		if resp, _ := reg.do(t, "GET", "/v2/team/pub/blobs/"+d.String(), nil, basic("docker-hub-user", "hub-pw")); resp.StatusCode != 200 {
			t.Fatalf("pull %d with forwarded Docker Hub credentials: %s", i, resp.Status)
		}
	}
	if n := users.verifies.Load() - before; n != 0 {
		t.Fatalf("%d bcrypt checks for requests anonymous callers may make", n)
	}

	// The same wrong credential over and over (dockerd's forwarded login)
	// costs one bcrypt check and never throttles.
	reg.reg().SetAccess(users, pol)
	before = users.verifies.Load()
	for i := 0; i < 30; i++ {
		req, _ := http.NewRequest("GET", reg.srv.URL+"/token?service=wharf", nil)
		req.SetBasicAuth("docker-hub-user", "hub-pw")
		req.RemoteAddr = "127.0.0.88:5000"
		rec := &responseRecorder{header: http.Header{}}
		reg.srv.Config.Handler.ServeHTTP(rec, req)
		if rec.status != 200 {
			t.Fatalf("token %d with a repeated wrong credential: %d", i, rec.status)
		}
	}
	if n := users.verifies.Load() - before; n != 1 {
		t.Fatalf("%d bcrypt checks for one credential repeated 30 times, want 1", n)
	}
}

// responseRecorder is a minimal ResponseWriter for requests served in
// process with a chosen RemoteAddr.
type responseRecorder struct {
	header http.Header
	status int
	body   strings.Builder
}

func (r *responseRecorder) Header() http.Header { return r.header }
func (r *responseRecorder) WriteHeader(s int) {
	if r.status == 0 {
		r.status = s
	}
}
func (r *responseRecorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = 200
	}
	return r.body.Write(b)
}
