package cache

import (
	"bytes"
	"context"
	"io"
	"sync"
	"syscall"
	"testing"
	"time"

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

// niceBody is an upstream body fed by the test through a pipe; it notes
// the nice value of the thread each of its reads ran on, per chunk the
// test sent.
type niceBody struct {
	t     *testing.T
	r     *io.PipeReader
	mu    sync.Mutex
	chunk int
	nices map[int][]int
}

func (b *niceBody) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	nice := threadNice(b.t)
	b.mu.Lock()
	b.nices[b.chunk] = append(b.nices[b.chunk], nice)
	b.mu.Unlock()
	return n, err
}

func (b *niceBody) Close() error { return b.r.Close() }

// TestBackgroundFillPriority: a Background download (a prefetch) copies
// and hashes its bytes on a thread of the lowest priority (nice 19); once
// a client asks for the same blob, the download goes on at the priority
// of everything else, from its next chunk; the blob is stored whole.
func TestBackgroundFillPriority(t *testing.T) {
	base := threadNice(t)
	if base >= backgroundNice {
		t.Fatalf("this test runs at nice %d already: it cannot tell a background thread from the others", base)
	}
	s := openStore(t, t.TempDir())
	defer s.Close()
	fills := s.NewFills(FillsOptions{})
	defer fills.Close()
	content := bytes.Repeat([]byte("a prefetched layer "), 3*fillBatch/16)
	d := digest.FromBytes(content)
	pr, pw := io.Pipe()
	body := &niceBody{t: t, r: pr, nices: map[int][]int{}}
	open := func(ctx context.Context, off int64) (io.ReadCloser, int64, error) {
		if off != 0 {
			t.Errorf("reopened at %d", off)
		}
		return body, int64(len(content)), nil
	}
	send := func(chunk int, b []byte) {
		t.Helper()
		body.mu.Lock()
		body.chunk = chunk
		body.mu.Unlock()
		if _, err := pw.Write(b); err != nil { // returns once the download has read it all
			t.Fatal(err)
		}
	}
	const repo = "docker.io/library/app"
	bg, _, err := fills.Get(t.Context(), repo, MirroredFrom("docker.io"), d, BlobSource{Open: open, Background: true})
	if err != nil || bg == nil {
		t.Fatalf("background Get: %v %v", bg, err)
	}
	defer bg.Close()
	// One whole chunk, read by the background thread, which then waits in
	// the next chunk's first read.
	send(0, content[:fillBatch])
	client, shared, err := fills.Get(t.Context(), repo, MirroredFrom("docker.io"), d, BlobSource{Open: open})
	if err != nil || client == nil || !shared {
		t.Fatalf("the client's Get: %v %v shared=%v", client, err, shared)
	}
	defer client.Close()
	got := make(chan []byte, 1)
	go func() {
		b, err := io.ReadAll(client)
		if err != nil {
			t.Errorf("the client's read: %v", err)
		}
		got <- b
	}()
	send(1, content[fillBatch:2*fillBatch]) // the read under way when the client came
	send(2, content[2*fillBatch:])
	pw.Close()
	select {
	case b := <-got:
		if !bytes.Equal(b, content) {
			t.Fatalf("the client read %d bytes, not the blob's %d", len(b), len(content))
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the client's read did not end")
	}
	if err := client.Wait(t.Context()); err != nil {
		t.Fatalf("the blob was not stored: %v", err)
	}
	body.mu.Lock()
	defer body.mu.Unlock()
	for _, n := range body.nices[0] {
		if n != backgroundNice {
			t.Fatalf("the background download read at nice %v, want %d", body.nices[0], backgroundNice)
		}
	}
	if len(body.nices[2]) == 0 {
		t.Fatal("no read of the last chunk noted")
	}
	for _, n := range body.nices[2] {
		if n != base {
			t.Fatalf("with a client waiting the download read at nice %v, want %d (the others')", body.nices[2], base)
		}
	}
}
