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

	"github.com/wharf-registry/wharf/policy"
)

// runAuth compares manifest GETs by tag at -conns connections: anonymous,
// signed in with Basic credentials (bcrypt cached), and with a token from
// Wharf's realm.
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
	rules := "rules:\n  - repos: [\"bench/**\"]\n    who: [alice]\n    actions: [pull, push]\n  - repos: [\"bench/**\"]\n    who: [everyone]\n    actions: [pull]\n"
	if err := os.WriteFile(config, []byte(rules), 0o644); err != nil {
		return err
	}
	w, err := startProc(bin, "serve", "--addr", "127.0.0.1:0", "--data", filepath.Join(tmp, "auth-data"), "--log-level", "warn",
		"--mirror=false", "--htpasswd", htpasswd, "--config", config)
	if err != nil {
		return err
	}
	defer w.stop()
	base := "http://" + w.addr
	basic := "Basic " + base64.StdEncoding.EncodeToString([]byte("alice:bench-password"))
	c := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: *conns}}
	do := func(method, url, ct string, body []byte) (*http.Response, error) {
		req, _ := http.NewRequest(method, url, bytes.NewReader(body))
		req.Header.Set("Authorization", basic)
		if ct != "" {
			req.Header.Set("Content-Type", ct)
		}
		return c.Do(req)
	}
	cfg := []byte(`{"os":"linux"}`)
	cd := digest.FromBytes(cfg)
	if resp, err := do("POST", base+"/v2/bench/auth/blobs/uploads/?digest="+cd.String(), "", cfg); err != nil || resp.StatusCode != 201 {
		return fmt.Errorf("push config: %v %v", err, resp)
	}
	man, _ := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
		"config": map[string]any{"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": len(cfg)}, "layers": []any{}})
	if resp, err := do("PUT", base+"/v2/bench/auth/manifests/latest", "application/vnd.oci.image.manifest.v1+json", man); err != nil || resp.StatusCode != 201 {
		return fmt.Errorf("push manifest: %v %v", err, resp)
	}
	req, _ := http.NewRequest("GET", base+"/token?service=wharf&scope=repository:bench/auth:pull", nil)
	req.Header.Set("Authorization", basic)
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	var tok struct{ Token string }
	json.NewDecoder(resp.Body).Decode(&tok)
	resp.Body.Close()
	// An access token (a CI robot's): Basic NAME:SECRET, and the realm's
	// bearer token issued to it.
	resp, err = do("POST", base+"/api/v1/tokens", "application/json", []byte(`{"name":"bench-robot","repos":["bench/**"],"actions":["pull"]}`))
	if err != nil || resp.StatusCode != http.StatusCreated {
		return fmt.Errorf("create an access token: %v %v", err, resp)
	}
	var at struct{ Secret string }
	json.NewDecoder(resp.Body).Decode(&at)
	resp.Body.Close()
	robot := "Basic " + base64.StdEncoding.EncodeToString([]byte("bench-robot:"+at.Secret))
	req, _ = http.NewRequest("GET", base+"/token?service=wharf&scope=repository:bench/auth:pull", nil)
	req.Header.Set("Authorization", robot)
	if resp, err = c.Do(req); err != nil {
		return err
	}
	var robotTok struct{ Token string }
	json.NewDecoder(resp.Body).Decode(&robotTok)
	resp.Body.Close()
	url := base + "/v2/bench/auth/manifests/latest"
	fmt.Printf("auth: manifest GET by tag, %d connections, %s each:\n", *conns, *duration)
	anon := loadWith(c, url, "", *conns, *duration)
	withBasic := loadWith(c, url, basic, *conns, *duration)
	withToken := loadWith(c, url, "Bearer "+tok.Token, *conns, *duration)
	withRobot := loadWith(c, url, robot, *conns, *duration)
	withRobotBearer := loadWith(c, url, "Bearer "+robotTok.Token, *conns, *duration)
	for _, r := range []struct {
		name string
		res  loadResult
	}{{"anonymous", anon}, {"Basic (bcrypt cached)", withBasic}, {"Bearer token", withToken},
		{"access token (Basic)", withRobot}, {"access token's bearer", withRobotBearer}} {
		fmt.Printf("  %-24s %8.0f req/s  p99 %6.2f ms  errors %d  (%.1f%% of anonymous)\n", r.name, r.res.rps, r.res.p99ms, r.res.errors, 100*r.res.rps/anon.rps)
	}
	fmt.Printf("  target: signed-in within 10%% of anonymous\n")
	if anon.errors+withBasic.errors+withToken.errors+withRobot.errors+withRobotBearer.errors > 0 {
		return fmt.Errorf("requests failed in the auth benchmark")
	}
	return nil
}
