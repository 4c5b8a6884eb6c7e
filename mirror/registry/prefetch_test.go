package registry

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"sync"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/wharf-registry/wharf/cache"
	"github.com/wharf-registry/wharf/cache/stores"
	"github.com/wharf-registry/wharf/policy"
	"github.com/wharf-registry/wharf/upstream"
)

// orderSpy is an upstream that serves blobs from memory and notes the
// order (upstream.WithOrder) each blob read was asked in.
type orderSpy struct {
	Upstream // what the test does not call
	blobs    map[digest.Digest][]byte
	mu       sync.Mutex
	orders   map[digest.Digest]int
}

func (s *orderSpy) Blob(ctx context.Context, registry, repo string, d digest.Digest, offset int64) (io.ReadCloser, int64, error) {
	s.mu.Lock()
	s.orders[d] = upstream.OrderOf(ctx)
	s.mu.Unlock()
	b := s.blobs[d]
	return io.NopCloser(bytes.NewReader(b[offset:])), int64(len(b)), nil
}

func (s *orderSpy) ParallelHelps(string) bool { return true }

// TestPrefetchOrder: a prefetch asks upstream for each blob with its
// place in the manifest (upstream.WithOrder), which puts the layers a
// client reads first first in line for segments; a client's own request
// is order 0.
func TestPrefetchOrder(t *testing.T) {
	spy := &orderSpy{blobs: map[digest.Digest][]byte{}, orders: map[digest.Digest]int{}}
	p, tgt, list := prefetched(t, spy, spy.blobs, 5, 16)
	for i, d := range list {
		if got := spy.orders[d]; got != i {
			t.Errorf("blob %d of the manifest asked upstream in order %d", i, got)
		}
	}
	spy.orders = map[digest.Digest]int{}
	rc, _, err := p.source(tgt, list[3], 0).Open(upstream.WithOrder(context.Background(), 7), 0)
	if err != nil {
		t.Fatal(err)
	}
	rc.Close()
	if got := spy.orders[list[3]]; got != 0 {
		t.Errorf("a client's own request asked in order %d, want 0", got)
	}
}

// prefetched stores n small distinct blobs in blobs (up's content), lets
// a puller over a fresh store and up fetch them as a manifest's blobs,
// parallel at most at once, and checks that each was stored. It returns
// the puller (closed with the test), the target and the blobs in order.
func prefetched(t *testing.T, up Upstream, blobs map[digest.Digest][]byte, n, parallel int) (*puller, policy.Target, []digest.Digest) {
	t.Helper()
	quiet := slog.New(slog.DiscardHandler)
	st, err := stores.Open(cache.Options{Dir: t.TempDir(), Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	var list []digest.Digest
	for i := range n {
		b := bytes.Repeat([]byte{byte(i + 1)}, 1000+i)
		d := digest.FromBytes(b)
		blobs[d] = b
		list = append(list, d)
	}
	p := newPuller(&Registry{store: st, log: quiet, opts: Options{Upstream: up}})
	t.Cleanup(func() { p.fills.Close(); st.Close() })
	tgt := policy.Target{Registry: "docker.io", Remote: "library/app", Local: "docker.io/library/app"}
	p.fetchBlobs(context.Background(), tgt, list, parallel)
	for i, d := range list {
		if _, err := st.StatBlob(tgt.Local, d); err != nil {
			t.Fatalf("blob %d not stored: %v", i, err)
		}
	}
	return p, tgt, list
}
