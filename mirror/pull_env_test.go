package mirror

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sync/errgroup"

	"github.com/wharf-registry/wharf/cache"
	"github.com/wharf-registry/wharf/cache/stores"
	"github.com/wharf-registry/wharf/internal/fakehub"
	"github.com/wharf-registry/wharf/upstream"
)

// mirrorEnv is Wharf in mirror mode over a real store, with docker.io (and
// ghcr.io) pointed at fake hubs.
type mirrorEnv struct {
	*testRegistry
	hub, ghcr *fakehub.Hub
	reg       *Server
}

func newMirrorEnv(t testing.TB, opts Options) *mirrorEnv {
	t.Helper()
	return newMirrorEnvWith(t, opts, upstream.Options{})
}

// newMirrorEnvWith is newMirrorEnv with upstream options (its registries,
// probe interval and logger are the env's).
func newMirrorEnvWith(t testing.TB, opts Options, uo upstream.Options) *mirrorEnv {
	t.Helper()
	hub, ghcr := fakehub.Start(t), fakehub.Start(t)
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	uo.Registries = []upstream.Registry{{Name: "docker.io", Endpoint: hub.URL}, {Name: "ghcr.io", Endpoint: ghcr.URL}}
	uo.ProbeEvery, uo.Logger = 50*time.Millisecond, quiet
	up, err := upstream.New(uo)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(up.Close)
	dir := t.TempDir()
	st, err := stores.Open(cache.Options{Dir: dir, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	opts.Upstream = up
	if opts.Logger == nil {
		opts.Logger = quiet
	}
	reg := New(st, opts)
	srv := httptest.NewServer(reg)
	t.Cleanup(func() {
		srv.Close()
		reg.Close()
		st.Close()
	})
	return &mirrorEnv{testRegistry: &testRegistry{srv: srv, store: st, dir: dir}, hub: hub, ghcr: ghcr, reg: reg}
}

var platform = "linux/" + runtime.GOARCH

// pull does what dockerd does through a mirror: the index by tag, this
// platform's manifest, then config and layers three at a time, checking
// every digest. query is appended to every URL (for ?ns=).
func (e *mirrorEnv) pull(ctx context.Context, name, tag, query string) error {
	get := func(path string) ([]byte, *http.Response, error) {
		req, _ := http.NewRequestWithContext(ctx, "GET", e.srv.URL+path+query, nil)
		req.Header.Set("Accept", strings.Join([]string{fakehub.MediaTypeDockerList, fakehub.MediaTypeDockerManifest, fakehub.MediaTypeOCIIndex, fakehub.MediaTypeOCIManifest}, ","))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return nil, nil, err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			return nil, resp, err
		}
		if resp.StatusCode != http.StatusOK {
			return b, resp, fmt.Errorf("GET %s: %s %s", path, resp.Status, b)
		}
		return b, resp, nil
	}
	idx, _, err := get("/v2/" + name + "/manifests/" + tag)
	if err != nil {
		return err
	}
	var list struct {
		Manifests []struct {
			Digest   digest.Digest
			Platform struct{ OS, Architecture string }
		}
	}
	json.Unmarshal(idx, &list)
	var md digest.Digest
	for _, m := range list.Manifests {
		if m.Platform.OS+"/"+m.Platform.Architecture == platform {
			md = m.Digest
		}
	}
	man, _, err := get("/v2/" + name + "/manifests/" + md.String())
	if err != nil {
		return err
	}
	if digest.FromBytes(man) != md {
		return fmt.Errorf("manifest %s: wrong bytes", md)
	}
	var m struct {
		Config struct{ Digest digest.Digest }
		Layers []struct{ Digest digest.Digest }
	}
	json.Unmarshal(man, &m)
	var g errgroup.Group
	g.SetLimit(3)
	for _, d := range append([]digest.Digest{m.Config.Digest}, func() (ds []digest.Digest) {
		for _, l := range m.Layers {
			ds = append(ds, l.Digest)
		}
		return
	}()...) {
		g.Go(func() error {
			b, _, err := get("/v2/" + name + "/blobs/" + d.String())
			if err != nil {
				return err
			}
			if digest.FromBytes(b) != d {
				return fmt.Errorf("blob %s: got %s", d, digest.FromBytes(b))
			}
			return nil
		})
	}
	return g.Wait()
}

func smallImage(seed uint64) fakehub.ImageSpec {
	return fakehub.ImageSpec{Platforms: []string{"linux/amd64", "linux/arm64"}, Layers: 3, LayerSize: 200 << 10, Seed: seed}
}

// TestConcurrentColdPulls: 20 clients pull the same new image at once;
// Docker Hub sees one request per blob (a GET, no HEAD) and per manifest.
func TestConcurrentColdPulls(t *testing.T) {
	e := newMirrorEnv(t, Options{})
	img := e.hub.Push("library/alpine", "latest", smallImage(1))
	e.hub.SetLatency(20 * time.Millisecond)
	var g errgroup.Group
	for i := 0; i < 20; i++ {
		g.Go(func() error { return e.pull(context.Background(), "library/alpine", "latest", "") })
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	for _, d := range img.Blobs {
		if n := e.hub.Count("GET blob " + d.String()); n > 1 {
			t.Fatalf("blob %s fetched %d times from upstream", d, n)
		}
	}
	// This platform's config and layers were fetched; the index and one
	// platform manifest: two manifest GETs in all.
	if n := e.hub.Count("GET blob"); n != 4 {
		t.Fatalf("%d upstream blob GETs, want 4 (config + 3 layers of one platform)", n)
	}
	// One request per cold blob: no HEAD before each GET.
	if n := e.hub.Count("HEAD blob"); n != 0 {
		t.Fatalf("%d upstream blob HEADs for a cold pull, want 0", n)
	}
	if n := e.hub.Count("GET manifest"); n != 2 {
		t.Fatalf("%d upstream manifest GETs, want 2", n)
	}
}

// TestWarmPullAndTTL: a second pull needs no upstream blob; within the TTL
// no upstream request at all; after it only a HEAD.
func TestWarmPullAndTTL(t *testing.T) {
	// The TTL leaves room for a loaded CI machine (-race, other packages'
	// tests): the warm pull must come within it.
	const ttl = 1500 * time.Millisecond
	e := newMirrorEnv(t, Options{TagTTL: ttl})
	e.hub.Push("library/nginx", "1.27", smallImage(2))
	ctx := context.Background()
	if err := e.pull(ctx, "library/nginx", "1.27", ""); err != nil {
		t.Fatal(err)
	}
	waitFillsDone(t, e)
	e.hub.ResetCounts()
	if err := e.pull(ctx, "library/nginx", "1.27", ""); err != nil {
		t.Fatal(err)
	}
	if n := e.hub.Count("GET blob") + e.hub.Count("GET manifest") + e.hub.Count("HEAD manifest"); n != 0 {
		t.Fatalf("warm pull within the TTL made %d upstream requests", n)
	}
	time.Sleep(ttl + 50*time.Millisecond)
	if err := e.pull(ctx, "nginx", "1.27", ""); err != nil { // single-component name: library/nginx
		t.Fatal(err)
	}
	if e.hub.Count("GET blob") != 0 || e.hub.Count("GET manifest") != 0 || e.hub.Count("HEAD manifest") != 1 {
		t.Fatalf("after the TTL: %d blob GETs, %d manifest GETs, %d HEADs; want 0, 0, 1",
			e.hub.Count("GET blob"), e.hub.Count("GET manifest"), e.hub.Count("HEAD manifest"))
	}
	// The tag moves upstream: after the TTL the new image is served.
	img2 := e.hub.Push("library/nginx", "1.27", smallImage(3))
	time.Sleep(ttl + 50*time.Millisecond)
	resp, _ := e.do(t, "GET", "/v2/library/nginx/manifests/1.27", nil, nil)
	if resp.Header.Get("Docker-Content-Digest") != img2.Index.String() {
		t.Fatalf("moved tag: serving %s, want %s", resp.Header.Get("Docker-Content-Digest"), img2.Index)
	}
}

// waitFillsDone waits until no download is in flight (prefetches included).
func waitFillsDone(t *testing.T, e *mirrorEnv) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if n := len(e.reg.reg.Fills()); n == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d downloads still in flight", len(e.reg.reg.Fills()))
		}
		time.Sleep(5 * time.Millisecond)
	}
}
