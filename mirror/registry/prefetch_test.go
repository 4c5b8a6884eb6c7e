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
	quiet := slog.New(slog.DiscardHandler)
	st, err := stores.Open(cache.Options{Dir: t.TempDir(), Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	spy := &orderSpy{blobs: map[digest.Digest][]byte{}, orders: map[digest.Digest]int{}}
	var list []digest.Digest
	for i := range 5 {
		b := bytes.Repeat([]byte{byte(i + 1)}, 1000+i)
		d := digest.FromBytes(b)
		spy.blobs[d] = b
		list = append(list, d)
	}
	reg := &Registry{store: st, log: quiet, opts: Options{Upstream: spy}}
	p := newPuller(reg)
	defer p.fills.Close()
	tgt := policy.Target{Registry: "docker.io", Remote: "library/app", Local: "docker.io/library/app"}
	p.fetchBlobs(context.Background(), tgt, list, 16)
	for i, d := range list {
		if _, err := st.StatBlob(tgt.Local, d); err != nil {
			t.Fatalf("blob %d not stored: %v", i, err)
		}
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
