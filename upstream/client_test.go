package upstream

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/wharf-registry/wharf/internal/fakehub"
)

func newTestClient(t *testing.T, hub *fakehub.Hub, user, pass string) *Client {
	t.Helper()
	c, err := New(Options{
		Registries: []Registry{{Name: "docker.io", Endpoint: hub.URL, Username: user, Password: pass}},
		ProbeEvery: 50 * time.Millisecond,
		Logger:     slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// TestResolveAndFetch walks the token flow: one token per scope however
// many requests wait, credentials only to the realm (not across the blob
// redirect), manifests verified, blobs streamed.
func TestResolveAndFetch(t *testing.T) {
	hub := fakehub.Start(t)
	hub.SetUser("alice", "s3cret")
	hub.SetRedirect(true)
	img := hub.Push("library/alpine", "latest", fakehub.ImageSpec{Platforms: []string{"linux/amd64"}, Layers: 2, LayerSize: 4096, Seed: 1})
	c := newTestClient(t, hub, "alice", "s3cret")
	ctx := context.Background()

	desc, err := c.Resolve(ctx, "docker.io", "library/alpine", "latest")
	if err != nil || desc.Digest != img.Index || desc.MediaType != fakehub.MediaTypeDockerList {
		t.Fatalf("resolve: %+v %v", desc, err)
	}
	if hub.Count("GET manifest") != 0 || hub.Count("HEAD manifest") != 1 {
		t.Fatalf("resolve used %d GETs, %d HEADs; want 0 and 1", hub.Count("GET manifest"), hub.Count("HEAD manifest"))
	}
	body, err := c.Manifest(ctx, "docker.io", "library/alpine", desc, 4<<20)
	if err != nil || digest.FromBytes(body) != img.Index {
		t.Fatalf("manifest: %v", err)
	}
	var wg sync.WaitGroup
	for _, d := range img.Blobs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rc, _, err := c.Blob(ctx, "docker.io", "library/alpine", d)
			if err != nil {
				t.Error(err)
				return
			}
			defer rc.Close()
			if got, _ := digest.FromReader(rc); got != d {
				t.Errorf("blob %s: got %s", d, got)
			}
		}()
	}
	wg.Wait()
	if n := hub.Count("token"); n != 1 {
		t.Fatalf("%d token fetches for one scope, want 1", n)
	}
	if hub.Count("credleak") != 0 {
		t.Fatal("credentials were sent outside the token realm")
	}
	if hub.Count("GET cdn") != len(img.Blobs) {
		t.Fatalf("redirects followed %d times, want %d", hub.Count("GET cdn"), len(img.Blobs))
	}
}

func TestNotFoundAndNotAllowed(t *testing.T) {
	hub := fakehub.Start(t)
	c := newTestClient(t, hub, "", "")
	if _, err := c.Resolve(context.Background(), "docker.io", "library/none", "latest"); !errors.Is(err, ErrNotFound) && !errors.Is(err, ErrDenied) {
		t.Fatalf("missing image: %v", err)
	}
	if _, err := c.Resolve(context.Background(), "ghcr.io", "org/app", "latest"); !errors.Is(err, ErrNotAllowed) {
		t.Fatalf("registry off the allow-list: %v", err)
	}
}

// TestRateLimitFailsFast: after a 429 the client answers at once with the
// registry's Retry-After, without asking again.
func TestRateLimitFailsFast(t *testing.T) {
	hub := fakehub.Start(t)
	img := hub.Push("library/alpine", "latest", fakehub.ImageSpec{Platforms: []string{"linux/amd64"}, Layers: 1, LayerSize: 10, Seed: 2})
	hub.SetRateLimit(1, 30)
	c := newTestClient(t, hub, "", "")
	ctx := context.Background()
	desc := Descriptor{Digest: img.Index}
	if _, err := c.Manifest(ctx, "docker.io", "library/alpine", desc, 4<<20); err != nil {
		t.Fatal(err)
	}
	c.Manifest(ctx, "docker.io", "library/alpine", desc, 4<<20) // 429
	var rl *RateLimitError
	before, heads := hub.Count("GET manifest"), hub.Count("HEAD manifest")
	start := time.Now()
	_, err := c.Resolve(ctx, "docker.io", "library/alpine", "latest")
	if !errors.As(err, &rl) || rl.RetryAfter < 25*time.Second || time.Since(start) > 100*time.Millisecond {
		t.Fatalf("after 429: %v (%s)", err, time.Since(start))
	}
	if hub.Count("GET manifest") != before || hub.Count("HEAD manifest") != heads {
		t.Fatal("a rate-limited registry was asked again")
	}
	if st := c.Status(); st[0].RateLimitRemaining != 0 {
		t.Fatalf("ratelimit-remaining not recorded: %+v", st)
	}
}

// TestDownFailsFastAndRecovers: a dead upstream is remembered, requests fail
// at once, and the background probe brings it back.
func TestDownFailsFastAndRecovers(t *testing.T) {
	hub := fakehub.Start(t)
	hub.Push("library/alpine", "latest", fakehub.ImageSpec{Platforms: []string{"linux/amd64"}, Layers: 1, LayerSize: 10, Seed: 3})
	hub.SetFailStatus(503)
	c := newTestClient(t, hub, "", "")
	ctx := context.Background()
	if _, err := c.Resolve(ctx, "docker.io", "library/alpine", "latest"); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("503 upstream: %v", err)
	}
	start := time.Now()
	if _, err := c.Resolve(ctx, "docker.io", "library/alpine", "latest"); !errors.Is(err, ErrUnavailable) || time.Since(start) > 50*time.Millisecond {
		t.Fatalf("second request: %v after %s", err, time.Since(start))
	}
	hub.SetFailStatus(0)
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := c.Resolve(ctx, "docker.io", "library/alpine", "latest"); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("probe never marked the registry up")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestBlobResumes: a connection dropped mid-blob is resumed with Range.
func TestBlobResumes(t *testing.T) {
	hub := fakehub.Start(t)
	img := hub.Push("library/big", "latest", fakehub.ImageSpec{Platforms: []string{"linux/amd64"}, Layers: 1, LayerSize: 4 << 20, Seed: 4})
	layer := img.Blobs[0]
	hub.DropAt(layer, 2<<20)
	c := newTestClient(t, hub, "", "")
	rc, size, err := c.Blob(context.Background(), "docker.io", "library/big", layer)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	got, err := digest.FromReader(rc)
	if err != nil || got != layer || size <= 4<<20 {
		t.Fatalf("resumed blob: %s %v size %d", got, err, size)
	}
	if hub.Count("GET range") != 1 || hub.Count("GET blob "+layer.String()) != 2 {
		t.Fatalf("want 1 ranged resume, saw %d range and %d GETs", hub.Count("GET range"), hub.Count("GET blob "+layer.String()))
	}
}

// TestMissingBlobIsNotAnOutage: a 404 for one blob is ErrNotFound and
// leaves the registry up.
func TestMissingBlobIsNotAnOutage(t *testing.T) {
	hub := fakehub.Start(t)
	img := hub.Push("library/alpine", "latest", fakehub.ImageSpec{Platforms: []string{"linux/amd64"}, Layers: 1, LayerSize: 10, Seed: 5})
	c := newTestClient(t, hub, "", "")
	ctx := context.Background()
	if err := c.HasBlob(ctx, "docker.io", "library/other", img.Blobs[0]); !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing blob: %v", err)
	}
	if _, _, err := c.Blob(ctx, "docker.io", "library/other", img.Blobs[0]); !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing blob GET: %v", err)
	}
	if st := c.Status(); !st[0].Up {
		t.Fatalf("a 404 marked the registry down: %+v", st)
	}
	if err := c.HasBlob(ctx, "docker.io", "library/alpine", img.Blobs[0]); err != nil {
		t.Fatalf("present blob: %v", err)
	}
}

// TestNoInternalAddressesUnlessNamed: a registry allowed by name whose
// address is loopback is never dialled unless its endpoint was configured.
func TestNoInternalAddressesUnlessNamed(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan struct{}, 1)
	go func() {
		if conn, err := ln.Accept(); err == nil {
			conn.Close()
			accepted <- struct{}{}
		}
	}()
	name := "localhost:" + strings.Split(ln.Addr().String(), ":")[1]
	c, err := New(Options{Registries: []Registry{{Name: name}}, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Resolve(context.Background(), name, "x/y", "latest"); err == nil {
		t.Fatal("resolved through a loopback address")
	}
	select {
	case <-accepted:
		t.Fatal("connected to a loopback address the config did not name")
	case <-time.After(100 * time.Millisecond):
	}
	for _, addr := range []string{"169.254.169.254:80", "10.0.0.1:443", "[::1]:5000", "0.0.0.0:80", "100.64.1.1:80"} {
		if err := refuseInternal("tcp", addr, nil); !errors.Is(err, ErrInternalAddress) {
			t.Errorf("%s: %v", addr, err)
		}
	}
	if err := refuseInternal("tcp", "93.184.216.34:443", nil); err != nil {
		t.Errorf("public address refused: %v", err)
	}
}
