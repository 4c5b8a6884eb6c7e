package mirror

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/wharf-registry/wharf/internal/fakehub"
)

// TestRouting: ?ns= selects a registry and is echoed in OCI-Namespace; a
// registry host as first path component works too; a registry that is not
// allowed is refused without a connection.
func TestRouting(t *testing.T) {
	e := newMirrorEnv(t, Options{})
	img := e.ghcr.Push("org/app", "v1", smallImage(12))
	ctx := context.Background()
	if err := e.pull(ctx, "org/app", "v1", "?ns=ghcr.io"); err != nil {
		t.Fatal(err)
	}
	resp, _ := e.do(t, "GET", "/v2/org/app/manifests/v1?ns=ghcr.io", nil, nil)
	if resp.Header.Get("OCI-Namespace") != "ghcr.io" || resp.Header.Get("Docker-Content-Digest") != img.Index.String() {
		t.Fatalf("?ns= answer: %v", resp.Header)
	}
	if err := e.pull(ctx, "ghcr.io/org/app", "v1", ""); err != nil {
		t.Fatalf("registry prefix: %v", err)
	}
	if e.hub.Count("GET manifest")+e.hub.Count("HEAD manifest") != 0 {
		t.Fatal("ghcr.io content was asked of docker.io")
	}
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	defer ln.Close()
	accepted := make(chan struct{}, 1)
	go func() {
		if c, err := ln.Accept(); err == nil {
			c.Close()
			accepted <- struct{}{}
		}
	}()
	resp, body := e.do(t, "GET", "/v2/x/y/manifests/v1?ns="+ln.Addr().String(), nil, nil)
	if resp.StatusCode != http.StatusForbidden || ociError(t, body) != "DENIED" {
		t.Fatalf("registry off the allow-list: %s %s", resp.Status, body)
	}
	select {
	case <-accepted:
		t.Fatal("Wharf connected to a registry that is not allowed")
	case <-time.After(100 * time.Millisecond):
	}
}

// TestPrivateAndMirroredNames: a pushed repository never goes upstream; a
// push may not shadow mirrored content or name another registry (a
// single-component name such as alpine is a private name: see
// TestRegistry2Names).
func TestPrivateAndMirroredNames(t *testing.T) {
	e := newMirrorEnv(t, Options{})
	e.hub.Push("team/app", "v1", smallImage(13)) // Docker Hub has team/app too
	e.pushImage(t, "team/app", "v1", nil)
	resp, _ := e.do(t, "GET", "/v2/team/app/manifests/v1", nil, nil)
	if resp.StatusCode != 200 || e.hub.Count("GET manifest")+e.hub.Count("HEAD manifest") != 0 {
		t.Fatalf("private repository: %s, %d upstream requests", resp.Status, e.hub.Count("GET manifest"))
	}
	e.hub.Push("library/alpine", "latest", smallImage(14))
	if err := e.pull(context.Background(), "library/alpine", "latest", ""); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{"/v2/library/alpine/blobs/uploads/", "/v2/ghcr.io/org/x/blobs/uploads/", "/v2/org/x/blobs/uploads/?ns=ghcr.io"} {
		resp, body := e.do(t, "POST", path, nil, nil)
		if resp.StatusCode != http.StatusForbidden || ociError(t, body) != "DENIED" {
			t.Fatalf("push to %s: %s %s", path, resp.Status, body)
		}
	}
	// The mirrored content is unchanged for the next mirror client.
	if err := e.pull(context.Background(), "library/alpine", "latest", ""); err != nil {
		t.Fatal(err)
	}
}

func TestOffline(t *testing.T) {
	e := newMirrorEnv(t, Options{Offline: true})
	e.hub.Push("library/alpine", "latest", smallImage(15))
	resp, body := e.do(t, "GET", "/v2/library/alpine/manifests/latest", nil, nil)
	if resp.StatusCode != http.StatusNotFound || ociError(t, body) != "MANIFEST_UNKNOWN" {
		t.Fatalf("offline miss: %s %s", resp.Status, body)
	}
	if e.hub.Count("HEAD manifest")+e.hub.Count("GET manifest") != 0 {
		t.Fatal("offline mode contacted upstream")
	}
}

// TestForwardedCredentialsIgnored: dockerd forwards Docker Hub credentials
// to its mirrors; they never break an anonymous pull.
func TestForwardedCredentialsIgnored(t *testing.T) {
	e := newMirrorEnv(t, Options{})
	e.hub.Push("library/alpine", "latest", smallImage(16))
	for _, auth := range []string{"Basic ZG9ja2VyaHViOnNlY3JldA==", "Bearer some.hub.jwt"} {
		resp, body := e.do(t, "GET", "/v2/library/alpine/manifests/latest", nil, map[string]string{"Authorization": auth})
		if resp.StatusCode != 200 {
			t.Fatalf("pull with Authorization %q: %s %s", auth, resp.Status, body)
		}
	}
	if e.hub.Count("credleak") != 0 {
		t.Fatal("a client's credentials were forwarded upstream")
	}
}

// TestPrefetchPlatforms: an index fetch also fetches the configured
// platforms' manifests and blobs before any client asks.
func TestPrefetchPlatforms(t *testing.T) {
	e := newMirrorEnv(t, Options{PrefetchPlatforms: []string{"linux/arm64"}})
	img := e.hub.Push("library/multi", "1", smallImage(17))
	resp, _ := e.do(t, "GET", "/v2/library/multi/manifests/1", nil, nil)
	if resp.StatusCode != 200 {
		t.Fatal(resp.Status)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := e.store.StatBlob("docker.io/library/multi", img.Configs["linux/arm64"])
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("arm64 config was not prefetched")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := e.store.GetManifest("docker.io/library/multi", img.Manifests["linux/amd64"].String()); err == nil {
		t.Fatal("a platform that was not configured was prefetched")
	}
}

// TestStaleTagRevalidatedOnce: many clients asking for a stale tag at once
// cause one HEAD upstream.
func TestStaleTagRevalidatedOnce(t *testing.T) {
	e := newMirrorEnv(t, Options{TagTTL: 50 * time.Millisecond})
	e.hub.Push("library/alpine", "3", smallImage(18))
	if resp, _ := e.do(t, "GET", "/v2/library/alpine/manifests/3", nil, nil); resp.StatusCode != 200 {
		t.Fatal(resp.Status)
	}
	time.Sleep(60 * time.Millisecond)
	e.hub.ResetCounts()
	e.hub.SetLatency(100 * time.Millisecond) // keep the HEAD in flight while the others arrive
	var g errgroup.Group
	for i := 0; i < 10; i++ {
		g.Go(func() error {
			resp, err := http.Get(e.srv.URL + "/v2/library/alpine/manifests/3")
			if err != nil {
				return err
			}
			resp.Body.Close()
			if resp.StatusCode != 200 {
				return fmt.Errorf("%s", resp.Status)
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	if n := e.hub.Count("HEAD manifest"); n != 1 {
		t.Fatalf("%d revalidation HEADs for 10 concurrent clients, want 1", n)
	}
}

// TestSharedLayerDownloadedOnce: a layer two mirrored repositories share is
// downloaded once; the second repository gets it after a HEAD.
func TestSharedLayerDownloadedOnce(t *testing.T) {
	e := newMirrorEnv(t, Options{})
	spec := fakehub.ImageSpec{Platforms: []string{platform}, Layers: 2, LayerSize: 256 << 10, Seed: 19}
	img := e.hub.Push("library/python", "3", spec)
	e.hub.Push("library/node", "22", spec) // same layers and config
	if err := e.pull(context.Background(), "library/python", "3", ""); err != nil {
		t.Fatal(err)
	}
	waitFillsDone(t, e)
	e.hub.ResetCounts()
	if err := e.pull(context.Background(), "library/node", "22", ""); err != nil {
		t.Fatal(err)
	}
	waitFillsDone(t, e)
	for _, d := range img.Blobs {
		if n := e.hub.Count("GET blob " + d.String()); n != 0 {
			t.Fatalf("shared blob %s downloaded again (%d GETs)", d, n)
		}
	}
	if e.hub.Count("HEAD blob") == 0 {
		t.Fatal("shared blobs were linked without asking upstream")
	}
	// A repository upstream does not hold the blob in gets no link.
	if resp, body := e.do(t, "GET", "/v2/library/other/blobs/"+img.Blobs[0].String(), nil, nil); resp.StatusCode != http.StatusNotFound {
		t.Fatalf("blob served through a repository upstream does not have it: %s %s", resp.Status, body)
	}
}
