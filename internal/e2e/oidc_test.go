package e2e

import (
	"encoding/json"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/wharf-registry/wharf/internal/hydratest"
	"github.com/wharf-registry/wharf/internal/testport"
)

// browser is a Go HTTP client that keeps cookies and follows redirects,
// as a browser does (the pages' meta refresh is followed by hand).
type browser struct {
	t  *testing.T
	cl *http.Client
}

func newBrowser(t *testing.T) *browser {
	jar, _ := cookiejar.New(nil)
	return &browser{t: t, cl: &http.Client{Jar: jar, Timeout: 30 * time.Second}}
}

// get returns the status and body of the page a GET ends on.
func (b *browser) get(u string) (int, string) {
	b.t.Helper()
	resp, err := b.cl.Get(u)
	if err != nil {
		b.t.Fatal(err)
	}
	return resp.StatusCode, readAll(b.t, resp)
}

func (b *browser) post(u string, form url.Values) (int, string) {
	b.t.Helper()
	req, _ := http.NewRequest(http.MethodPost, u, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := b.cl.Do(req)
	if err != nil {
		b.t.Fatal(err)
	}
	return resp.StatusCode, readAll(b.t, resp)
}

var (
	csrfField = regexp.MustCompile(`name="csrf" value="([^"]+)"`)
	refresh   = regexp.MustCompile(`http-equiv="refresh" content="0;url=([^"]+)"`)
	secretPre = regexp.MustCompile(`<pre class="mono" id="secret">(wharf_[^<]+)</pre>`)
)

// ssoSignIn signs in through the provider as who, then follows the
// callback page's refresh; it returns the page it lands on.
func ssoSignIn(t *testing.T, b *browser, w *wharfProc, h *hydratest.Server, who hydratest.Person, next string) (int, string) {
	t.Helper()
	h.SignInAs(who)
	status, page := b.get(w.url("/signin/sso?next=" + url.QueryEscape(next)))
	if status != http.StatusOK {
		return status, page
	}
	m := refresh.FindStringSubmatch(page)
	if m == nil {
		t.Fatalf("the callback page does not go on:\n%s", page)
	}
	return b.get(w.url(strings.ReplaceAll(m[1], "&amp;", "&")))
}

// TestOIDCSignIn signs people in to the console through a real OpenID
// Connect provider (Ory Hydra, PKCE enforced): groups from the ID token
// decide with the rules, a person makes an access token in the console and
// pushes with it through real dockerd, a new sign-in brings new groups,
// names of local users and another account's name are refused, forgetting
// someone ends their session and tokens, and with the provider down
// sign-ins fail with 503 while sessions and tokens go on.
func TestOIDCSignIn(t *testing.T) {
	requireTool(t, "dockerd")
	h := hydratest.Start(t)
	addr := testport.Pick(t)
	redirect := "http://" + addr + "/signin/sso/callback"
	clientID, clientSecret := h.Client(t, redirect, "openid profile email offline_access")

	dir := t.TempDir()
	secretFile, config := filepath.Join(dir, "client-secret"), filepath.Join(dir, "wharf.yaml")
	os.WriteFile(secretFile, []byte(clientSecret+"\n"), 0o600)
	os.WriteFile(config, []byte(teamRules), 0o644)
	htpasswd, _ := makeUsers(t, map[string]string{"root": "root-pw"}, "")
	w := startWharfAt(t, addr, "", []string{"WHARF_OIDC_CLIENT_SECRET_FILE=" + secretFile}, "--config", config, "--htpasswd", htpasswd,
		"--oidc-issuer", h.Issuer, "--oidc-client-id", clientID, "--oidc-redirect-url", redirect, "--oidc-recheck", "2s")
	t.Cleanup(func() {
		if t.Failed() {
			for _, l := range strings.Split(w.log.String(), "\n") {
				if strings.Contains(l, "single sign-on") {
					t.Log("wharf: " + l)
				}
			}
			for _, l := range strings.Split(h.Log(), "\n") {
				if strings.Contains(l, "level=error") {
					t.Log("hydra: " + l)
				}
			}
		}
	})
	if !strings.Contains(w.log.String(), `sso="`+h.Issuer) {
		t.Fatalf("the start does not name the provider:\n%s", w.log)
	}
	if _, page := newBrowser(t).get(w.url("/signin")); !strings.Contains(page, `href="/signin/sso?next=%2f"`) {
		t.Fatalf("the sign-in page offers no single sign-on:\n%s", page)
	}

	// alice of devs signs in and lands on the page she asked for.
	alice := newBrowser(t)
	status, page := ssoSignIn(t, alice, w, h, hydratest.Person{Subject: "id-alice", Name: "alice", Groups: []string{"devs"}}, "/tokens")
	if status != http.StatusOK || !strings.Contains(page, "<title>Access tokens") || !strings.Contains(page, "alice") {
		t.Fatalf("after the sign-in: %d\n%s", status, page)
	}
	// She makes a token in the console and pushes with it through dockerd.
	status, page = alice.post(w.url("/tokens"), url.Values{"csrf": {csrfField.FindStringSubmatch(page)[1]}, "action": {"create"},
		"name": {"alice-ci"}, "repos": {"team/**"}, "actions": {"pull", "push"}, "expires": {"30d"}})
	m := secretPre.FindStringSubmatch(page)
	if status != http.StatusOK || m == nil {
		t.Fatalf("creating a token in the console: %d\n%s", status, page)
	}
	aliceTok := m[1]
	d := startDockerdWith(t, map[string]any{"insecure-registries": []string{w.addr}})
	dockerLogin(t, d, w.addr, "alice-ci", aliceTok)
	ref := w.addr + "/team/app:v1"
	d.buildImage(t, ref, "scratch", "l.bin")
	d.roundTrip(t, ref)

	// bob, in no group, may pull and not push, with his token too.
	bob := newBrowser(t)
	if _, page = ssoSignIn(t, bob, w, h, hydratest.Person{Subject: "id-bob", Name: "bob"}, "/tokens"); !strings.Contains(page, "<title>Access tokens") {
		t.Fatalf("bob's sign-in:\n%s", page)
	}
	_, page = bob.post(w.url("/tokens"), url.Values{"csrf": {csrfField.FindStringSubmatch(page)[1]}, "action": {"create"},
		"name": {"bob-ci"}, "repos": {"team/**"}, "actions": {"pull", "push"}})
	bobTok := secretPre.FindStringSubmatch(page)[1]
	if got := pushStatus(t, w, "bob-ci", bobTok, "b1"); got != "403" {
		t.Fatalf("bob's token pushes: %s, want 403", got)
	}
	if got := getStatus(t, w, "/v2/team/app/manifests/v1", "Basic "+basicCreds("bob-ci", bobTok)); got != http.StatusOK {
		t.Fatalf("bob's token pulls: %d", got)
	}

	// A real browser: the session cookie (SameSite=Strict) holds after the
	// provider's redirect, and the page refresh lands on the page asked for.
	h.SignInAs(hydratest.Person{Subject: "id-dave", Name: "dave", Groups: []string{"devs"}})
	dom := chromium(t, "--virtual-time-budget=15000", "--dump-dom", w.url("/signin/sso?next=/tokens"))
	if !strings.Contains(dom, "<title>Access tokens · Wharf</title>") || !strings.Contains(dom, "dave") {
		t.Fatalf("chromium did not end signed in on the tokens page:\n%s", dom)
	}

	// The Users page lists both with their groups and tokens.
	users := getPage(t, w, "/users", "root", "root-pw")
	if !regexp.MustCompile(`(?s)<table id="sso-people">.*title="id-alice">alice</td><td>devs</td>.*<td class="num">1</td>`).MatchString(users) {
		t.Fatalf("the Users page does not list alice with her group and token:\n%s", users)
	}

	// alice signs in again out of devs: her token loses push.
	if _, page = ssoSignIn(t, newBrowser(t), w, h, hydratest.Person{Subject: "id-alice", Name: "alice", Groups: []string{"readers"}}, "/"); !strings.Contains(page, "alice") {
		t.Fatalf("alice's second sign-in:\n%s", page)
	}
	if got := pushStatus(t, w, "alice-ci", aliceTok, "a2"); got != "403" {
		t.Fatalf("alice's token out of devs pushes: %s, want 403", got)
	}

	// Refused: a local user's name, another account's name, the
	// provider's refusal, a callback this browser did not start.
	for _, c := range []struct {
		who    hydratest.Person
		status int
		says   string
	}{
		{hydratest.Person{Subject: "id-x", Name: "root", Groups: []string{"devs"}}, http.StatusForbidden, "root is a local user"},
		{hydratest.Person{Subject: "id-mallory", Name: "alice", Groups: []string{"devs"}}, http.StatusForbidden, "belongs to another account"},
		{hydratest.Person{Subject: "id-carol", Name: "carol", Refuse: true}, http.StatusForbidden, "did not sign you in"},
	} {
		b := newBrowser(t)
		if status, page := ssoSignIn(t, b, w, h, c.who, "/"); status != c.status || !strings.Contains(page, c.says) {
			t.Fatalf("%+v: %d, want %d saying %q\n%s\n%s", c.who, status, c.status, c.says, page, w.log)
		}
		if status, _ := b.get(w.url("/tokens")); status != http.StatusOK || b.signedIn(w) {
			t.Fatalf("%+v: a refused sign-in left a session", c.who)
		}
	}
	if status, page := newBrowser(t).get(w.url("/signin/sso/callback?state=abc&code=def")); status != http.StatusBadRequest || !strings.Contains(page, "not started in this browser") {
		t.Fatalf("a callback nobody started: %d\n%s", status, page)
	}

	// erin is rechecked with the provider every 2 s: her token keeps
	// working (each recheck rotates her refresh token), until the
	// provider revokes her grants; then she is forgotten, her session
	// ends and her token is refused.
	erin := newBrowser(t)
	_, page = ssoSignIn(t, erin, w, h, hydratest.Person{Subject: "id-erin", Name: "erin", Groups: []string{"devs"}}, "/tokens")
	_, page = erin.post(w.url("/tokens"), url.Values{"csrf": {csrfField.FindStringSubmatch(page)[1]}, "action": {"create"},
		"name": {"erin-ci"}, "repos": {"team/**"}, "actions": {"pull"}})
	erinTok := secretPre.FindStringSubmatch(page)[1]
	time.Sleep(5 * time.Second)
	if got := getStatus(t, w, "/v2/team/app/manifests/v1", "Basic "+basicCreds("erin-ci", erinTok)); got != http.StatusOK || !erin.signedIn(w) {
		t.Fatalf("erin after two rechecks: %d, signed in %v\n%s", got, erin.signedIn(w), w.log)
	}
	h.RevokeConsent(t, "id-erin")
	deadline := time.Now().Add(20 * time.Second)
	for getStatus(t, w, "/v2/team/app/manifests/v1", "Basic "+basicCreds("erin-ci", erinTok)) != http.StatusUnauthorized {
		if time.Now().After(deadline) {
			t.Fatalf("erin's token still works 20 s after the provider revoked her:\n%s", w.log)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if erin.signedIn(w) || !strings.Contains(w.log.String(), "person-gone") {
		t.Fatalf("erin's session outlived her, or her removal was not audited:\n%s", w.log)
	}

	// The admin API lists the people and forgets one; bob may not.
	var people []struct {
		Name   string   `json:"name"`
		Groups []string `json:"groups"`
		Tokens int      `json:"tokens"`
	}
	apiGet(t, w, "/api/v1/people", "root", "root-pw", &people)
	if len(people) != 3 || people[0].Name != "alice" || people[0].Groups[0] != "readers" || people[1].Name != "dave" || people[2].Name != "bob" || people[2].Tokens != 1 {
		t.Fatalf("GET /api/v1/people: %+v", people)
	}
	if got := apiDo(t, w, http.MethodGet, "/api/v1/people", "bob-ci", bobTok); got != http.StatusForbidden {
		t.Fatalf("bob lists the people: %d, want 403", got)
	}
	if got := apiDo(t, w, http.MethodDelete, "/api/v1/people/dave", "root", "root-pw"); got != http.StatusOK {
		t.Fatalf("DELETE /api/v1/people/dave: %d", got)
	}
	if got := apiDo(t, w, http.MethodDelete, "/api/v1/people/dave", "root", "root-pw"); got != http.StatusNotFound {
		t.Fatalf("forgetting dave twice: %d, want 404", got)
	}

	// root forgets alice: her session ends and her token is revoked.
	csrf := csrfField.FindStringSubmatch(getPage(t, w, "/users", "root", "root-pw"))[1]
	req, _ := http.NewRequest(http.MethodPost, w.url("/users"), strings.NewReader(url.Values{"csrf": {csrf}, "action": {"forget-person"}, "name": {"alice"}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth("root", "root-pw")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if page := readAll(t, resp); resp.StatusCode != http.StatusOK || !strings.Contains(page, "Forgot alice") || !strings.Contains(page, "1 access tokens were revoked") {
		t.Fatalf("forgetting alice: %s\n%s", resp.Status, page)
	}
	if alice.signedIn(w) {
		t.Fatal("alice's session outlived her record")
	}
	if got := getStatus(t, w, "/v2/team/app/manifests/v1", "Basic "+basicCreds("alice-ci", aliceTok)); got != http.StatusUnauthorized {
		t.Fatalf("alice's token after she was forgotten: %d, want 401", got)
	}
	if !strings.Contains(w.log.String(), `"event":"person-forget"`) && !strings.Contains(w.log.String(), "person-forget") {
		t.Fatalf("the forget is not audited:\n%s", w.log)
	}

	// The provider down: bob's session and token go on. A server that
	// starts meanwhile starts, and its sign-ins say the provider does not
	// answer (503) within the timeout.
	h.Stop()
	if !bob.signedIn(w) {
		t.Fatal("bob's session ended with the provider down")
	}
	if got := getStatus(t, w, "/v2/team/app/manifests/v1", "Basic "+basicCreds("bob-ci", bobTok)); got != http.StatusOK {
		t.Fatalf("bob's token with the provider down: %d", got)
	}
	w2 := startWharfWithEnv(t, "", []string{"WHARF_OIDC_CLIENT_SECRET_FILE=" + secretFile}, "--config", config, "--htpasswd", htpasswd,
		"--oidc-issuer", h.Issuer, "--oidc-client-id", clientID, "--oidc-redirect-url", redirect, "--oidc-timeout", "2s")
	start := time.Now()
	if status, page := newBrowser(t).get(w2.url("/signin/sso")); status != http.StatusServiceUnavailable || !strings.Contains(page, "does not answer") || time.Since(start) > 10*time.Second {
		t.Fatalf("provider down: %d after %v\n%s", status, time.Since(start), page)
	}
	if getPage(t, w2, "/users", "root", "root-pw") == "" { // password sign-ins are not held up
		t.Fatal("empty Users page")
	}
}

// signedIn reports whether the browser's console session is a person's.
func (b *browser) signedIn(w *wharfProc) bool {
	b.t.Helper()
	_, page := b.get(w.url("/tokens"))
	return strings.Contains(page, "<title>Access tokens")
}

// apiGet GETs an admin API path with Basic credentials into out.
func apiGet(t *testing.T, w *wharfProc, path, user, pass string, out any) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, w.url(path), nil)
	req.SetBasicAuth(user, pass)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s", path, resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
}

// apiDo sends a body-less admin API request and returns its status.
func apiDo(t *testing.T, w *wharfProc, method, path, user, pass string) int {
	t.Helper()
	req, _ := http.NewRequest(method, w.url(path), nil)
	req.SetBasicAuth(user, pass)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}
