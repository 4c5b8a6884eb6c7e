package upstream

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	containerdlog "github.com/containerd/log"

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
			rc, _, err := c.Blob(ctx, "docker.io", "library/alpine", d, 0)
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
	// One request per blob: a GET, no HEAD before it.
	if hub.Count("HEAD blob") != 0 || hub.Count("GET blob") != len(img.Blobs) {
		t.Fatalf("%d blobs took %d HEADs and %d GETs, want 0 and %d", len(img.Blobs), hub.Count("HEAD blob"), hub.Count("GET blob"), len(img.Blobs))
	}
}

// TestBlobFromOffset: a blob opened at an offset is one ranged GET, and
// its size is still the whole blob's.
func TestBlobFromOffset(t *testing.T) {
	hub := fakehub.Start(t)
	img := hub.Push("library/big", "latest", fakehub.ImageSpec{Platforms: []string{"linux/amd64"}, Layers: 1, LayerSize: 1 << 20, Seed: 6})
	layer := img.Blobs[0]
	c := newTestClient(t, hub, "", "")
	whole, size, err := c.Blob(context.Background(), "docker.io", "library/big", layer, 0)
	if err != nil {
		t.Fatal(err)
	}
	all, err := io.ReadAll(whole)
	whole.Close()
	if err != nil || int64(len(all)) != size || digest.FromBytes(all) != layer {
		t.Fatalf("whole blob: %d bytes of %d, %v", len(all), size, err)
	}
	hub.ResetCounts()
	const off = 300000
	rc, total, err := c.Blob(context.Background(), "docker.io", "library/big", layer, off)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	rest, err := io.ReadAll(rc)
	if err != nil || total != size || !bytes.Equal(rest, all[off:]) {
		t.Fatalf("from %d: %d bytes, size %d of %d, %v", off, len(rest), total, size, err)
	}
	if hub.Count("GET range") != 1 || hub.Count("GET blob") != 1 || hub.Count("HEAD blob") != 0 {
		t.Fatalf("ranged open: %d ranges, %d GETs, %d HEADs", hub.Count("GET range"), hub.Count("GET blob"), hub.Count("HEAD blob"))
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

// TestDownFailsFastAndRecovers: a registry that keeps failing is marked
// down after DownAfter failed operations (each retried), then requests fail
// at once, and the background probe brings it back.
func TestDownFailsFastAndRecovers(t *testing.T) {
	hub := fakehub.Start(t)
	hub.Push("library/alpine", "latest", fakehub.ImageSpec{Platforms: []string{"linux/amd64"}, Layers: 1, LayerSize: 10, Seed: 3})
	hub.SetFailStatus(503)
	c := newTestClient(t, hub, "", "")
	ctx := context.Background()
	for i := 0; i < 3; i++ {
		if _, err := c.Resolve(ctx, "docker.io", "library/alpine", "latest"); !errors.Is(err, ErrUnavailable) {
			t.Fatalf("503 upstream, attempt %d: %v", i, err)
		}
		if up := c.Status()[0].Up; up != (i < 2) {
			t.Fatalf("after %d failed operations the registry is up=%v", i+1, up)
		}
	}
	if n := hub.Count("503"); n < 6 {
		t.Fatalf("3 operations reached the hub %d times: transient 5xx are not retried", n)
	}
	start := time.Now()
	if _, err := c.Resolve(ctx, "docker.io", "library/alpine", "latest"); !errors.Is(err, ErrUnavailable) || time.Since(start) > 50*time.Millisecond {
		t.Fatalf("request to a registry marked down: %v after %s", err, time.Since(start))
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

// TestTransient5xxRetried: a single 503 (containerd retries once itself) or
// a pair of them never reaches the caller and leaves the registry up.
func TestTransient5xxRetried(t *testing.T) {
	hub := fakehub.Start(t)
	img := hub.Push("library/alpine", "latest", fakehub.ImageSpec{Platforms: []string{"linux/amd64"}, Layers: 1, LayerSize: 1000, Seed: 3})
	c := newTestClient(t, hub, "", "")
	ctx := context.Background()
	hub.FailNext(503, 3)
	desc, err := c.Resolve(ctx, "docker.io", "library/alpine", "latest")
	if err != nil || desc.Digest != img.Index {
		t.Fatalf("resolve through three 503s: %v", err)
	}
	hub.FailNext(502, 2)
	rc, _, err := c.Blob(ctx, "docker.io", "library/alpine", img.Blobs[0], 0)
	if err != nil {
		t.Fatalf("blob through two 502s: %v", err)
	}
	got, _ := digest.FromReader(rc)
	rc.Close()
	if got != img.Blobs[0] || !c.Status()[0].Up {
		t.Fatalf("blob %s, registry up %v", got, c.Status()[0].Up)
	}
}

// TestFailedTokenFetchNotKept: a token server that answers 503 once, or
// hangs once, fails only the requests that waited for that fetch; the next
// request fetches a new token and succeeds, and the registry is never
// marked down (containerd's own authorizer keeps the failure for good).
func TestFailedTokenFetchNotKept(t *testing.T) {
	for _, fault := range []int{503, -1} {
		t.Run(fmt.Sprint(fault), func(t *testing.T) {
			hub := fakehub.Start(t)
			img := hub.Push("library/alpine", "latest", fakehub.ImageSpec{Platforms: []string{"linux/amd64"}, Layers: 1, LayerSize: 1000, Seed: 3})
			c, err := New(Options{
				Registries:      []Registry{{Name: "docker.io", Endpoint: hub.URL}},
				ResponseTimeout: 500 * time.Millisecond, // bounds the hung token fetch
				ProbeEvery:      50 * time.Millisecond,
				Logger:          slog.New(slog.NewTextHandler(io.Discard, nil)),
			})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			// A 503 is retried by the client (three attempts): fail them all.
			n := 1
			if fault == 503 {
				n = 3
			}
			hub.FailToken(fault, n)
			ctx := context.Background()
			if _, err := c.Resolve(ctx, "docker.io", "library/alpine", "latest"); err == nil {
				t.Fatal("resolve succeeded while the token server failed")
			}
			if hub.Count("token")-hub.Count("token hang")-hub.Count("token 503") != 0 {
				t.Fatalf("the first resolve got a token (%d requests)", hub.Count("token"))
			}
			for i := 0; i < 3; i++ {
				desc, err := c.Resolve(ctx, "docker.io", "library/alpine", "latest")
				if err != nil || desc.Digest != img.Index {
					t.Fatalf("resolve %d after the token server recovered: %v", i, err)
				}
			}
			if !c.Status()[0].Up {
				t.Fatal("a token failure marked the registry down")
			}
			if got := hub.Count("token"); got > n+1 {
				t.Fatalf("%d token requests: a good token was not reused", got)
			}
		})
	}
}

// TestBlobResumes: a connection dropped mid-blob is resumed with Range.
func TestBlobResumes(t *testing.T) {
	hub := fakehub.Start(t)
	img := hub.Push("library/big", "latest", fakehub.ImageSpec{Platforms: []string{"linux/amd64"}, Layers: 1, LayerSize: 4 << 20, Seed: 4})
	layer := img.Blobs[0]
	hub.DropAt(layer, 2<<20)
	c := newTestClient(t, hub, "", "")
	rc, size, err := c.Blob(context.Background(), "docker.io", "library/big", layer, 0)
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
	// library/other does not exist: Docker Hub answers 401 insufficient_scope.
	if err := c.HasBlob(ctx, "docker.io", "library/other", img.Blobs[0]); !errors.Is(err, ErrDenied) {
		t.Fatalf("missing repository: %v", err)
	}
	if _, _, err := c.Blob(ctx, "docker.io", "library/other", img.Blobs[0], 0); !errors.Is(err, ErrDenied) {
		t.Fatalf("missing repository, blob GET: %v", err)
	}
	// A blob the repository does not hold: 404.
	if _, _, err := c.Blob(ctx, "docker.io", "library/alpine", digest.FromString("none"), 0); !errors.Is(err, ErrNotFound) {
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

// TestBlobWithoutLength: a registry whose blob GET has no Content-Length
// (chunked) still gives the size: from Content-Range's total when it
// serves ranges (the GET asks "bytes=0-"), else from one HEAD after the GET.
func TestBlobWithoutLength(t *testing.T) {
	for _, ranges := range []bool{true, false} {
		hub := fakehub.Start(t)
		img := hub.Push("library/chunked", "latest", fakehub.ImageSpec{Platforms: []string{"linux/amd64"}, Layers: 1, LayerSize: 1 << 20, Seed: 7})
		layer := img.Blobs[0]
		hub.SetNoLength(true)
		hub.SetNoRanges(!ranges)
		c := newTestClient(t, hub, "", "")
		rc, size, err := c.Blob(context.Background(), "docker.io", "library/chunked", layer, 0)
		if err != nil {
			t.Fatal(err)
		}
		all, err := io.ReadAll(rc)
		rc.Close()
		if err != nil || int64(len(all)) != size || digest.FromBytes(all) != layer {
			t.Fatalf("ranges %v: chunked blob: %d bytes, size %d, %v", ranges, len(all), size, err)
		}
		heads := 1
		if ranges {
			heads = 0
		}
		if hub.Count("GET blob") != 1 || hub.Count("HEAD blob") != heads {
			t.Fatalf("ranges %v: chunked blob: %d GETs, %d HEADs; want 1 and %d", ranges, hub.Count("GET blob"), hub.Count("HEAD blob"), heads)
		}
	}
}

// TestContainerdLogger: containerd's logging is quieted per client (its
// context logger), not process-wide; its warnings reach slog, its info
// lines do not.
func TestContainerdLogger(t *testing.T) {
	before := containerdlog.GetLevel()
	var buf bytes.Buffer
	c, err := New(Options{Registries: []Registry{{Name: "example.test"}}, Logger: slog.New(slog.NewTextHandler(&buf, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if containerdlog.GetLevel() != before {
		t.Fatalf("New changed containerd's global log level from %v to %v", before, containerdlog.GetLevel())
	}
	c.clog.Info("retrying with another scheme")
	c.clog.WithField("host", "h").Warn("a warning")
	if got := buf.String(); strings.Contains(got, "retrying") || !strings.Contains(got, "containerd: a warning") || !strings.Contains(got, "host=h") {
		t.Fatalf("slog got %q", got)
	}
}
