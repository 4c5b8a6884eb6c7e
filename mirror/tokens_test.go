package mirror

import (
	"encoding/json"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/wharf-registry/wharf/mirror/admin"
	"github.com/wharf-registry/wharf/mirror/auth"
)

func createToken(t *testing.T, reg *testRegistry, who map[string]string, body string) (int, map[string]any) {
	t.Helper()
	resp, raw := reg.do(t, "POST", "/api/v1/tokens", []byte(body), who)
	var out map[string]any
	json.Unmarshal(raw, &out)
	return resp.StatusCode, out
}

// TestAccessTokens: alice creates a token for team/app (pull, push): it
// signs in as NAME with its secret (Basic, and through the token realm),
// pushes there, is refused (403) outside its scope and for actions alice
// has but the scope lacks; a wrong secret, an expired token, a revoked
// one (at once, a bearer token from before included) get 401. Tokens do
// not make tokens; each person lists their own, an admin all; the last use
// is written by the flush.
func TestAccessTokens(t *testing.T) {
	users, pol := adminAccess(t)
	reg := newTestRegistry(t, Options{Users: users, Policy: pol, AllowDelete: true})
	status, tok := createToken(t, reg, as("alice"), `{"name":"ci-push","repos":["team/app"],"actions":["pull","push"],"expires":"90d"}`)
	secret, _ := tok["secret"].(string)
	if status != http.StatusCreated || !strings.HasPrefix(secret, auth.AccessTokenPrefix) || tok["owner"] != "alice" || tok["expires"] == nil {
		t.Fatalf("create: %d %v", status, tok)
	}
	ci := basic("ci-push", secret)
	if got := reg.pushAs(t, "team/app", "v1", ci, []byte("token layer")); got != http.StatusCreated {
		t.Fatalf("push with the token: %d", got)
	}
	if got := reg.pushAs(t, "team/other", "v1", ci, []byte("token layer 2")); got != http.StatusForbidden {
		t.Fatalf("push outside the token's scope: %d, want 403", got)
	}
	if resp, _ := reg.do(t, "DELETE", "/v2/team/app/manifests/v1", nil, ci); resp.StatusCode != http.StatusForbidden {
		t.Fatalf("delete (alice may, the token may not): %s", resp.Status)
	}
	if got := reg.pushAs(t, "team/app", "v2", basic("ci-push", secret+"x"), []byte("token layer 3")); got != http.StatusUnauthorized {
		t.Fatalf("a wrong secret: %d, want 401", got)
	}
	// Someone sending wrong secrets under the robot's name gets throttled;
	// the robot, with the right one, is not locked out.
	throttled := false
	for i := 0; i < 10 && !throttled; i++ {
		resp, _ := reg.do(t, "GET", "/v2/team/app/tags/list", nil, basic("ci-push", secret+"y"))
		throttled = resp.StatusCode == http.StatusTooManyRequests
	}
	if !throttled {
		t.Fatal("wrong secrets under a token's name were never throttled")
	}
	if resp, _ := reg.do(t, "GET", "/v2/team/app/tags/list", nil, ci); resp.StatusCode != http.StatusOK {
		t.Fatalf("the robot after someone's wrong secrets under its name: %s, want 200", resp.Status)
	}
	// Through the token realm, as docker does.
	resp, raw := reg.do(t, "GET", "/token?service=wharf&scope=repository:team/app:pull,push", nil, ci)
	var issued struct{ Token string }
	if json.Unmarshal(raw, &issued); resp.StatusCode != 200 || issued.Token == "" {
		t.Fatalf("token realm with an access token: %s %s", resp.Status, raw)
	}
	bearer := map[string]string{"Authorization": "Bearer " + issued.Token}
	if got := reg.pushAs(t, "team/app", "v3", bearer, []byte("token layer 4")); got != http.StatusCreated {
		t.Fatalf("push with the realm's bearer token: %d", got)
	}
	if got := reg.pushAs(t, "team/other", "v3", bearer, []byte("token layer 5")); got != http.StatusForbidden {
		t.Fatalf("the realm's bearer token outside the scope: %d", got)
	}
	// Tokens do not make tokens.
	if status, _ := createToken(t, reg, ci, `{"name":"child","repos":["team/app"],"actions":["pull"]}`); status != http.StatusForbidden {
		t.Fatalf("a token creating a token: %d", status)
	}
	if status, _ := createToken(t, reg, as("alice"), `{"name":"ci-push","repos":["team/app"],"actions":["pull"]}`); status != http.StatusConflict {
		t.Fatalf("a second token of the same name: %d", status)
	}
	// Lists: one's own; an admin's, all.
	createToken(t, reg, as("reader"), `{"name":"reader-pull","repos":["team/**"],"actions":["pull"]}`)
	list := func(who string) []string {
		_, raw := reg.do(t, "GET", "/api/v1/tokens", nil, as(who))
		var ts []admin.TokenInfo
		json.Unmarshal(raw, &ts)
		var names []string
		for _, x := range ts {
			names = append(names, x.Name)
		}
		return names
	}
	if a, r, root := list("alice"), list("reader"), list("root"); strings.Join(a, ",") != "ci-push" || strings.Join(r, ",") != "reader-pull" || strings.Join(root, ",") != "ci-push,reader-pull" {
		t.Fatalf("lists: alice %v, reader %v, root %v", a, r, root)
	}
	// The last use, written by the flush.
	if err := reg.store.Maintenance().FlushAccess(); err != nil {
		t.Fatal(err)
	}
	if rec, _, _ := reg.store.Records().Token("ci-push"); rec.LastUsed.IsZero() || time.Since(rec.LastUsed) > time.Minute {
		t.Fatalf("last use after the flush: %v", rec.LastUsed)
	}
	// Revoked: refused at once, the bearer from before included.
	if resp, _ := reg.do(t, "DELETE", "/api/v1/tokens/ci-push", nil, as("reader")); resp.StatusCode != http.StatusNotFound {
		t.Fatalf("someone else revoking alice's token: %s", resp.Status)
	}
	if resp, _ := reg.do(t, "DELETE", "/api/v1/tokens/ci-push", nil, as("alice")); resp.StatusCode != http.StatusNoContent {
		t.Fatalf("revoke: %s", resp.Status)
	}
	if got := reg.pushAs(t, "team/app", "v4", ci, []byte("token layer 6")); got != http.StatusUnauthorized {
		t.Fatalf("a revoked token: %d, want 401", got)
	}
	if got := reg.pushAs(t, "team/app", "v4", bearer, []byte("token layer 7")); got != http.StatusUnauthorized {
		t.Fatalf("a bearer token of a revoked token: %d, want 401", got)
	}
	// Expired: refused.
	_, exp := createToken(t, reg, as("alice"), `{"name":"short","repos":["team/app"],"actions":["pull","push"],"expires":"1h"}`)
	rec, _, _ := reg.store.Records().Token("short")
	reg.store.Records().RevokeToken("short")
	rec.Expires = time.Now().Add(-time.Second)
	if err := reg.store.Records().CreateToken(rec); err != nil {
		t.Fatal(err)
	}
	if got := reg.pushAs(t, "team/app", "v5", basic("short", exp["secret"].(string)), []byte("token layer 8")); got != http.StatusUnauthorized {
		t.Fatalf("an expired token: %d, want 401", got)
	}
}

// TestConsoleTokens: a signed-in person creates a token on the console's
// Tokens page (its secret shown once), signs in with it, sees only their
// own tokens, and revokes it there; a form without its CSRF token is
// refused; an anonymous visitor is sent to sign in.
func TestConsoleTokens(t *testing.T) {
	reg := adminRegistry(t)
	alice := newBrowser(t, reg.srv)
	alice.signIn("alice", "alice-pw")
	_, page := alice.get("/tokens")
	resp, page := alice.post("/tokens", url.Values{"csrf": {alice.csrf(page)}, "action": {"create"}, "name": {"laptop"},
		"repos": {"team/app"}, "actions": {"pull", "push"}, "expires": {"30d"}})
	secret := regexp.MustCompile(`<pre class="mono" id="secret">(wharf_[A-Za-z0-9_-]+)</pre>`).FindStringSubmatch(page)
	if resp.StatusCode != 200 || secret == nil || !strings.Contains(page, "docker login") {
		t.Fatalf("create on the console: %s\n%s", resp.Status, page)
	}
	if got := reg.pushAs(t, "team/app", "c1", basic("laptop", secret[1]), []byte("console token layer")); got != http.StatusCreated {
		t.Fatalf("push with the console's token: %d", got)
	}
	if _, again := alice.get("/tokens"); strings.Contains(again, secret[1]) || !strings.Contains(again, ">laptop<") {
		t.Fatal("the secret is shown again, or the token is not listed")
	}
	reader := newBrowser(t, reg.srv)
	reader.signIn("reader", "reader-pw")
	if _, other := reader.get("/tokens"); strings.Contains(other, ">laptop<") {
		t.Fatal("another person sees alice's token")
	}
	if resp, _ := alice.post("/tokens", url.Values{"action": {"revoke"}, "name": {"laptop"}}); resp.StatusCode != http.StatusForbidden {
		t.Fatalf("a revoke without the CSRF token: %s", resp.Status)
	}
	_, page = alice.get("/tokens")
	if resp, _ := alice.post("/tokens", url.Values{"csrf": {alice.csrf(page)}, "action": {"revoke"}, "name": {"laptop"}}); resp.StatusCode != 200 {
		t.Fatalf("revoke on the console: %s", resp.Status)
	}
	if got := reg.pushAs(t, "team/app", "c2", basic("laptop", secret[1]), []byte("console token layer 2")); got != http.StatusUnauthorized {
		t.Fatalf("the revoked console token: %d, want 401", got)
	}
	anon := newBrowser(t, reg.srv)
	if resp, _ := anon.get("/tokens"); resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/signin?next=/tokens" {
		t.Fatalf("an anonymous visitor of /tokens: %s to %q", resp.Status, resp.Header.Get("Location"))
	}
}
