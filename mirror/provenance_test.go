package mirror

import (
	"context"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/wharf-registry/wharf/cache"
	"github.com/wharf-registry/wharf/internal/fakehub"
	"github.com/wharf-registry/wharf/policy"
)

// TestExplicitPushUnderRegistryName: an image pushed, by an explicit rule,
// under a registry-named path is private by its recorded origin: its pusher
// reads it by tag and by digest from Wharf (never from that registry), and
// an anonymous caller cannot read it at all, although anonymous-mirror-pull
// is on.
func TestExplicitPushUnderRegistryName(t *testing.T) {
	users, err := policy.ParseHtpasswd(strings.NewReader(""))
	if err != nil {
		t.Fatal(err)
	}
	users.Set("bot", "bot-pw")
	pol, err := policy.New(users.Len(), policy.Config{Rules: []policy.Rule{
		{Repos: []string{"ghcr.io/corp/*"}, Who: []string{"bot"}, Actions: []policy.Action{policy.Pull, policy.Push}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	e := newMirrorEnv(t, Options{Users: users, Policy: pol})
	bot := basic("bot", "bot-pw")
	if st := e.pushAs(t, "ghcr.io/corp/secret", "v1", bot, []byte("secret layer")); st != http.StatusCreated {
		t.Fatalf("explicitly allowed push: %d", st)
	}
	resp, body := e.do(t, "GET", "/v2/ghcr.io/corp/secret/manifests/v1", nil, bot)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("pusher's GET by tag: %s %s", resp.Status, body)
	}
	d := resp.Header.Get("Docker-Content-Digest")
	if resp, body := e.do(t, "GET", "/v2/ghcr.io/corp/secret/manifests/"+d, nil, bot); resp.StatusCode != http.StatusOK {
		t.Fatalf("pusher's GET by digest: %s %s", resp.Status, body)
	}
	layer := digest.FromBytes([]byte("secret layer")).String()
	for _, path := range []string{"/manifests/v1", "/manifests/" + d, "/blobs/" + layer, "/tags/list"} {
		resp, body := e.do(t, "GET", "/v2/ghcr.io/corp/secret"+path, nil, nil)
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("anonymous GET %s: %s %s, want 401", path, resp.Status, body)
		}
	}
	if n := e.ghcr.Count("GET manifest") + e.ghcr.Count("HEAD manifest") + e.ghcr.Count("token"); n != 0 {
		t.Fatalf("reads of a pushed image went to ghcr.io (%d requests)", n)
	}
}

// TestUnauthorizedCarriesDetail: a refused anonymous push gets a 401 whose
// error has a detail (as registry:2 sends it), which makes docker fail at
// once instead of retrying.
func TestUnauthorizedCarriesDetail(t *testing.T) {
	users, pol := testPolicy(t)
	r := newTestRegistry(t, Options{Users: users, Policy: pol})
	resp, body := r.do(t, "POST", "/v2/team/app/blobs/uploads/", nil, nil)
	if resp.StatusCode != http.StatusUnauthorized || resp.Header.Get("WWW-Authenticate") == "" {
		t.Fatalf("anonymous push: %s", resp.Status)
	}
	if !containsAll(string(body), `"detail":[`, `"Name":"team/app"`, `"Action":"push"`) {
		t.Fatalf("401 without an access detail: %s", body)
	}
}

func containsAll(s string, subs ...string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}

// TestTwoRepositoriesOneDownload: two images sharing a new layer pulled at
// once download each shared blob from upstream once.
func TestTwoRepositoriesOneDownload(t *testing.T) {
	e := newMirrorEnv(t, Options{PrefetchParallel: -1})
	e.hub.SetLatency(20 * time.Millisecond) // both are in flight together
	spec := fakehub.ImageSpec{Platforms: []string{platform}, Layers: 2, LayerSize: 2 << 20, Seed: 77}
	img := e.hub.Push("library/left", "1", spec)
	e.hub.Push("library/right", "1", spec) // same config and layers
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	for _, name := range []string{"library/left", "library/right"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- e.pull(context.Background(), name, "1", "")
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	waitFillsDone(t, e)
	for _, d := range img.Blobs {
		if n := e.hub.Count("GET blob " + d.String()); n != 1 {
			t.Errorf("blob %s: %d upstream GETs for two repositories, want 1", d, n)
		}
	}
	for _, repo := range []string{"docker.io/library/left", "docker.io/library/right"} {
		for _, d := range img.Blobs {
			if _, err := e.store.StatBlob(repo, d); err != nil {
				t.Errorf("%s: %s not linked: %v", repo, d, err)
			}
		}
	}
}

// TestDeletedPushedNameStaysPrivate: once its pushed image is deleted and
// collected, a private name still never reads from Docker Hub, even when
// the hub has an image of that name.
func TestDeletedPushedNameStaysPrivate(t *testing.T) {
	e := newMirrorEnv(t, Options{AllowDelete: true})
	e.hub.Push("team/app", "v1", smallImage(90)) // someone registers the name upstream
	e.pushImage(t, "team/app", "v1", nil)
	resp, _ := e.do(t, "GET", "/v2/team/app/manifests/v1", nil, nil)
	d := resp.Header.Get("Docker-Content-Digest")
	if resp, body := e.do(t, "DELETE", "/v2/team/app/manifests/"+d, nil, nil); resp.StatusCode != http.StatusAccepted {
		t.Fatalf("delete: %s %s", resp.Status, body)
	}
	if _, err := e.store.Maintenance().GC(cache.GCOptions{Grace: time.Hour, Now: time.Now().Add(2 * time.Hour)}); err != nil {
		t.Fatal(err)
	}
	e.hub.ResetCounts()
	if resp, body := e.do(t, "GET", "/v2/team/app/manifests/v1", nil, nil); resp.StatusCode != http.StatusNotFound {
		t.Fatalf("deleted private name: %s %s, want 404", resp.Status, body)
	}
	if n := e.hub.Count("GET manifest") + e.hub.Count("HEAD manifest") + e.hub.Count("token"); n != 0 {
		t.Fatalf("a deleted private name was read from Docker Hub (%d requests)", n)
	}
}
