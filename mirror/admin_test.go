package mirror

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/wharf-registry/wharf/mirror/admin"
	"github.com/wharf-registry/wharf/policy"
)

func adminRegistry(t *testing.T) *testRegistry {
	t.Helper()
	users, pol := adminAccess(t)
	reg := newTestRegistry(t, Options{Users: users, Policy: pol})
	reg.pusher = as("root")["Authorization"]
	return reg
}

// adminAccess is root (admin everywhere), alice (pull, push and delete
// in team/*) and reader (pulls team/*).
func adminAccess(t *testing.T) (*policy.Users, *policy.Policy) {
	t.Helper()
	users, err := policy.ParseHtpasswd(strings.NewReader(""))
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range []string{"root", "alice", "reader"} {
		users.Set(u, u+"-pw")
	}
	pol, err := policy.New(users.Len(), policy.Config{Rules: []policy.Rule{
		{Repos: []string{"**"}, Who: []string{"root"}, Actions: []policy.Action{policy.Pull, policy.Push, policy.Delete, policy.Admin}},
		{Repos: []string{"team/*"}, Who: []string{"alice"}, Actions: []policy.Action{policy.Pull, policy.Push, policy.Delete}},
		{Repos: []string{"team/*"}, Who: []string{"reader"}, Actions: []policy.Action{policy.Pull}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	return users, pol
}

func as(user string) map[string]string { return basic(user, user+"-pw") }

// TestAdminAPIAuthorization: every endpoint, as anonymous (401 with a
// Basic challenge), as a user without the right (403, or a private
// repository that does not exist to them) and as one with it.
func TestAdminAPIAuthorization(t *testing.T) {
	reg := adminRegistry(t)
	reg.pushImage(t, "team/app", "v1", nil)
	reg.pushImage(t, "secret/db", "v1", nil)
	reg.do(t, "PUT", "/v2/team/app/manifests/v2", reg.pushImage(t, "team/app", "v1", nil), map[string]string{"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
	for _, c := range []struct {
		method, path, who string
		want              int
	}{
		{"GET", "/api/v1/usage", "", 401},
		{"GET", "/api/v1/usage", "alice", 403},
		{"GET", "/api/v1/usage", "root", 200},
		{"POST", "/api/v1/gc?dry_run=true", "", 401},
		{"POST", "/api/v1/gc?dry_run=true", "alice", 403},
		{"POST", "/api/v1/gc?dry_run=true", "root", 200},
		{"GET", "/api/v1/repositories/secret/db/tags", "", 401},
		{"GET", "/api/v1/repositories/secret/db/tags", "alice", 404},
		{"GET", "/api/v1/repositories/team/app/tags", "reader", 200},
		{"DELETE", "/api/v1/repositories/team/app/tags/v2", "", 401},
		{"DELETE", "/api/v1/repositories/team/app/tags/v2", "reader", 403},
		{"DELETE", "/api/v1/repositories/secret/db/tags/v1", "alice", 403},
		{"DELETE", "/api/v1/repositories/team/app/tags/v2", "alice", 202},
		{"DELETE", "/api/v1/repositories/team/app/tags/v2", "alice", 404},
		{"GET", "/api/v1/nothing", "root", 404},
	} {
		hdr := map[string]string{"Authorization": ""}
		if c.who != "" {
			hdr = as(c.who)
		}
		resp, body := reg.do(t, c.method, c.path, nil, hdr)
		if resp.StatusCode != c.want {
			t.Errorf("%s %s as %q: %s %s, want %d", c.method, c.path, c.who, resp.Status, body, c.want)
		}
		if c.want == 401 && !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Basic ") {
			t.Errorf("%s %s anonymous: challenge %q", c.method, c.path, resp.Header.Get("WWW-Authenticate"))
		}
		if c.want >= 400 && ociError(t, body) == "" {
			t.Errorf("%s %s: not an OCI error: %s", c.method, c.path, body)
		}
	}
	// Listings show only what the caller may pull.
	_, body := reg.do(t, "GET", "/api/v1/repositories", nil, as("reader"))
	var list struct{ Repositories []admin.RepoInfo }
	json.Unmarshal(body, &list)
	if len(list.Repositories) != 1 || list.Repositories[0].Name != "team/app" || list.Repositories[0].Origin != "pushed" || list.Repositories[0].Tags != 1 {
		t.Fatalf("reader's repositories: %s", body)
	}
	_, body = reg.do(t, "GET", "/api/v1/repositories", nil, as("root"))
	json.Unmarshal(body, &list)
	if len(list.Repositories) != 2 {
		t.Fatalf("root's repositories: %s", body)
	}
}

// TestAdminAPIDeleteFrees: a tag deleted through the API is freed by the
// next collection at once, without the grace period; a dry run says how
// much first and frees nothing.
func TestAdminAPIDeleteFrees(t *testing.T) {
	reg := adminRegistry(t)
	body := reg.pushImage(t, "team/app", "v1", nil)
	reg.pushImage(t, "team/app", "keep", nil)
	var m struct {
		Layers []struct{ Digest digest.Digest }
	}
	json.Unmarshal(body, &m)
	_, tags := reg.do(t, "GET", "/api/v1/repositories/team/app/tags", nil, as("alice"))
	var tl struct {
		Tags []admin.TagInfo
	}
	json.Unmarshal(tags, &tl)
	if len(tl.Tags) != 2 || tl.Tags[1].Tag != "v1" || tl.Tags[1].Digest != digest.FromBytes(body).String() || tl.Tags[1].Bytes <= int64(len(body)) {
		t.Fatalf("tags: %s", tags)
	}
	if resp, out := reg.do(t, "DELETE", "/api/v1/repositories/team/app/tags/v1", nil, as("alice")); resp.StatusCode != 202 {
		t.Fatalf("delete: %s %s", resp.Status, out)
	}
	var gc struct {
		DryRun bool `json:"dry_run"`
		Bytes  int64
		Blobs  int
	}
	_, out := reg.do(t, "POST", "/api/v1/gc?dry_run=true", nil, as("root"))
	json.Unmarshal(out, &gc)
	want := int64(len(body)) + tl.Tags[1].Bytes - int64(len(body)) // the manifest, its config and layer
	if !gc.DryRun || gc.Blobs != 3 || gc.Bytes != want {
		t.Fatalf("dry run: %s (want 3 blobs, %d bytes)", out, want)
	}
	if _, err := reg.store.StatBlob("team/app", m.Layers[0].Digest); err != nil {
		t.Fatalf("a dry run removed something: %v", err)
	}
	_, out = reg.do(t, "POST", "/api/v1/gc", nil, as("root"))
	json.Unmarshal(out, &gc)
	if gc.DryRun || gc.Blobs != 3 || gc.Bytes != want {
		t.Fatalf("collection right after the delete (1 h grace): %s", out)
	}
	if resp, _ := reg.do(t, "GET", "/v2/team/app/blobs/"+m.Layers[0].Digest.String(), nil, as("alice")); resp.StatusCode != http.StatusNotFound {
		t.Fatalf("freed layer still served: %s", resp.Status)
	}
	if resp, _ := reg.do(t, "GET", "/v2/team/app/manifests/keep", nil, as("alice")); resp.StatusCode != http.StatusOK {
		t.Fatalf("the other tag: %s", resp.Status)
	}
	_, out = reg.do(t, "GET", "/api/v1/usage", nil, as("root"))
	var u struct {
		Total int64 `json:"total_bytes"`
	}
	json.Unmarshal(out, &u)
	if u.Total != tl.Tags[0].Bytes {
		t.Fatalf("usage after the collection: %s (want %d: the kept image)", out, tl.Tags[0].Bytes)
	}
}

// TestAdminAPIEvict: evicting a mirrored image untags it, the collection
// that follows (CollectReleased, which the server runs every 10 s) frees
// it without the grace, and the next pull goes upstream once; a pushed
// repository is not evicted; the audit events and upstreams are listed.
func TestAdminAPIEvict(t *testing.T) {
	e := newMirrorEnv(t, Options{AllowDelete: true, StatusInfo: func() admin.StatusInfo {
		return admin.StatusInfo{Upstreams: []admin.UpstreamStatus{{Name: "docker.io", Endpoint: "https://registry-1.docker.io", Up: true, RateLimitRemaining: 87}}}
	}})
	img := e.hub.Push("library/alpine", "3.20", smallImage(41))
	ctx := context.Background()
	if err := e.pull(ctx, "library/alpine", "3.20", ""); err != nil {
		t.Fatal(err)
	}
	e.pushImage(t, "team/app", "v1", nil)
	if resp, body := e.do(t, "DELETE", "/api/v1/repositories/team/app", nil, nil); resp.StatusCode != http.StatusForbidden || ociError(t, body) != "DENIED" {
		t.Fatalf("evicting a pushed repository: %s %s", resp.Status, body)
	}
	resp, body := e.do(t, "DELETE", "/api/v1/repositories/docker.io/library/alpine", nil, nil)
	if resp.StatusCode != http.StatusAccepted || !strings.Contains(string(body), `"3.20"`) {
		t.Fatalf("evict: %s %s", resp.Status, body)
	}
	rep, ran, err := collectReleased(e.reg)
	if err != nil || !ran || rep.Blobs < len(img.Layers[platform])+1 {
		t.Fatalf("collection after the eviction: ran %v, %+v, %v", ran, rep, err)
	}
	if _, ran, _ := collectReleased(e.reg); ran {
		t.Error("a second collection ran with nothing released")
	}
	e.hub.ResetCounts()
	if err := e.pull(ctx, "library/alpine", "3.20", ""); err != nil {
		t.Fatal(err)
	}
	if n, want := e.hub.Count("GET blob"), len(img.Layers[platform])+1; n != want {
		t.Fatalf("the pull after the eviction: %d blob GETs upstream, want %d (once each)", n, want)
	}
	_, body = e.do(t, "GET", "/api/v1/events", nil, nil)
	if !strings.Contains(string(body), `"event":"evict"`) {
		t.Fatalf("events: %s", body)
	}
	_, body = e.do(t, "GET", "/api/v1/upstreams", nil, nil)
	var ups struct {
		Upstreams []struct {
			Name      string
			Up        bool
			Remaining int `json:"rate_limit_remaining"`
		}
	}
	json.Unmarshal(body, &ups)
	if len(ups.Upstreams) != 1 || ups.Upstreams[0].Name != "docker.io" || !ups.Upstreams[0].Up || ups.Upstreams[0].Remaining != 87 {
		t.Fatalf("upstreams: %s", body)
	}
}

// TestAdminAPIDeletesNeedRights: with no users and no --allow-delete,
// the API deletes nothing (as the registry's DELETE); a registry DELETE
// with --allow-delete is collected by CollectReleased without the grace.
func TestAdminAPIDeletesNeedRights(t *testing.T) {
	reg := newTestRegistry(t, Options{})
	reg.pushImage(t, "team/app", "v1", nil)
	if resp, body := reg.do(t, "DELETE", "/api/v1/repositories/team/app/tags/v1", nil, nil); resp.StatusCode != http.StatusMethodNotAllowed || !strings.Contains(string(body), "allow-delete") {
		t.Fatalf("open registry without --allow-delete: %s %s", resp.Status, body)
	}
	open := newTestRegistry(t, Options{AllowDelete: true})
	body := open.pushImage(t, "team/app", "v1", nil)
	if resp, _ := open.do(t, "DELETE", "/v2/team/app/manifests/"+digest.FromBytes(body).String(), nil, nil); resp.StatusCode != http.StatusAccepted {
		t.Fatalf("registry DELETE: %s", resp.Status)
	}
	rep, ran, err := collectReleased(open.reg())
	if err != nil || !ran || rep.Blobs != 3 {
		t.Fatalf("after a registry DELETE: ran %v, %+v, %v", ran, rep, err)
	}
}
