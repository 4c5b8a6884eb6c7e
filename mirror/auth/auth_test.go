package auth

import (
	"encoding/base64"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wharf-registry/wharf/policy"
)

// countingUsers counts password checks (bcrypt in production).
type countingUsers struct {
	*policy.Users
	verifies atomic.Int64
}

func (c *countingUsers) Verify(user, pass string) bool {
	c.verifies.Add(1)
	return c.Users.Verify(user, pass)
}

func testGate(t *testing.T, o Options) (*Gate, *countingUsers) {
	t.Helper()
	users, err := policy.ParseHtpasswd(strings.NewReader(""))
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range []string{"alice", "bob"} {
		if err := users.Set(u, u+"-pw"); err != nil {
			t.Fatal(err)
		}
	}
	pol, err := policy.New(users.Len(), policy.Config{Rules: []policy.Rule{
		{Repos: []string{"team/*"}, Who: []string{"alice"}, Actions: []policy.Action{policy.Pull, policy.Push}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	cu := &countingUsers{Users: users}
	g := New(o)
	g.SetAccess(cu, pol)
	return g, cu
}

func basicReq(user, pass string) *http.Request {
	r := httptest.NewRequest("GET", "/v2/", nil)
	r.SetBasicAuth(user, pass)
	return r
}

// TestAdmitResolvesOnce: a caller with Basic credentials is verified on
// first use and once only; a wrong password leaves an anonymous caller
// marked bad; no credentials cost nothing.
func TestAdmitResolvesOnce(t *testing.T) {
	g, users := testGate(t, Options{})
	r := g.Admit(basicReq("alice", "alice-pw"))
	if users.verifies.Load() != 0 {
		t.Fatal("a password was checked before anyone asked who calls")
	}
	for range 3 {
		if c := CallerOf(r); c.User != "alice" || c.BadCredentials {
			t.Fatalf("caller %+v", c)
		}
	}
	if n := users.verifies.Load(); n != 1 {
		t.Fatalf("%d password checks for one request", n)
	}
	if c := CallerOf(g.Admit(basicReq("alice", "wrong"))); c.User != "" || !c.BadCredentials {
		t.Fatalf("wrong password: %+v", c)
	}
	anon := httptest.NewRequest("GET", "/v2/", nil)
	if c := CallerOf(anon); g.Admit(anon) != anon || c.User != "" || c.Groups != nil || c.Scope != nil || c.BadCredentials || c.Token || c.Node != "" {
		t.Fatal("a request without credentials was changed or has a caller")
	}
}

// TestTokens: a token from the realm names its user until it expires, a
// new password or a deleted user ends it, and a forged or altered one is
// no token.
func TestTokens(t *testing.T) {
	g, users := testGate(t, Options{Secret: "s"})
	now := time.Now()
	tok := g.tokens.issue("alice", g.Generation("alice"), "", false, now)
	bearer := func(tok string) Caller {
		r := httptest.NewRequest("GET", "/v2/", nil)
		r.Header.Set("Authorization", "Bearer "+tok)
		return CallerOf(g.Admit(r))
	}
	if c := bearer(tok); c.User != "alice" || !c.Token || c.BadCredentials {
		t.Fatalf("valid token: %+v", c)
	}
	payload, sig, _ := strings.Cut(tok, ".")
	raw, _ := base64.RawURLEncoding.DecodeString(payload)
	forged := base64.RawURLEncoding.EncodeToString([]byte(strings.Replace(string(raw), "alice", "bob", 1))) + "." + sig
	if c := bearer(forged); c.User != "" || c.Token || !c.BadCredentials {
		t.Fatalf("altered token: %+v", c)
	}
	if _, ok := g.tokens.check(tok, now.Add(tokenTTL+time.Second)); ok {
		t.Fatal("an expired token is valid")
	}
	other := New(Options{Secret: "other"})
	if _, ok := other.tokens.check(tok, now); ok {
		t.Fatal("a token signed with another secret is valid")
	}
	if _, ok := New(Options{Secret: "s"}).tokens.check(tok, now); !ok {
		t.Fatal("a node sharing the secret refuses the token")
	}
	users.Set("alice", "new-pw")
	if c := bearer(tok); c.User != "" || !c.BadCredentials {
		t.Fatalf("token after a password change: %+v", c)
	}
	node := g.NodeToken("n1")
	if c := bearer(node); c.Node != "n1" || c.User != "" || !c.Token {
		t.Fatalf("node token: %+v", c)
	}
}

// TestSignInThrottled: after the free failures a client address waits,
// without a password check, and the wait is audited.
func TestSignInThrottled(t *testing.T) {
	var audits []AuditEvent
	g, users := testGate(t, Options{Audit: auditFunc(func(e AuditEvent) { audits = append(audits, e) })})
	stopped := time.Now()
	g.SetClock(func() time.Time { return stopped })
	for i := range signinFree {
		if _, ok, retry, _ := g.SignIn(basicReq("alice", fmt.Sprint("guess", i)), "alice", fmt.Sprint("guess", i)); ok || retry != 0 {
			t.Fatalf("guess %d: ok %v, retry %v", i, ok, retry)
		}
	}
	before := users.verifies.Load()
	_, ok, retry, _ := g.SignIn(basicReq("alice", "alice-pw"), "alice", "alice-pw")
	if ok || retry <= 0 || users.verifies.Load() != before {
		t.Fatalf("after %d failures: ok %v, retry %v, %d checks more", signinFree, ok, retry, users.verifies.Load()-before)
	}
	if len(audits) != signinFree+1 || audits[len(audits)-1].Attrs["reason"] != "throttled after failed sign-ins" {
		t.Fatalf("audits: %+v", audits)
	}
}

type auditFunc func(AuditEvent)

func (f auditFunc) Audit(e AuditEvent) { f(e) }

// TestSessions: a console session ends with its sign-out, here and
// through the revocations the index keeps, and with a new password.
func TestSessions(t *testing.T) {
	rev := &memRevocations{m: map[string]time.Time{}}
	g, users := testGate(t, Options{Revocations: rev})
	w := httptest.NewRecorder()
	g.StartSession(w, httptest.NewRequest("POST", "/signin", nil), "alice")
	cookie := w.Result().Cookies()[0]
	if cookie.Name != SessionCookie || !cookie.HttpOnly || cookie.SameSite != http.SameSiteStrictMode || cookie.Secure {
		t.Fatalf("cookie %+v", cookie)
	}
	view := func(g *Gate) Viewer {
		r := httptest.NewRequest("GET", "/", nil)
		r.AddCookie(cookie)
		return g.Viewer(httptest.NewRecorder(), r)
	}
	if v := view(g); v.User != "alice" || v.CSRF() == "" {
		t.Fatalf("viewer %+v", v)
	}
	// Another node (same secret, same index) sees the sign-out.
	other := New(Options{Revocations: rev})
	other.tokens, other.sessions.key = g.tokens, g.sessions.key
	other.SetAccess(users, g.Policy())
	if v := other.Viewer(httptest.NewRecorder(), func() *http.Request {
		r := httptest.NewRequest("GET", "/", nil)
		r.AddCookie(cookie)
		return r
	}()); v.User != "alice" {
		t.Fatalf("the other node: %+v", v)
	}
	r := httptest.NewRequest("POST", "/signout", nil)
	r.AddCookie(cookie)
	if user, ended := g.EndSession(httptest.NewRecorder(), r); user != "alice" || !ended {
		t.Fatalf("sign-out: %q %v", user, ended)
	}
	for name, gate := range map[string]*Gate{"this node": g, "the other node": other} {
		if v := view(gate); v.User != "" {
			t.Fatalf("%s after the sign-out: %+v", name, v)
		}
	}
	w = httptest.NewRecorder()
	g.StartSession(w, httptest.NewRequest("POST", "/signin", nil), "bob")
	cookie = w.Result().Cookies()[0]
	users.Set("bob", "new-pw")
	if v := view(g); v.User != "" {
		t.Fatalf("a session from before a password change: %+v", v)
	}
}

type memRevocations struct{ m map[string]time.Time }

func (m *memRevocations) Revoke(id string, until time.Time) error { m.m[id] = until; return nil }
func (m *memRevocations) Revoked(id string) (bool, error)         { _, ok := m.m[id]; return ok, nil }

// TestFromProxy: a trusted proxy's forwarded client, scheme and host are
// believed, up to the first untrusted hop; anyone else's are not.
func TestFromProxy(t *testing.T) {
	g := New(Options{TrustedProxies: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}})
	r := httptest.NewRequest("GET", "/v2/", nil)
	r.RemoteAddr = "127.0.0.1:4000"
	r.Header.Set("X-Forwarded-For", "198.51.100.7, 203.0.113.9, 127.0.0.2")
	r.Header.Set("X-Forwarded-Proto", "https")
	r.Header.Set("X-Forwarded-Host", "registry.example")
	got := g.FromProxy(r)
	if ClientIP(got) != "203.0.113.9" || g.ExternalBase(got) != "https://registry.example" || !g.OverTLS(got) {
		t.Fatalf("through the proxy: client %s, base %s", ClientIP(got), g.ExternalBase(got))
	}
	r.RemoteAddr = "192.0.2.1:4000" // not a trusted proxy
	got = g.FromProxy(r)
	if ClientIP(got) != "192.0.2.1" || g.ExternalBase(got) != "http://example.com" {
		t.Fatalf("from elsewhere: client %s, base %s", ClientIP(got), g.ExternalBase(got))
	}
	if c := g.Challenge(got, "repository:a:pull"); c != `Bearer realm="http://example.com/token",service="wharf",scope="repository:a:pull"` {
		t.Fatalf("challenge %s", c)
	}
}

// TestVisible: the listing keeps what the subject may pull, pages through
// the catalog and stops at n.
func TestVisible(t *testing.T) {
	g, _ := testGate(t, Options{})
	var all []string
	for i := range 250 {
		all = append(all, fmt.Sprintf("other/r%03d", i), fmt.Sprintf("team/r%03d", i))
	}
	sort.Strings(all) // a catalog is in name order
	list := func(n int, last string) ([]string, bool, error) {
		i := 0
		for i < len(all) && all[i] <= last {
			i++
		}
		end := min(i+n, len(all))
		return all[i:end], end < len(all), nil
	}
	mirrored := func(string) bool { return false }
	got, more, err := g.Visible(policy.Subject{User: "alice"}, 120, "", list, mirrored)
	if err != nil || len(got) != 120 || !more || got[0] != "team/r000" || got[119] != "team/r119" {
		t.Fatalf("alice's first page: %d names, more %v, %v (%v…)", len(got), more, err, got[:min(3, len(got))])
	}
	if got, _, _ := g.Visible(policy.Subject{}, 10, "", list, mirrored); len(got) != 0 {
		t.Fatalf("anonymous sees %v", got)
	}
}

// TestCrossSite: a browser's cross-site or foreign-origin request is
// recognised; a script's (no such headers) is not.
func TestCrossSite(t *testing.T) {
	for _, c := range []struct {
		h    map[string]string
		want bool
	}{
		{map[string]string{}, false},
		{map[string]string{"Sec-Fetch-Site": "same-origin"}, false},
		{map[string]string{"Sec-Fetch-Site": "cross-site"}, true},
		{map[string]string{"Origin": "http://example.com"}, false},
		{map[string]string{"Origin": "http://evil.example"}, true},
	} {
		r := httptest.NewRequest("POST", "/api/v1/gc", nil)
		for k, v := range c.h {
			r.Header.Set(k, v)
		}
		if got := CrossSite(r); got != c.want {
			t.Errorf("%v: %v, want %v", c.h, got, c.want)
		}
	}
}

// TestUntrustedForwardedHeadersWarned: X-Forwarded-* headers from a peer
// that is not a trusted proxy are ignored, with one warning per peer that
// names the flag.
func TestUntrustedForwardedHeadersWarned(t *testing.T) {
	var logs strings.Builder
	g := New(Options{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	send := func(peer string, hdr ...string) *http.Request {
		r := httptest.NewRequest("GET", "/v2/", nil)
		r.RemoteAddr = peer
		for i := 0; i+1 < len(hdr); i += 2 {
			r.Header.Set(hdr[i], hdr[i+1])
		}
		return g.FromProxy(r)
	}
	got := send("127.0.0.5:1000", "X-Forwarded-Proto", "https", "X-Forwarded-For", "198.51.100.7")
	if g.ExternalBase(got) != "http://example.com" || ClientIP(got) != "127.0.0.5" {
		t.Fatalf("untrusted headers were believed: %s %s", g.ExternalBase(got), ClientIP(got))
	}
	send("127.0.0.5:1001", "X-Forwarded-Proto", "https")
	send("127.0.0.6:1000") // no forwarded headers: nothing to say
	if n := strings.Count(logs.String(), "--trusted-proxy"); n != 1 || !strings.Contains(logs.String(), "peer=127.0.0.5") {
		t.Fatalf("%d warnings:\n%s", n, logs.String())
	}
	send("127.0.0.7:1000", "X-Forwarded-Host", "registry.example")
	if n := strings.Count(logs.String(), "--trusted-proxy"); n != 2 {
		t.Fatalf("%d warnings after a second peer:\n%s", n, logs.String())
	}
}
