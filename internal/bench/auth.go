package main

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"

	"github.com/opencontainers/go-digest"

	"github.com/wharf-registry/wharf/internal/ldaptest"
	"github.com/wharf-registry/wharf/policy"
)

// runAuth compares manifest GETs by tag at -conns connections: anonymous
// callers on a public repository against signed-in callers on a private
// one (the same manifest), so that every signed-in request is really
// authenticated: Basic credentials (bcrypt cached), a token from Wharf's
// realm, an access token (Basic and its realm token), and a directory
// user from the real slapd (cached sign-in, and its realm token).
func runAuth(tmp, bin string) error {
	users, err := policy.LoadHtpasswd(filepath.Join(tmp, "none"))
	if err != nil {
		return err
	}
	if err := users.Set("alice", "bench-password"); err != nil {
		return err
	}
	htpasswd := filepath.Join(tmp, "htpasswd")
	if err := users.WriteFile(htpasswd); err != nil {
		return err
	}
	config := filepath.Join(tmp, "auth.yaml")
	rules := `rules:
  - repos: ["bench/**"]
    who: [alice]
    actions: [pull, push]
  - repos: ["bench/public/**"]
    who: [everyone]
    actions: [pull]
  - repos: ["bench/**"]
    who: ["group:devs"]
    actions: [pull]
`
	if err := os.WriteFile(config, []byte(rules), 0o644); err != nil {
		return err
	}
	args := []string{"serve", "--addr", "127.0.0.1:0", "--data", filepath.Join(tmp, "auth-data"), "--log-level", "warn",
		"--mirror=false", "--htpasswd", htpasswd, "--config", config}
	dir, err := ldaptest.Run(filepath.Join(tmp, "slapd"), map[string]string{"carol": "carol-password"}, map[string][]string{"devs": {"carol"}})
	if err != nil {
		fmt.Printf("auth: no directory rows (%v)\n", err)
	} else {
		defer dir.Stop()
		pw := filepath.Join(tmp, "ldap-bind-pw")
		if err := os.WriteFile(pw, []byte(ldaptest.BindPassword+"\n"), 0o600); err != nil {
			return err
		}
		args = append(args, "--ldap-url", dir.URL, "--ldap-bind-dn", ldaptest.BindDN, "--ldap-bind-password-file", pw,
			"--ldap-user-base", ldaptest.UserBase, "--ldap-group-base", ldaptest.GroupBase)
	}
	w, err := startProc(bin, args...)
	if err != nil {
		return err
	}
	defer w.stop()
	base := "http://" + w.addr
	basic := basicAuth("alice", "bench-password")
	c := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: *conns}}
	do := func(method, url, authz, ct string, body []byte) (*http.Response, error) {
		req, _ := http.NewRequest(method, url, bytes.NewReader(body))
		req.Header.Set("Authorization", authz)
		if ct != "" {
			req.Header.Set("Content-Type", ct)
		}
		return c.Do(req)
	}
	cfg := []byte(`{"os":"linux"}`)
	cd := digest.FromBytes(cfg)
	man, _ := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
		"config": map[string]any{"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": len(cfg)}, "layers": []any{}})
	for _, repo := range []string{"bench/public/auth", "bench/private/auth"} {
		if resp, err := do("POST", base+"/v2/"+repo+"/blobs/uploads/?digest="+cd.String(), basic, "", cfg); err != nil || resp.StatusCode != 201 {
			return fmt.Errorf("push config: %v %v", err, resp)
		}
		if resp, err := do("PUT", base+"/v2/"+repo+"/manifests/latest", basic, "application/vnd.oci.image.manifest.v1+json", man); err != nil || resp.StatusCode != 201 {
			return fmt.Errorf("push manifest: %v %v", err, resp)
		}
	}
	realm := func(authz string) (string, error) {
		resp, err := do("GET", base+"/token?service=wharf&scope=repository:bench/private/auth:pull", authz, "", nil)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		var tok struct{ Token string }
		json.NewDecoder(resp.Body).Decode(&tok)
		if resp.StatusCode != 200 || tok.Token == "" {
			return "", fmt.Errorf("token realm: %s", resp.Status)
		}
		return "Bearer " + tok.Token, nil
	}
	bearer, err := realm(basic)
	if err != nil {
		return err
	}
	// An access token (a CI robot's).
	resp, err := do("POST", base+"/api/v1/tokens", basic, "application/json", []byte(`{"name":"bench-robot","repos":["bench/**"],"actions":["pull"]}`))
	if err != nil || resp.StatusCode != http.StatusCreated {
		return fmt.Errorf("create an access token: %v %v", err, resp)
	}
	var at struct{ Secret string }
	json.NewDecoder(resp.Body).Decode(&at)
	resp.Body.Close()
	robot := basicAuth("bench-robot", at.Secret)
	robotBearer, err := realm(robot)
	if err != nil {
		return err
	}
	rows := []struct {
		name, url, authz string
	}{
		{"anonymous (public repo)", base + "/v2/bench/public/auth/manifests/latest", ""},
		{"Basic (bcrypt cached)", base + "/v2/bench/private/auth/manifests/latest", basic},
		{"Bearer token", base + "/v2/bench/private/auth/manifests/latest", bearer},
		{"access token (Basic)", base + "/v2/bench/private/auth/manifests/latest", robot},
		{"access token's bearer", base + "/v2/bench/private/auth/manifests/latest", robotBearer},
	}
	if dir != nil {
		carol := basicAuth("carol", "carol-password")
		carolBearer, err := realm(carol)
		if err != nil {
			return err
		}
		rows = append(rows, struct{ name, url, authz string }{"LDAP user (Basic, cached)", rows[1].url, carol},
			struct{ name, url, authz string }{"LDAP user's bearer", rows[1].url, carolBearer})
	}
	fmt.Printf("auth: manifest GET by tag, %d connections, %s each (signed-in callers on a private repository):\n", *conns, *duration)
	var anon loadResult
	var failed int64
	for i, r := range rows {
		res := loadWith(c, r.url, r.authz, *conns, *duration)
		if i == 0 {
			anon = res
		}
		failed += res.errors
		fmt.Printf("  %-26s %8.0f req/s  p99 %6.2f ms  errors %d  (%.1f%% of anonymous)\n", r.name, res.rps, res.p99ms, res.errors, 100*res.rps/anon.rps)
	}
	fmt.Printf("  target: signed-in within 10%% of anonymous\n")
	if failed > 0 {
		return fmt.Errorf("requests failed in the auth benchmark")
	}
	return nil
}

func basicAuth(user, pass string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pass))
}
