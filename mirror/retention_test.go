package mirror

import (
	"encoding/json"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/wharf-registry/wharf/cache"
	"github.com/wharf-registry/wharf/mirror/admin"
	"github.com/wharf-registry/wharf/policy"
)

// TestRetentionPolicies: team/app holds v1.0 and t1…t8 (pushed in that
// order, each with a layer of its own and one they all share);
// `keep-last: 3`, `keep-tags: ["v*"]`, `keep-pulled-within: 1h`. The dry
// run names the 5 oldest t tags and removes nothing; after t2 is pulled it
// names 4. The run leaves t6, t7, t8, t2 and v1.0, and the collection then
// frees exactly the bytes it announced (the shared layer stays). A
// repository no policy names is untouched; only an admin may run it.
func TestRetentionPolicies(t *testing.T) {
	users, pol := adminAccess(t)
	cfg := policy.Config{Rules: pol.Rules(), RetentionPolicies: []policy.RetentionPolicy{
		{Repos: []string{"team/*"}, KeepLast: 3, KeepTags: []string{"v*"}, KeepPulledWithin: "1h"}}}
	pol, err := policy.New(users.Len(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	reg := newTestRegistry(t, Options{Users: users, Policy: pol, AllowDelete: true})
	reg.pusher = as("root")["Authorization"]
	shared := []byte("a base layer every tag shares")
	push := func(repo, tag string) {
		t.Helper()
		own := []byte("the layer of " + repo + ":" + tag)
		cfgBlob := []byte(`{"os":"linux","tag":"` + tag + `"}`)
		layer := func(b []byte) map[string]any {
			return map[string]any{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": reg.pushBlob(t, repo, b), "size": len(b)}
		}
		body, _ := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": cache.MediaTypeOCIManifest,
			"config": map[string]any{"mediaType": "application/vnd.oci.image.config.v1+json", "digest": reg.pushBlob(t, repo, cfgBlob), "size": len(cfgBlob)},
			"layers": []any{layer(shared), layer(own)}})
		if resp, out := reg.do(t, "PUT", "/v2/"+repo+"/manifests/"+tag, body, map[string]string{"Content-Type": cache.MediaTypeOCIManifest}); resp.StatusCode != http.StatusCreated {
			t.Fatalf("push %s:%s: %s %s", repo, tag, resp.Status, out)
		}
	}
	for _, tag := range []string{"v1.0", "t1", "t2", "t3", "t4", "t5", "t6", "t7", "t8"} {
		push("team/app", tag)
	}
	push("lib/base", "old") // no policy names lib/*

	run := func(who string, dry bool) (int, admin.RetentionReport) {
		t.Helper()
		path := "/api/v1/retention"
		if dry {
			path += "?dry-run=true"
		}
		resp, raw := reg.do(t, "POST", path, nil, as(who))
		var rep admin.RetentionReport
		json.Unmarshal(raw, &rep)
		return resp.StatusCode, rep
	}
	tagsOf := func(rep admin.RetentionReport) []string {
		var out []string
		for _, r := range rep.Removals {
			out = append(out, r.Tag)
		}
		slices.Sort(out)
		return out
	}
	if status, _ := run("alice", true); status != http.StatusForbidden {
		t.Fatalf("alice runs retention: %d, want 403", status)
	}
	status, rep := run("root", true)
	if status != http.StatusOK || !rep.DryRun || !slices.Equal(tagsOf(rep), []string{"t1", "t2", "t3", "t4", "t5"}) || rep.Bytes <= 0 {
		t.Fatalf("dry run: %d %+v", status, rep)
	}
	if tags := reg.tags(t, "team/app"); len(tags) != 9 {
		t.Fatalf("the dry run removed tags: %v", tags)
	}
	// A client pulls t2: keep-pulled-within keeps it.
	if resp, _ := reg.do(t, "GET", "/v2/team/app/manifests/t2", nil, as("root")); resp.StatusCode != http.StatusOK {
		t.Fatalf("pull t2: %s", resp.Status)
	}
	status, rep = run("root", true)
	if status != http.StatusOK || !slices.Equal(tagsOf(rep), []string{"t1", "t3", "t4", "t5"}) {
		t.Fatalf("dry run after t2's pull: %d %+v", status, rep)
	}
	announced := rep.Bytes
	// The console's Retention page previews the same, with the bytes.
	b := newBrowser(t, reg.srv)
	b.signIn("root", "root-pw")
	_, page := b.get("/retention")
	for _, want := range []string{`id="retention-count">4<`, "<b>t1</b>", "<b>t5</b>", `id="apply-retention"`, "retention policy 1 (repos team/*)"} {
		if !strings.Contains(page, want) {
			t.Fatalf("the Retention page lacks %q:\n%s", want, page)
		}
	}
	if strings.Contains(page, "<b>t2</b>") {
		t.Fatal("the Retention page would remove t2, pulled a moment ago")
	}
	// Each removal frees its manifest, config and own layer; the shared
	// layer is counted by none.
	for _, r := range rep.Removals {
		if r.Bytes <= 0 || r.Bytes >= announced || r.Policy == "" || r.Pushed.IsZero() {
			t.Fatalf("removal %+v of %d bytes in all", r, announced)
		}
	}

	status, rep = run("root", false)
	if status != http.StatusOK || rep.DryRun || !slices.Equal(tagsOf(rep), []string{"t1", "t3", "t4", "t5"}) || rep.Bytes != announced {
		t.Fatalf("run: %d %+v (announced %d bytes)", status, rep, announced)
	}
	tags := reg.tags(t, "team/app")
	slices.Sort(tags)
	if !slices.Equal(tags, []string{"t2", "t6", "t7", "t8", "v1.0"}) {
		t.Fatalf("tags after the run: %v", tags)
	}
	// Applied from the console now, nothing is left to remove.
	resp, _ := b.post("/retention", url.Values{"csrf": {b.csrf(page)}})
	if loc := resp.Header.Get("Location"); resp.StatusCode != http.StatusSeeOther || !strings.Contains(loc, "Applied%3A+0+tags") {
		t.Fatalf("applying from the console: %s %s", resp.Status, loc)
	}
	if tags := reg.tags(t, "lib/base"); !slices.Equal(tags, []string{"old"}) {
		t.Fatalf("lib/base, which no policy names: %v", tags)
	}
	resp, raw := reg.do(t, "POST", "/api/v1/gc", nil, as("root"))
	var gc struct{ Bytes int64 }
	if json.Unmarshal(raw, &gc); resp.StatusCode != http.StatusOK || gc.Bytes <= 0 {
		t.Fatalf("gc after the run: %s %s", resp.Status, raw)
	}
	if gc.Bytes != announced {
		t.Fatalf("the collection freed %d bytes; the run announced %d", gc.Bytes, announced)
	}
	// The shared layer is still there: the kept tags pull whole.
	for _, tag := range []string{"t2", "t8", "v1.0"} {
		if resp, _ := reg.do(t, "GET", "/v2/team/app/manifests/"+tag, nil, as("root")); resp.StatusCode != http.StatusOK {
			t.Fatalf("kept %s: %s", tag, resp.Status)
		}
	}
	if resp, _ := reg.do(t, "HEAD", "/v2/team/app/blobs/"+digest.FromBytes(shared).String(), nil, as("root")); resp.StatusCode != http.StatusOK {
		t.Fatalf("the shared layer after the collection: %s", resp.Status)
	}
}

// tags lists repo's tags (as root).
func (r *testRegistry) tags(t *testing.T, repo string) []string {
	t.Helper()
	resp, raw := r.do(t, "GET", "/v2/"+repo+"/tags/list", nil, as("root"))
	var list struct{ Tags []string }
	if err := json.Unmarshal(raw, &list); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("tags of %s: %s %s", repo, resp.Status, raw)
	}
	return list.Tags
}

// TestUntaggedAfter: `untagged-after: 7d` keeps team/*'s untagged
// manifests through collections past the GC grace, until 7 days; other
// repositories' go after the grace as before.
func TestUntaggedAfter(t *testing.T) {
	users, pol := adminAccess(t)
	pol, err := policy.New(users.Len(), policy.Config{Rules: pol.Rules(), RetentionPolicies: []policy.RetentionPolicy{
		{Repos: []string{"team/*"}, KeepLast: 10, UntaggedAfter: "7d"}}})
	if err != nil {
		t.Fatal(err)
	}
	reg := newTestRegistry(t, Options{Users: users, Policy: pol, AllowDelete: true})
	reg.pusher = as("root")["Authorization"]
	reg.pushImage(t, "team/app", "v1", nil)
	reg.pushImage(t, "lib/base", "v1", nil)
	// Moving the tags leaves the first manifests untagged.
	reg.pushImage(t, "team/app", "v1", map[string]any{"annotations": map[string]string{"n": "2"}})
	reg.pushImage(t, "lib/base", "v1", map[string]any{"annotations": map[string]string{"n": "2"}})
	gc := func(after time.Duration) cache.GCReport {
		t.Helper()
		rep, err := reg.store.Maintenance().GC(cache.GCOptions{Grace: time.Hour, Now: time.Now().Add(after)})
		if err != nil {
			t.Fatal(err)
		}
		return rep
	}
	rep := gc(2 * time.Hour)
	if rep.Manifests != 1 || !strings.Contains(strings.Join(rep.Items, "\n"), "manifest lib/base@") {
		t.Fatalf("past the grace: %+v, want lib/base's untagged manifest only", rep.Items)
	}
	if rep := gc(6 * 24 * time.Hour); rep.Manifests != 0 {
		t.Fatalf("after 6 days team/app's untagged manifest went: %v", rep.Items)
	}
	if rep := gc(8 * 24 * time.Hour); rep.Manifests != 1 || !strings.Contains(strings.Join(rep.Items, "\n"), "manifest team/app@") {
		t.Fatalf("after 8 days: %v, want team/app's untagged manifest", rep.Items)
	}
}
