package registry

import (
	"bytes"
	"context"
	"io"
	"sync"
	"syscall"
	"testing"

	"github.com/opencontainers/go-digest"
)

// threadNice is the nice value of the calling thread.
func threadNice(t *testing.T) int {
	prio, err := syscall.Getpriority(syscall.PRIO_PROCESS, syscall.Gettid())
	if err != nil {
		t.Fatal(err)
	}
	return 20 - prio // the system call's value is 20 - nice
}

// niceSpy is an upstream that serves blobs from memory, says helps to
// ParallelHelps, and notes the nice value of the thread of every read of
// a blob's body.
type niceSpy struct {
	Upstream // what the test does not call
	t        *testing.T
	blobs    map[digest.Digest][]byte
	helps    bool
	mu       sync.Mutex
	nices    []int
}

func (s *niceSpy) Blob(ctx context.Context, registry, repo string, d digest.Digest, offset int64) (io.ReadCloser, int64, error) {
	b := s.blobs[d]
	return io.NopCloser(&niceRead{s, bytes.NewReader(b[offset:])}), int64(len(b)), nil
}

func (s *niceSpy) ParallelHelps(string) bool { return s.helps }

type niceRead struct {
	s *niceSpy
	r io.Reader
}

func (n *niceRead) Read(p []byte) (int, error) {
	nice := threadNice(n.s.t)
	n.s.mu.Lock()
	n.s.nices = append(n.s.nices, nice)
	n.s.mu.Unlock()
	return n.r.Read(p)
}

// TestPrefetchInBackground: on a link where more blobs at once would not
// help (fast: the copying and hashing limit a download), a manifest's
// blobs are prefetched in the background, on threads of the lowest
// priority, so they take only what the clients leave of the machine; on
// a link where they would help (slow: the network limits it), at normal
// priority, so that a busy machine does not slow the downloads down.
func TestPrefetchInBackground(t *testing.T) {
	base := threadNice(t)
	if base >= 19 {
		t.Fatalf("this test runs at nice %d already: it cannot tell a background thread from the others", base)
	}
	for _, helps := range []bool{false, true} {
		spy := &niceSpy{t: t, blobs: map[digest.Digest][]byte{}, helps: helps}
		prefetched(t, spy, spy.blobs, 4, 16)
		want := 19
		if helps {
			want = base
		}
		if len(spy.nices) == 0 {
			t.Fatal("no read noted")
		}
		for _, n := range spy.nices {
			if n != want {
				t.Fatalf("parallel helps %v: the prefetch read at nice %v, want %d", helps, spy.nices, want)
			}
		}
	}
}
