package notify

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/wharf-registry/wharf/cache"
	"github.com/wharf-registry/wharf/cache/stores"
	"github.com/wharf-registry/wharf/mirror/registry"
)

// TestBoundsAndIgnores: an endpoint that is down keeps at most MaxPending
// events (the oldest are dropped and counted); ignored actions and media
// types are never queued; once the endpoint is back, what was kept is
// delivered, oldest first, one event per envelope.
func TestBoundsAndIgnores(t *testing.T) {
	st, err := stores.Open(cache.Options{Dir: t.TempDir(), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	var down atomic.Bool
	down.Store(true)
	var mu sync.Mutex
	var got []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if down.Load() {
			w.WriteHeader(http.StatusBadGateway)
			return
		}
		var env struct {
			Events []wireEvent `json:"events"`
		}
		if err := json.NewDecoder(r.Body).Decode(&env); err != nil || len(env.Events) != 1 {
			t.Errorf("envelope: %v, %d events", err, len(env.Events))
		}
		mu.Lock()
		for _, e := range env.Events {
			got = append(got, e.Target.Repository)
		}
		mu.Unlock()
	}))
	defer srv.Close()
	n, err := New(st.Queue(), Options{MaxPending: 3, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Endpoints: []Endpoint{{
		Name: "ep", URL: srv.URL, Threshold: 1, Backoff: 50 * time.Millisecond,
		IgnoredActions: []string{"pull"}, IgnoredMediaTypes: []string{"application/octet-stream"}}}})
	if err != nil {
		t.Fatal(err)
	}
	req := httptest.NewRequest(http.MethodPut, "http://registry.test/v2/x/manifests/1", nil)
	d := digest.FromString("m")
	for _, repo := range []string{"r0", "r1", "r2", "r3", "r4"} {
		n.Notify(req, registry.Event{Action: "push", Repo: repo, Kind: "manifests", Digest: d, MediaType: "application/vnd.oci.image.manifest.v1+json", Size: 1})
		time.Sleep(time.Millisecond) // distinct times: the queue's order is theirs
	}
	n.Notify(req, registry.Event{Action: "pull", Repo: "ignored", Kind: "manifests", Digest: d, Size: 1})
	n.Notify(req, registry.Event{Action: "push", Repo: "ignored", Kind: "blobs", Digest: d, MediaType: "application/octet-stream", Size: 1})
	if s := n.Status()[0]; s.Pending != 5 {
		t.Fatalf("queued: %d pending, want 5 (ignored events queued?)", s.Pending)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { n.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	waitFor(t, func() bool {
		s := n.Status()[0]
		return s.Dropped == 2 && s.Pending == 3 && s.Failed > 0 && s.LastError != ""
	})
	down.Store(false)
	waitFor(t, func() bool { s := n.Status()[0]; return s.Pending == 0 && s.Sent == 3 })
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 3 || got[0] != "r2" || got[1] != "r3" || got[2] != "r4" {
		t.Fatalf("delivered %v, want the three newest in order", got)
	}
}

func waitFor(t *testing.T, ok func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !ok(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10 s")
		}
	}
}
