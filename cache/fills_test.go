package cache

import (
	"bytes"
	"context"
	"errors"
	"io"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/opencontainers/go-digest"
)

// bytesSource serves content like an upstream: Open at an offset returns
// the rest; opens counts the calls; cut, when set, makes the first
// connection fail after that many bytes.
func bytesSource(content []byte, opens *atomic.Int32) BlobSource {
	return BlobSource{Open: func(ctx context.Context, off int64) (io.ReadCloser, int64, error) {
		if opens != nil {
			opens.Add(1)
		}
		return io.NopCloser(bytes.NewReader(content[off:])), int64(len(content)), nil
	}}
}

// TestFillsOneDownloadPerDigest: two repositories asking for the same new
// blob at once share one download, and both get it linked.
func TestFillsOneDownloadPerDigest(t *testing.T) {
	s := openStore(t, t.TempDir())
	defer s.Close()
	fills := s.NewFills(FillsOptions{})
	defer fills.Close()
	content := bytes.Repeat([]byte("shared layer "), 200000)
	d := digest.FromBytes(content)
	var opens, confirms atomic.Int32
	gate := make(chan struct{})
	src := BlobSource{
		Open: func(ctx context.Context, off int64) (io.ReadCloser, int64, error) {
			opens.Add(1)
			<-gate // hold the download until both have joined
			return io.NopCloser(bytes.NewReader(content[off:])), int64(len(content)), nil
		},
		Confirm: func(context.Context) error { confirms.Add(1); return nil },
	}
	var wg sync.WaitGroup
	for _, repo := range []string{"docker.io/library/a", "docker.io/library/b"} {
		rd, _, err := fills.Get(t.Context(), repo, MirroredFrom("docker.io"), d, src)
		if err != nil || rd == nil {
			t.Fatalf("%s: %v %v", repo, rd, err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer rd.Close()
			b, err := io.ReadAll(rd)
			if err != nil || !bytes.Equal(b, content) {
				t.Errorf("%s read %d bytes: %v", repo, len(b), err)
			}
		}()
	}
	close(gate)
	wg.Wait()
	fills.Close()
	if n := opens.Load(); n != 1 {
		t.Fatalf("%d upstream downloads for one digest", n)
	}
	if n := confirms.Load(); n != 1 {
		t.Fatalf("the joining repository was confirmed %d times, want 1", n)
	}
	for _, repo := range []string{"docker.io/library/a", "docker.io/library/b"} {
		if !bytes.Equal(readBlob(t, s, repo, d), content) {
			t.Fatalf("%s: blob not linked", repo)
		}
	}
}

// failingAfter returns its bytes, then an error (a reset connection).
type failingAfter struct {
	r io.Reader
	n int
}

func (f *failingAfter) Read(p []byte) (int, error) {
	if f.n <= 0 {
		return 0, errors.New("connection reset by peer")
	}
	if len(p) > f.n {
		p = p[:f.n]
	}
	n, err := f.r.Read(p)
	f.n -= n
	return n, err
}

// TestFillsResumeReopensAtOffset: after a failed read the download opens
// the source again at the offset reached, and the blob is complete.
func TestFillsResumeReopensAtOffset(t *testing.T) {
	s := openStore(t, t.TempDir())
	defer s.Close()
	fills := s.NewFills(FillsOptions{})
	defer fills.Close()
	content := bytes.Repeat([]byte("0123456789"), 300000)
	d := digest.FromBytes(content)
	var offsets []int64
	var mu sync.Mutex
	src := BlobSource{Open: func(ctx context.Context, off int64) (io.ReadCloser, int64, error) {
		mu.Lock()
		first := len(offsets) == 0
		offsets = append(offsets, off)
		mu.Unlock()
		var r io.Reader = bytes.NewReader(content[off:])
		if first {
			r = &failingAfter{r: r, n: 1 << 20}
		}
		return io.NopCloser(r), int64(len(content)), nil
	}}
	rd, _, err := fills.Get(t.Context(), "docker.io/library/r", MirroredFrom("docker.io"), d, src)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(rd)
	rd.Close()
	if err != nil || !bytes.Equal(b, content) {
		t.Fatalf("read %d of %d bytes: %v", len(b), len(content), err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(offsets) != 2 || offsets[0] != 0 || offsets[1] != 1<<20 {
		t.Fatalf("opens at %v, want [0 %d]", offsets, 1<<20)
	}
}

// TestFillsHeldBlobLinkedAfterConfirm: a blob held for another repository
// is linked without a download once the source confirms it, and not at all
// when it does not.
func TestFillsHeldBlobLinkedAfterConfirm(t *testing.T) {
	s := openStore(t, t.TempDir())
	defer s.Close()
	fills := s.NewFills(FillsOptions{})
	defer fills.Close()
	content := []byte("a layer many images share")
	d := digest.FromBytes(content)
	var opens atomic.Int32
	if rd, _, err := fills.Get(t.Context(), "docker.io/library/one", MirroredFrom("docker.io"), d, bytesSource(content, &opens)); err != nil {
		t.Fatal(err)
	} else {
		rd.Wait(t.Context())
		rd.Close()
	}
	denied := errors.New("upstream: not in this repository")
	src := bytesSource(content, &opens)
	src.Confirm = func(context.Context) error { return denied }
	if _, _, err := fills.Get(t.Context(), "docker.io/library/two", MirroredFrom("docker.io"), d, src); !errors.Is(err, denied) {
		t.Fatalf("unconfirmed link: %v", err)
	}
	src.Confirm = func(context.Context) error { return nil }
	rd, _, err := fills.Get(t.Context(), "docker.io/library/two", MirroredFrom("docker.io"), d, src)
	if err != nil {
		t.Fatalf("confirmed link: %v", err)
	}
	if rd != nil { // the first download had not retired yet: joined it
		if b, err := io.ReadAll(rd); err != nil || !bytes.Equal(b, content) {
			t.Fatalf("joined download: %q %v", b, err)
		}
		rd.Close()
	}
	fills.Close()
	if opens.Load() != 1 {
		t.Fatalf("%d downloads, want 1", opens.Load())
	}
	if !bytes.Equal(readBlob(t, s, "docker.io/library/two", d), content) {
		t.Fatal("not linked")
	}
}
