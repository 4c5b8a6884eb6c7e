package mirror

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/wharf-registry/wharf/cache"
	"github.com/wharf-registry/wharf/cache/stores"
	"github.com/wharf-registry/wharf/mirror/admin"
	"github.com/wharf-registry/wharf/mirror/auth"
	"github.com/wharf-registry/wharf/mirror/registry"
	"github.com/wharf-registry/wharf/policy"
)

// browser is an HTTP client with a cookie jar that does not follow
// redirects, as a test's stand-in for a browser.
type browser struct {
	t    *testing.T
	base string
	c    *http.Client
}

func newBrowser(t *testing.T, srv *httptest.Server) *browser {
	jar, _ := cookiejar.New(nil)
	c := *srv.Client() // a client of its own: the server's is shared
	c.Jar = jar
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return &browser{t: t, base: srv.URL, c: &c}
}

func (b *browser) get(path string, hdr ...string) (*http.Response, string) {
	b.t.Helper()
	req, _ := http.NewRequest("GET", b.base+path, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	return b.send(req)
}

func (b *browser) post(path string, form url.Values, hdr ...string) (*http.Response, string) {
	b.t.Helper()
	req, _ := http.NewRequest("POST", b.base+path, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	return b.send(req)
}

func (b *browser) send(req *http.Request) (*http.Response, string) {
	b.t.Helper()
	resp, err := b.c.Do(req)
	if err != nil {
		b.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp, string(body)
}

var csrfField = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

// csrf is the token of the first form on page.
func (b *browser) csrf(page string) string {
	b.t.Helper()
	m := csrfField.FindStringSubmatch(page)
	if m == nil {
		b.t.Fatalf("no CSRF token on the page:\n%s", page)
	}
	return m[1]
}

func (b *browser) signIn(user, pass string) *http.Response {
	b.t.Helper()
	_, page := b.get("/signin")
	resp, body := b.post("/signin", url.Values{"csrf": {b.csrf(page)}, "user": {user}, "password": {pass}, "next": {"/repositories"}})
	if resp.StatusCode == http.StatusSeeOther && resp.Header.Get("Location") != "/repositories" {
		b.t.Fatalf("sign-in sent to %q", resp.Header.Get("Location"))
	}
	_ = body
	return resp
}

func sessionOf(resp *http.Response) *http.Cookie {
	for _, c := range resp.Cookies() {
		if c.Name == auth.SessionCookie {
			return c
		}
	}
	return nil
}

// TestConsoleSignIn: the form signs in with the htpasswd users; the
// session cookie is HttpOnly and SameSite=Strict (and Secure over TLS); a
// wrong password gets 401 and no session; signing out ends the session; a
// new password ends the old sessions.
func TestConsoleSignIn(t *testing.T) {
	reg := adminRegistry(t)
	b := newBrowser(t, reg.srv)
	if resp := b.signIn("root", "wrong"); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("wrong password: %s", resp.Status)
	}
	if resp, _ := b.get("/gc"); resp.StatusCode != http.StatusSeeOther || !strings.HasPrefix(resp.Header.Get("Location"), "/signin?next=") {
		t.Fatalf("GC page before signing in: %s %q", resp.Status, resp.Header.Get("Location"))
	}
	resp := b.signIn("root", "root-pw")
	ck := sessionOf(resp)
	if resp.StatusCode != http.StatusSeeOther || ck == nil {
		t.Fatalf("sign-in: %s, cookie %v", resp.Status, ck)
	}
	if !ck.HttpOnly || ck.SameSite != http.SameSiteStrictMode || ck.Secure || ck.Path != "/" {
		t.Fatalf("session cookie over plain HTTP: %+v", ck)
	}
	if resp, page := b.get("/gc"); resp.StatusCode != 200 || !strings.Contains(page, "Collect now") || !strings.Contains(page, ">root<") {
		t.Fatalf("GC page signed in: %s\n%s", resp.Status, page)
	}
	_, page := b.get("/")
	if resp, _ := b.post("/signout", url.Values{"csrf": {b.csrf(page)}}); resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("sign-out: %s", resp.Status)
	}
	// The old cookie, replayed, no longer works.
	req, _ := http.NewRequest("GET", reg.srv.URL+"/gc", nil)
	req.AddCookie(ck)
	if resp, _ := newBrowser(t, reg.srv).send(req); resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("a signed-out session still works: %v", resp.Status)
	}

	// A password change ends the sessions signed in with the old one.
	b = newBrowser(t, reg.srv)
	b.signIn("root", "root-pw")
	users := reg.reg().gate.Users().(interface{ Set(string, string) error })
	users.Set("root", "new-pw")
	if resp, _ := b.get("/gc"); resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("a session from before the password change: %s", resp.Status)
	}

	// Over TLS the cookie is Secure too.
	tlsSrv := httptest.NewTLSServer(reg.srv.Config.Handler)
	defer tlsSrv.Close()
	tb := newBrowser(t, tlsSrv)
	tb.c.Transport.(*http.Transport).TLSClientConfig = &tls.Config{InsecureSkipVerify: true}
	resp = tb.signIn("alice", "alice-pw")
	if ck := sessionOf(resp); ck == nil || !ck.Secure || !ck.HttpOnly || ck.SameSite != http.SameSiteStrictMode {
		t.Fatalf("session cookie over TLS: %+v (%s)", ck, resp.Status)
	}
}

// TestSignInRedirectStaysHere: the sign-in form's next= leads only to a
// path on this site (console.TestSafeNext checks the rule itself).
func TestSignInRedirectStaysHere(t *testing.T) {
	b := newBrowser(t, adminRegistry(t).srv)
	_, page := b.get("/signin")
	resp, _ := b.post("/signin", url.Values{"csrf": {b.csrf(page)}, "user": {"root"}, "password": {"root-pw"}, "next": {"/\t/evil.example"}})
	if loc := resp.Header.Get("Location"); resp.StatusCode != http.StatusSeeOther || loc != "/" {
		t.Fatalf("sign-in with next=/<TAB>/evil.example: %s, Location %q", resp.Status, loc)
	}
}

// TestConsoleCSRF: every state-changing form needs its token, signed in
// with the form or with Basic credentials; a form from another site is
// refused even with the token; the admin API refuses cross-site writes.
func TestConsoleCSRF(t *testing.T) {
	reg := adminRegistry(t)
	reg.pushImage(t, "team/app", "v1", nil)
	reg.pushImage(t, "team/app", "v2", nil)
	b := newBrowser(t, reg.srv)
	b.signIn("root", "root-pw")
	for _, c := range []struct {
		path string
		form url.Values
	}{{"/gc", url.Values{}}, {"/repositories/team/app", url.Values{"action": {"delete"}, "ref": {"v2"}}}, {"/signout", url.Values{}}} {
		if resp, body := b.post(c.path, c.form); resp.StatusCode != http.StatusForbidden || !strings.Contains(body, "security token") {
			t.Errorf("POST %s without a token: %s", c.path, resp.Status)
		}
		c.form.Set("csrf", "forged")
		if resp, _ := b.post(c.path, c.form); resp.StatusCode != http.StatusForbidden {
			t.Errorf("POST %s with a forged token: %s", c.path, resp.Status)
		}
	}
	if _, err := reg.store.GetManifest("team/app", "v2"); err != nil {
		t.Fatal("a refused form deleted the tag")
	}
	// Basic credentials (a script, or a browser that keeps them) need the
	// token too: the one the page shows them.
	auth := as("root")["Authorization"]
	plain := newBrowser(t, reg.srv)
	if resp, _ := plain.post("/repositories/team/app", url.Values{"action": {"delete"}, "ref": {"v2"}}, "Authorization", auth); resp.StatusCode != http.StatusForbidden {
		t.Fatalf("Basic POST without a token: %s", resp.Status)
	}
	_, page := plain.get("/repositories/team/app?action=delete&ref=v2", "Authorization", auth)
	token := plain.csrf(page)
	if resp, _ := plain.post("/repositories/team/app", url.Values{"csrf": {token}, "action": {"delete"}, "ref": {"v2"}}, "Authorization", auth, "Origin", "http://evil.example"); resp.StatusCode != http.StatusForbidden {
		t.Fatalf("cross-site POST with the token: %s", resp.Status)
	}
	if resp, body := plain.post("/repositories/team/app", url.Values{"csrf": {token}, "action": {"delete"}, "ref": {"v2"}}, "Authorization", auth); resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("Basic POST with its token: %s %s", resp.Status, body)
	}
	if _, err := reg.store.GetManifest("team/app", "v2"); err == nil {
		t.Fatal("the confirmed delete left the tag")
	}
	// Another user's token (or a session's) is not this one's.
	other := newBrowser(t, reg.srv)
	_, page = other.get("/repositories/team/app?action=delete&ref=v1", "Authorization", as("alice")["Authorization"])
	if resp, _ := plain.post("/repositories/team/app", url.Values{"csrf": {other.csrf(page)}, "action": {"delete"}, "ref": {"v1"}}, "Authorization", auth); resp.StatusCode != http.StatusForbidden {
		t.Fatalf("root's POST with alice's token: %s", resp.Status)
	}
	// The API: a cross-site write is refused with credentials.
	resp, body := reg.do(t, "POST", "/api/v1/gc", nil, map[string]string{"Authorization": auth, "Sec-Fetch-Site": "cross-site"})
	if resp.StatusCode != http.StatusForbidden || ociError(t, body) != "DENIED" {
		t.Fatalf("cross-site API write: %s %s", resp.Status, body)
	}
}

// TestAPIWritesNeedCredentials: every /api/v1/ write, anonymous, is 401
// with a Basic challenge, even when a console session cookie comes along;
// a user who may only pull can delete nothing, in the API or the console.
func TestAPIWritesNeedCredentials(t *testing.T) {
	reg := adminRegistry(t)
	body := reg.pushImage(t, "team/app", "v1", nil)
	d := "sha256:" + strings.Repeat("0", 64)
	_ = body
	b := newBrowser(t, reg.srv)
	b.signIn("root", "root-pw")
	u, _ := url.Parse(reg.srv.URL)
	cookies := b.c.Jar.Cookies(u)
	for _, c := range []struct{ method, path string }{
		{"POST", "/api/v1/gc"}, {"POST", "/api/v1/gc?dry_run=true"},
		{"DELETE", "/api/v1/repositories/team/app/tags/v1"},
		{"DELETE", "/api/v1/repositories/team/app/manifests/" + d},
		{"DELETE", "/api/v1/repositories/team/app"},
	} {
		req, _ := http.NewRequest(c.method, reg.srv.URL+c.path, nil)
		for _, ck := range cookies {
			req.AddCookie(ck) // the API never takes the console's session
		}
		resp, err := reg.srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized || !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Basic ") {
			t.Errorf("anonymous %s %s: %s", c.method, c.path, resp.Status)
		}
	}
	for _, path := range []string{"/api/v1/repositories/team/app/tags/v1", "/api/v1/repositories/team/app"} {
		if resp, _ := reg.do(t, "DELETE", path, nil, as("reader")); resp.StatusCode != http.StatusForbidden {
			t.Errorf("reader DELETE %s: %s", path, resp.Status)
		}
	}
	rb := newBrowser(t, reg.srv)
	rb.signIn("reader", "reader-pw")
	resp, page := rb.get("/repositories/team/app")
	if resp.StatusCode != 200 || strings.Contains(page, "Delete…") {
		t.Fatalf("reader's repository page: %s, offers a delete: %v", resp.Status, strings.Contains(page, "Delete…"))
	}
	if resp, _ := rb.post("/repositories/team/app", url.Values{"csrf": {rb.csrf(page)}, "action": {"delete"}, "ref": {"v1"}}); resp.StatusCode != http.StatusForbidden {
		t.Fatalf("reader's delete form: %s", resp.Status)
	}
	if _, err := reg.store.GetManifest("team/app", "v1"); err != nil {
		t.Fatal("a reader deleted a tag")
	}
}

// TestConsoleEscapes: what clients and upstreams send is shown as text: a
// request for a name with a script lands in recent errors escaped, and so
// do image labels and annotations on a repository page.
func TestConsoleEscapes(t *testing.T) {
	reg := adminRegistry(t)
	resp, _ := reg.do(t, "GET", "/v2/%3Cscript%3Ealert(1)%3C%2Fscript%3E/manifests/x", nil, nil)
	if resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("a bad name: %s", resp.Status)
	}
	evil := `<script>alert(1)</script>`
	cfg := []byte(`{"os":"linux","config":{"Labels":{"org.example.evil":"` + strings.ReplaceAll(evil, "<", `\u003c`) + `","a\"b":"<img src=x onerror=alert(2)>"}}}`)
	layer := []byte("layer")
	m, _ := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": cache.MediaTypeOCIManifest,
		"config":      map[string]any{"mediaType": "application/vnd.oci.image.config.v1+json", "digest": reg.pushBlob(t, "team/app", cfg), "size": len(cfg)},
		"layers":      []any{map[string]any{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": reg.pushBlob(t, "team/app", layer), "size": len(layer)}},
		"annotations": map[string]string{"org.opencontainers.image.title": `"><svg onload=alert(3)>`}})
	if resp, body := reg.do(t, "PUT", "/v2/team/app/manifests/v1", m, map[string]string{"Content-Type": cache.MediaTypeOCIManifest}); resp.StatusCode != 201 {
		t.Fatalf("push: %s %s", resp.Status, body)
	}
	b := newBrowser(t, reg.srv)
	b.signIn("root", "root-pw")
	for _, path := range []string{"/", "/audit", "/repositories/team/app"} {
		resp, page := b.get(path)
		if resp.StatusCode != 200 {
			t.Fatalf("%s: %s", path, resp.Status)
		}
		for _, raw := range []string{evil, "<img src=x", "<svg onload"} {
			if strings.Contains(page, raw) {
				t.Errorf("%s shows %q unescaped", path, raw)
			}
		}
		if path != "/repositories/team/app" && !strings.Contains(page, "&lt;script&gt;alert(1)&lt;/script&gt;") {
			t.Errorf("%s does not show the bad request's path as text:\n%s", path, page)
		}
		if path == "/repositories/team/app" {
			for _, want := range []string{"org.example.evil", "&lt;script&gt;alert(1)&lt;/script&gt;", "&lt;img src=x onerror=alert(2)&gt;", "&#34;&gt;&lt;svg onload=alert(3)&gt;"} {
				if !strings.Contains(page, want) {
					t.Errorf("the repository page lacks %q:\n%s", want, page)
				}
			}
		}
	}
	if h := resp.Header.Get("Content-Security-Policy"); h != "" {
		t.Fatalf("a registry error carries the console's CSP: %q", h)
	}
	if resp, _ := b.get("/"); !strings.Contains(resp.Header.Get("Content-Security-Policy"), "default-src 'none'") {
		t.Fatal("console pages carry no Content-Security-Policy")
	}
}

// TestConsoleRepositories: search, origin filter and sort by query
// string; pulls and last pull counted per repository and tag; the
// confirmation says what a delete frees and the delete frees it.
func TestConsoleRepositories(t *testing.T) {
	reg := adminRegistry(t)
	reg.pushImage(t, "team/app", "v1", nil)
	reg.pushImage(t, "team/app", "v2", nil)
	reg.pushImage(t, "team/web", "v1", nil)
	reg.pushImage(t, "other/db", "v1", nil)
	for range 3 {
		reg.do(t, "GET", "/v2/team/web/manifests/v1", nil, as("root"))
	}
	reg.do(t, "GET", "/v2/team/app/manifests/v2", nil, as("root"))
	reg.do(t, "HEAD", "/v2/team/app/manifests/v1", nil, as("root")) // a HEAD is no pull
	b := newBrowser(t, reg.srv)
	b.signIn("root", "root-pw")
	_, page := b.get("/repositories?q=team&sort=pulls&order=desc")
	rows := regexp.MustCompile(`<a href="/repositories/([a-z/]+)">`).FindAllStringSubmatch(page, -1)
	if len(rows) != 2 || rows[0][1] != "team/web" || rows[1][1] != "team/app" {
		t.Fatalf("search team sorted by pulls: %v\n%s", rows, page)
	}
	if !strings.Contains(page, `aria-sort="descending"`) {
		t.Fatal("the sorted column is not marked")
	}
	_, page = b.get("/repositories?sort=name&order=asc&origin=mirrored")
	if strings.Contains(page, "/repositories/team/app") {
		t.Fatal("the mirrored filter shows pushed repositories")
	}
	_, body := reg.do(t, "GET", "/api/v1/repositories", nil, as("root"))
	var list struct{ Repositories []admin.RepoInfo }
	json.Unmarshal(body, &list)
	for _, r := range list.Repositories {
		want := map[string]int64{"team/web": 3, "team/app": 1, "other/db": 0}[r.Name]
		if r.Pulls != want || (want > 0) != (r.LastPulled != "") {
			t.Errorf("API: %s pulls %d (last %q), want %d", r.Name, r.Pulls, r.LastPulled, want)
		}
	}
	_, body = reg.do(t, "GET", "/api/v1/repositories/team/app/tags", nil, as("root"))
	var tags struct{ Tags []admin.TagInfo }
	json.Unmarshal(body, &tags)
	if len(tags.Tags) != 2 || tags.Tags[0].Pulls != 0 || tags.Tags[1].Pulls != 1 || tags.Tags[1].LastPulled == "" {
		t.Fatalf("API tags: %s", body)
	}

	// Delete v2 with its confirmation: it frees its config, layer and
	// manifest (v1 shares none of them).
	mv2, _ := reg.store.GetManifest("team/app", "v2")
	want := int64(len(`{"os":"linux","n":"v2"}`)+len("layer of team/app:v2")) + mv2.Size
	_, page = b.get("/repositories/team/app")
	if !strings.Contains(page, "docker pull "+strings.TrimPrefix(reg.srv.URL, "http://")+"/team/app:v1") {
		t.Fatalf("no pull line:\n%s", page)
	}
	_, page = b.get("/repositories/team/app?action=delete&ref=v2")
	if !strings.Contains(page, `<b id="frees">`+admin.HumanBytes(float64(want))+`</b>`) {
		t.Fatalf("the confirmation does not say %s:\n%s", admin.HumanBytes(float64(want)), page)
	}
	resp, _ := b.post("/repositories/team/app", url.Values{"csrf": {b.csrf(page)}, "action": {"delete"}, "ref": {"v2"}})
	if resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("delete: %s", resp.Status)
	}
	before, _ := reg.store.Maintenance().Size()
	rep, ran, err := collectReleased(reg.reg())
	after, _ := reg.store.Maintenance().Size()
	if err != nil || !ran || rep.Bytes != want || before-after != want {
		t.Fatalf("collected %+v (ran %v, %v), store %d → %d, want %d freed", rep, ran, err, before, after, want)
	}
	_, page = b.get("/gc")
	if !strings.Contains(page, "after deletes") {
		t.Fatalf("the GC page does not list the run:\n%s", page)
	}
}

// TestConsolePages: every page has a title and a heading, and the
// admin-only ones are refused (403) to others who are signed in.
func TestConsolePages(t *testing.T) {
	reg := adminRegistry(t)
	reg.pushImage(t, "team/app", "v1", nil)
	root := newBrowser(t, reg.srv)
	root.signIn("root", "root-pw")
	alice := newBrowser(t, reg.srv)
	alice.signIn("alice", "alice-pw")
	for _, c := range []struct {
		path  string
		admin bool
	}{{"/", false}, {"/repositories", false}, {"/repositories/team/app", false}, {"/upstreams", false}, {"/gc", true}, {"/users", true}, {"/audit", true}, {"/signin", false}} {
		resp, page := root.get(c.path)
		if resp.StatusCode != 200 || !regexp.MustCompile(`<title>[^<]+ · Wharf</title>`).MatchString(page) || !strings.Contains(page, "<h1>") {
			t.Errorf("%s: %s, title or heading missing", c.path, resp.Status)
		}
		if !strings.Contains(page, `name="viewport"`) {
			t.Errorf("%s: no viewport", c.path)
		}
		if resp, _ := alice.get(c.path); c.admin != (resp.StatusCode == http.StatusForbidden) {
			t.Errorf("%s for alice: %s", c.path, resp.Status)
		}
	}
	// Tokens: one expiring in three days (warned), one that never does.
	if status, _ := createToken(t, reg, as("alice"), `{"name":"ci-soon","repos":["team/app"],"actions":["pull","push"],"expires":"3d"}`); status != http.StatusCreated {
		t.Fatalf("create a token: %d", status)
	}
	createToken(t, reg, as("reader"), `{"name":"reader-forever","repos":["team/**"],"actions":["pull"]}`)
	_, page := root.get("/users")
	for _, want := range []string{">root<", ">alice<", ">reader<", "team/*", "admin", ">ci-soon<", ">reader-forever<",
		"pull,push on team/app", `class="bad">in 3 days`, ">never<"} {
		if !strings.Contains(page, want) {
			t.Errorf("users page lacks %q", want)
		}
	}
	_, page = root.get("/audit")
	if !strings.Contains(page, "login") {
		t.Error("the audit log does not show the sign-ins")
	}
}

// TestChartHistorySurvivesRestart: Sample records points in the index's
// history, so the charts (and the GC runs) outlive the process; trimming
// drops them.
func TestChartHistorySurvivesRestart(t *testing.T) {
	// Sample, with real counters: three samples make two points in the
	// index; a new registry over the same store draws them.
	dir := t.TempDir()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	st, err := stores.Open(cache.Options{Dir: dir, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	m := registry.NewMetrics(prometheus.NewRegistry())
	reg := New(st, Options{Logger: quiet, Metrics: m})
	for i := range 3 {
		m.BytesServed.WithLabelValues("cache").Add(float64(1000 * (i + 1)))
		reg.Sample()
	}
	reg.NoteGC("api", "root", cache.GCReport{Bytes: 4242, Blobs: 2}, time.Second, nil)
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	st, err = stores.Open(cache.Options{Dir: dir, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	reg = New(st, Options{Logger: quiet})
	pts := reg.svc.ChartPoints()
	if len(pts) != 1 && len(pts) != 2 || pts[len(pts)-1].Cache < 2000 {
		t.Fatalf("points after a restart: %+v", pts) // two points, or one if both fell in one minute
	}
	if runs := reg.svc.GCRuns(20); len(runs) != 1 || runs[0].Report.Bytes != 4242 || runs[0].User != "root" || runs[0].Trigger != "api" {
		t.Fatalf("GC runs after a restart: %+v", runs)
	}
	if err := st.Records().TrimHistory(admin.HistoryTraffic, time.Now().Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	if h, err := st.Records().History(admin.HistoryTraffic, time.Time{}); err != nil || len(h) != 0 {
		t.Fatalf("history after trimming: %d entries, %v", len(h), err)
	}
}

// TestConsoleEvict: a mirrored image is evicted from its page after a
// confirmation that lists its tags and says what it frees; the next pull
// fetches each blob upstream once; a pushed repository offers no eviction
// and refuses a forged one; with no users and no --allow-delete the
// console deletes nothing.
func TestConsoleEvict(t *testing.T) {
	e := newMirrorEnv(t, Options{AllowDelete: true})
	img := e.hub.Push("library/alpine", "3.20", smallImage(43))
	ctx := context.Background()
	if err := e.pull(ctx, "library/alpine", "3.20", ""); err != nil {
		t.Fatal(err)
	}
	e.pushImage(t, "team/app", "v1", nil)
	b := newBrowser(t, e.srv)
	_, page := b.get("/repositories/docker.io/library/alpine")
	if !strings.Contains(page, "Mirrored from <b>docker.io</b>") || !strings.Contains(page, "?action=evict") {
		t.Fatalf("the mirrored repository's page:\n%s", page)
	}
	_, page = b.get("/repositories/docker.io/library/alpine?action=evict")
	var want int64
	for _, d := range append([]digest.Digest{img.Configs[platform]}, img.Layers[platform]...) {
		size, _ := e.store.StatBlob("docker.io/library/alpine", d)
		want += size
	}
	if !strings.Contains(page, "3.20") || !regexp.MustCompile(`<b id="frees">[0-9.]+ KiB</b>`).MatchString(page) {
		t.Fatalf("the eviction's confirmation (the image's blobs are %d bytes):\n%s", want, page)
	}
	resp, _ := b.post("/repositories/docker.io/library/alpine", url.Values{"csrf": {b.csrf(page)}, "action": {"evict"}})
	if resp.StatusCode != http.StatusSeeOther || !strings.Contains(resp.Header.Get("Location"), "Evicted") {
		t.Fatalf("evict: %s %q", resp.Status, resp.Header.Get("Location"))
	}
	if rep, ran, err := collectReleased(e.reg); err != nil || !ran || rep.Bytes < want {
		t.Fatalf("collected %+v (%v %v), want at least the image's %d bytes", rep, ran, err, want)
	}
	e.hub.ResetCounts()
	if err := e.pull(ctx, "library/alpine", "3.20", ""); err != nil {
		t.Fatal(err)
	}
	if n := e.hub.Count("GET blob"); n != len(img.Layers[platform])+1 {
		t.Fatalf("the pull after the eviction: %d blob GETs upstream", n)
	}
	_, page = b.get("/repositories/team/app")
	if strings.Contains(page, "?action=evict") {
		t.Fatal("a pushed repository offers eviction")
	}
	_, page = b.get("/repositories/team/app?action=delete&ref=v1")
	if resp, _ := b.post("/repositories/team/app", url.Values{"csrf": {b.csrf(page)}, "action": {"evict"}}); resp.StatusCode != http.StatusForbidden {
		t.Fatalf("evicting a pushed repository: %s", resp.Status)
	}

	plain := newTestRegistry(t, Options{})
	plain.pushImage(t, "team/app", "v1", nil)
	pb := newBrowser(t, plain.srv)
	_, page = pb.get("/repositories/team/app")
	if strings.Contains(page, "Delete…") {
		t.Fatal("deletes are offered without --allow-delete")
	}
	_, page = pb.get("/repositories/team/app?action=delete&ref=v1")
	if resp, _ := pb.post("/repositories/team/app", url.Values{"csrf": {pb.csrf(page)}, "action": {"delete"}, "ref": {"v1"}}); resp.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("a delete without --allow-delete: %s", resp.Status)
	}
}

// TestSignOutSurvivesRestart: a session signed out on one server is
// refused by another over the same index with the same key (a restart,
// or another node of a cluster), while a session not signed out is still
// good there.
func TestSignOutSurvivesRestart(t *testing.T) {
	users, err := policy.ParseHtpasswd(strings.NewReader(""))
	if err != nil {
		t.Fatal(err)
	}
	users.Set("root", "root-pw")
	pol, err := policy.New(users.Len(), policy.Config{Rules: []policy.Rule{
		{Repos: []string{"**"}, Who: []string{"root"}, Actions: []policy.Action{policy.Pull, policy.Push, policy.Delete, policy.Admin}}}})
	if err != nil {
		t.Fatal(err)
	}
	opts := Options{Users: users, Policy: pol, Secret: "a key the nodes share", Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	first := newTestRegistry(t, opts)
	b := newBrowser(t, first.srv)
	out := sessionOf(b.signIn("root", "root-pw"))
	kept := sessionOf(newBrowser(t, first.srv).signIn("root", "root-pw"))
	if out == nil || kept == nil {
		t.Fatal("no session cookies")
	}
	_, page := b.get("/")
	if resp, _ := b.post("/signout", url.Values{"csrf": {b.csrf(page)}}); resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("sign-out: %s", resp.Status)
	}
	second := httptest.NewServer(New(first.store, opts))
	defer second.Close()
	for _, tc := range []struct {
		ck   *http.Cookie
		want int
	}{{out, http.StatusSeeOther}, {kept, http.StatusOK}} {
		req, _ := http.NewRequest("GET", second.URL+"/gc", nil)
		req.AddCookie(tc.ck)
		if resp, _ := newBrowser(t, second).send(req); resp.StatusCode != tc.want {
			t.Errorf("after a restart, the session %s: %s, want %d", map[bool]string{true: "signed out", false: "kept"}[tc.ck == out], resp.Status, tc.want)
		}
	}
}

// countingCollector is the maintenance scheduler for a test: it runs the
// collections asked for and counts them.
type countingCollector struct {
	store *cache.Store
	n     atomic.Int64
}

func (c *countingCollector) CollectNow(ctx context.Context, o cache.GCOptions) (cache.GCReport, error) {
	c.n.Add(1)
	o.Grace = time.Hour
	return c.store.Maintenance().GC(o)
}

// TestPreviewsFromTheLastCollection: the GC page, the overview and a
// delete's confirmation ask the scheduler for one dry run, then answer
// from its snapshot until the index changes.
func TestPreviewsFromTheLastCollection(t *testing.T) {
	users, pol := adminAccess(t)
	col := &countingCollector{}
	reg := newTestRegistry(t, Options{Users: users, Policy: pol, Collector: col})
	col.store = reg.store
	reg.pusher = as("root")["Authorization"]
	reg.pushImage(t, "team/app", "v1", nil)
	reg.pushImage(t, "team/app", "v2", nil)
	b := newBrowser(t, reg.srv)
	b.signIn("root", "root-pw")
	for _, page := range []string{"/gc", "/", "/repositories/team/app?action=delete&ref=v1", "/gc", "/", "/repositories/team/app?action=delete&ref=v2"} {
		if resp, body := b.get(page); resp.StatusCode != http.StatusOK {
			t.Fatalf("%s: %s %.200s", page, resp.Status, body)
		}
	}
	if n := col.n.Load(); n != 1 {
		t.Fatalf("%d dry runs for six page views of an unchanged index, want 1", n)
	}
	reg.pushImage(t, "team/app", "v3", nil)
	reg.reg().svc.ForgetReclaimable()
	if resp, _ := b.get("/gc"); resp.StatusCode != http.StatusOK {
		t.Fatal(resp.Status)
	}
	if n := col.n.Load(); n != 2 {
		t.Fatalf("%d dry runs after a push and a page view, want 2", n)
	}
}
