package e2e

import (
	"encoding/base64"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/wharf-registry/wharf/internal/fakehub"
	"github.com/wharf-registry/wharf/internal/ldaptest"
)

// TestLDAPSignIn: Wharf signs people in from the real slapd, started on
// loopback with a throw-away suffix. A real dockerd logs in as a member of
// group devs and pushes and pulls; it logs in with a token that member
// created and pushes. A non-member is refused the push (403), a wrong
// password gets 401. Removed from the group, the member loses push within
// the cache time, and so does the member's token. With slapd stopped,
// anonymous mirror pulls, existing access tokens and a bearer token issued
// before keep working, and a sign-in fails fast with 503. The console's
// Users page lists the directory users who signed in, with their groups.
// teamRules: root may do anything, group devs may push to team/**, and
// everyone signed in may pull from it.
const teamRules = `rules:
  - repos: ["**"]
    who: [root]
    actions: [pull, push, delete, admin]
  - repos: ["team/**"]
    who: ["group:devs"]
    actions: [pull, push]
  - repos: ["team/**"]
    who: [users]
    actions: [pull]
`

func TestLDAPSignIn(t *testing.T) {
	requireTool(t, "dockerd")
	srv := ldaptest.Start(t)
	srv.AddUser("alice", "alice-pw")
	srv.AddUser("bob", "bob-pw")
	srv.AddGroup("devs", "alice")
	hub := fakehub.Start(t)
	hub.Push("library/alpine", "3", fakehub.ImageSpec{Platforms: []string{hostPlatform}, Layers: 1, LayerSize: 16 << 10, Seed: 1501})

	dir := t.TempDir()
	pwFile, config := filepath.Join(dir, "bind-pw"), filepath.Join(dir, "wharf.yaml")
	os.WriteFile(pwFile, []byte(ldaptest.BindPassword+"\n"), 0o600)
	os.WriteFile(config, []byte(teamRules), 0o644)
	htpasswd, _ := makeUsers(t, map[string]string{"root": "root-pw"}, "")
	w := startWharf(t, "", "--config", config, "--upstream", "docker.io="+hub.URL, "--htpasswd", htpasswd,
		"--ldap-url", srv.URL, "--ldap-bind-dn", ldaptest.BindDN, "--ldap-bind-password-file", pwFile,
		"--ldap-user-base", ldaptest.UserBase, "--ldap-group-base", ldaptest.GroupBase, "--ldap-cache", "1s", "--ldap-timeout", "2s")
	if !strings.Contains(w.log.String(), `directory="`+srv.URL) {
		t.Fatalf("the start does not name the directory:\n%s", w.log)
	}

	d := startDockerdWith(t, map[string]any{"insecure-registries": []string{w.addr}})
	dockerLogin(t, d, w.addr, "alice", "alice-pw")
	ref := w.addr + "/team/app:v1"
	d.buildImage(t, ref, "scratch", "l.bin")
	d.roundTrip(t, ref)

	// The console's Users page lists the directory users who signed in.
	if page := getPage(t, w, "/users", "root", "root-pw"); !regexp.MustCompile(`<td class="mono">alice</td><td>devs</td>`).MatchString(page) {
		t.Fatalf("the Users page does not list alice with her group:\n%s", page)
	}
	if got := pushStatus(t, w, "bob", "bob-pw", "b1"); got != "403" {
		t.Fatalf("a non-member's push: %s, want 403", got)
	}
	if got := pushStatus(t, w, "alice", "wrong", "a1"); got != "401" {
		t.Fatalf("a wrong password: %s, want 401", got)
	}
	// Tokens of directory users: alice's pushes; bob's pulls.
	aliceTok := createTokenCLI(t, w.url(""), "alice", "alice-pw", "--name", "alice-ci", "--repos", "team/**", "--actions", "pull,push")
	bobTok := createTokenCLI(t, w.url(""), "bob", "bob-pw", "--name", "bob-ci", "--repos", "team/**", "--actions", "pull")
	d.docker(t, "logout", w.addr)
	dockerLogin(t, d, w.addr, "alice-ci", aliceTok)
	ref2 := w.addr + "/team/app:v2"
	d.buildImage(t, ref2, "scratch", "l2.bin")
	d.roundTrip(t, ref2)

	// Out of the group: alice and her token lose push within the cache time.
	srv.RemoveFromGroup("devs", "alice")
	deadline := time.Now().Add(5 * time.Second)
	for pushStatus(t, w, "alice", "alice-pw", "a2") != "403" || pushStatus(t, w, "alice-ci", aliceTok, "a3") != "403" {
		if time.Now().After(deadline) {
			t.Fatal("alice (or her token) can still push 5 s after leaving devs (cache 1 s)")
		}
		time.Sleep(200 * time.Millisecond)
	}

	// A bearer token from the realm, issued before the directory goes down.
	req, _ := http.NewRequest(http.MethodGet, w.url("/token?service=wharf&scope=repository:team/app:pull"), nil)
	req.SetBasicAuth("bob", "bob-pw")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var tok struct{ Token string }
	json.NewDecoder(resp.Body).Decode(&tok)
	resp.Body.Close()

	srv.Stop()
	time.Sleep(1200 * time.Millisecond) // past the cache time: nothing is answered from a fresh entry
	if got := getStatus(t, w, "/v2/library/alpine/manifests/3", ""); got != 200 {
		t.Fatalf("an anonymous mirror pull with slapd stopped: %d", got)
	}
	if got := getStatus(t, w, "/v2/team/app/manifests/v1", "Basic "+basicCreds("bob-ci", bobTok)); got != 200 {
		t.Fatalf("bob's access token with slapd stopped: %d", got)
	}
	if got := getStatus(t, w, "/v2/team/app/manifests/v1", "Bearer "+tok.Token); got != 200 {
		t.Fatalf("a bearer token issued before slapd stopped: %d", got)
	}
	start := time.Now()
	got := getStatus(t, w, "/v2/team/app/manifests/v1", "Basic "+basicCreds("bob", "bob-pw"))
	if took := time.Since(start); got != http.StatusServiceUnavailable || took > 3*time.Second {
		t.Fatalf("a sign-in with slapd stopped: %d after %s, want 503 within the timeout", got, took)
	}
}

// pushStatus pushes a one-layer image to team/app:tag as user, and says
// how it went: "201", or the status of the refused step.
func pushStatus(t *testing.T, w *wharfProc, user, pass, tag string) string {
	t.Helper()
	_, err := pushRawAs(w, "team/app", tag, user, pass, []byte("layer of "+user+" "+tag))
	if err == nil {
		return "201"
	}
	for _, code := range []string{"401", "403", "503"} {
		if strings.Contains(err.Error(), code) {
			return code
		}
	}
	t.Fatalf("push as %s: %v", user, err)
	return ""
}

func getStatus(t *testing.T, w *wharfProc, path, authz string) int {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, w.url(path), nil)
	req.Header.Set("Accept", "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json")
	if authz != "" {
		req.Header.Set("Authorization", authz)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func basicCreds(user, pass string) string {
	return base64.StdEncoding.EncodeToString([]byte(user + ":" + pass))
}

// getPage GETs a console page with Basic credentials and returns it.
func getPage(t *testing.T, w *wharfProc, path, user, pass string) string {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, w.url(path), nil)
	req.SetBasicAuth(user, pass)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 {
		t.Fatalf("GET %s as %s: %s", path, user, resp.Status)
	}
	return readAll(t, resp)
}
