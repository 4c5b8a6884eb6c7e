package cache

import (
	"bytes"
	"context"
	"errors"
	"io"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

// TestFillStreamsWhileWriting: readers get bytes before the fill ends, the
// tail only after verification, and the committed blob is linked.
func TestFillStreamsWhileWriting(t *testing.T) {
	s := openStore(t, t.TempDir())
	defer s.Close()
	content := bytes.Repeat([]byte("0123456789abcdef"), 64<<10) // 1 MiB
	d := digest.FromBytes(content)
	f, err := s.newFill("mirror/repo", MirroredFrom("docker.io"), d)
	if err != nil {
		t.Fatal(err)
	}
	r := f.newReader(context.Background())
	r.Limit(0, int64(len(content))) // as the HTTP handler reads: the whole blob
	f.start(int64(len(content)))
	half := len(content) / 2
	f.write(content[:half])
	buf := make([]byte, half)
	if _, err := io.ReadFull(r, buf); err != nil || !bytes.Equal(buf, content[:half]) {
		t.Fatalf("first half not streamed before the fill ended: %v", err)
	}
	f.write(content[half:])
	got := make(chan []byte)
	go func() { b, _ := io.ReadAll(r); got <- b }()
	select {
	case b := <-got:
		t.Fatalf("reader finished (%d bytes) before verification", len(b))
	case <-time.After(50 * time.Millisecond):
	}
	if err := f.finish(f.repos); err != nil {
		t.Fatal(err)
	}
	if rest := <-got; !bytes.Equal(rest, content[half:]) {
		t.Fatalf("tail: %d bytes", len(rest))
	}
	r.Close()
	f.retire()
	if !bytes.Equal(readBlob(t, s, "mirror/repo", d), content) {
		t.Fatal("committed blob differs")
	}
}

// TestFillCorruptNeverCompletes: with bytes that do not match, every reader
// fails before the last FillHoldBack bytes and nothing is stored.
func TestFillCorruptNeverCompletes(t *testing.T) {
	s := openStore(t, t.TempDir())
	defer s.Close()
	content := bytes.Repeat([]byte("x"), 300<<10)
	d := digest.FromBytes(content)
	bad := append([]byte(nil), content...)
	bad[1000] ^= 1
	f, _ := s.newFill("mirror/repo", MirroredFrom("docker.io"), d)
	f.start(int64(len(bad)))
	var wg sync.WaitGroup
	var mu sync.Mutex
	var got []int
	for i := 0; i < 3; i++ {
		r := f.newReader(context.Background())
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer r.Close()
			b, err := io.ReadAll(r)
			if !errors.Is(err, ErrFillAborted) {
				t.Errorf("reader ended with %v", err)
			}
			mu.Lock()
			got = append(got, len(b))
			mu.Unlock()
		}()
	}
	f.write(bad)
	if err := f.finish(f.repos); !errors.Is(err, ErrDigestMismatch) {
		t.Fatalf("finish: %v", err)
	}
	wg.Wait()
	f.retire()
	for _, n := range got {
		if n > len(bad)-FillHoldBack {
			t.Fatalf("a reader got %d of %d bytes of a corrupt blob", n, len(bad))
		}
	}
	if _, err := s.StatBlob("mirror/repo", d); !errors.Is(err, ErrBlobUnknown) {
		t.Fatalf("corrupt blob was linked: %v", err)
	}
	if ids, _ := s.Maintenance().Blobs().Ingests(); len(ids) != 0 {
		t.Fatalf("ingest left: %v", ids)
	}
}

func TestFillRangeAndCancel(t *testing.T) {
	s := openStore(t, t.TempDir())
	defer s.Close()
	content := bytes.Repeat([]byte("0123456789"), 100000)
	f, _ := s.newFill("r", MirroredFrom("docker.io"), digest.FromBytes(content))
	f.start(int64(len(content)))
	r := f.newReader(context.Background())
	r.Limit(10, 20)
	f.write(content)
	b, err := io.ReadAll(r)
	if err != nil || !bytes.Equal(b, content[10:30]) {
		t.Fatalf("range: %q %v", b, err)
	}
	r.Close()
	ctx, cancel := context.WithCancel(context.Background())
	r2 := f.newReader(ctx)
	r2.Limit(int64(len(content))-10, 10) // in the held-back tail
	cancel()
	if _, err := io.ReadAll(r2); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled reader: %v", err)
	}
	r2.Close()
	if err := f.finish(f.repos); err != nil {
		t.Fatal(err)
	}
	f.retire()
}

// TestFillRingReaders: readers that keep up take the bytes from memory;
// one that joins mid-way, one that stalls and one that joins late fall
// back to the file; all get exactly the blob, the tail only once verified.
func TestFillRingReaders(t *testing.T) {
	s := openStore(t, t.TempDir())
	defer s.Close()
	const chunk, chunks = 256 << 10, 16
	content := make([]byte, chunk*chunks)
	for i := range content {
		content[i] = byte(i*7 + i>>11)
	}
	d := digest.FromBytes(content)
	f, err := s.newFill("mirror/repo", MirroredFrom("docker.io"), d)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	f.start(int64(len(content)))
	early, stalled := f.newReader(ctx), f.newReader(ctx)
	var mid *FillReader
	got := map[*FillReader]*bytes.Buffer{early: {}, stalled: {}}
	readN := func(r *FillReader, n int) {
		t.Helper()
		buf := make([]byte, n)
		if _, err := io.ReadFull(r, buf); err != nil {
			t.Fatalf("read %d: %v", n, err)
		}
		got[r].Write(buf)
	}
	for i := 0; i < chunks; i++ {
		f.write(content[i*chunk : (i+1)*chunk])
		avail := (i+1)*chunk - FillHoldBack
		readN(early, avail-got[early].Len())
		if i == 0 {
			readN(stalled, 100<<10) // then it stops reading
		}
		if i == chunks/2 {
			mid = f.newReader(ctx) // 2.25 MiB in: the start is no longer in memory
			got[mid] = &bytes.Buffer{}
		}
		if mid != nil && i >= chunks/2+2 {
			readN(mid, avail-got[mid].Len())
		}
	}
	if err := f.finish(f.repos); err != nil {
		t.Fatal(err)
	}
	late := f.newReader(ctx)
	got[late] = &bytes.Buffer{}
	for r, b := range got {
		rest, err := io.ReadAll(r)
		if err != nil {
			t.Fatal(err)
		}
		b.Write(rest)
		if !bytes.Equal(b.Bytes(), content) {
			t.Fatalf("a reader got %d bytes that differ from the blob", b.Len())
		}
		r.Close()
	}
	f.retire()
	if early.fromFile != 0 || early.fromRing != int64(len(content)) {
		t.Fatalf("reader that kept up: %d bytes from memory, %d from the file", early.fromRing, early.fromFile)
	}
	for name, r := range map[string]*FillReader{"stalled": stalled, "mid-way": mid, "late": late} {
		if r.fromFile == 0 {
			t.Fatalf("%s reader read nothing from the file (%d from memory)", name, r.fromRing)
		}
	}
	if mid.fromRing == 0 {
		t.Fatal("the mid-way reader never caught up with memory")
	}
	if !f.released || f.recent != nil {
		t.Fatal("recent chunks still held after the last reader closed")
	}
}

// TestFillRingBounded: a stalled reader does not make a fill hold more
// memory: 64 MiB pass through while it reads nothing.
func TestFillRingBounded(t *testing.T) {
	s := openStore(t, t.TempDir())
	defer s.Close()
	const size = 64 << 20
	block := make([]byte, 256<<10)
	h := digest.Canonical.Digester()
	for i := 0; i < size/len(block); i++ {
		h.Hash().Write(block)
	}
	f, err := s.newFill("mirror/repo", MirroredFrom("docker.io"), h.Digest())
	if err != nil {
		t.Fatal(err)
	}
	f.start(size)
	stalled := f.newReader(context.Background())
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for i := 0; i < size/len(block); i++ {
		if _, err := f.write(block); err != nil {
			t.Fatal(err)
		}
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	if grew := int64(after.HeapInuse) - int64(before.HeapInuse); grew > 8<<20 {
		t.Fatalf("heap grew %d MiB while 64 MiB passed a stalled reader", grew>>20)
	}
	if err := f.finish(f.repos); err != nil {
		t.Fatal(err)
	}
	n, err := io.Copy(io.Discard, stalled)
	if err != nil || n != size {
		t.Fatalf("stalled reader, resumed: %d bytes, %v", n, err)
	}
	stalled.Close()
	f.retire()
}

// TestFillNext: a reader that keeps up gets the fill's own chunks (no
// copy); a chunk it holds keeps its bytes while later chunks recycle
// others; a reader that fell behind is told to Read (from the file); the
// held-back end comes only after verification.
func TestFillNext(t *testing.T) {
	s := openStore(t, t.TempDir())
	defer s.Close()
	content := make([]byte, 6<<20)
	for i := range content {
		content[i] = byte(i*13 + i>>12)
	}
	f, err := s.newFill("mirror/repo", MirroredFrom("docker.io"), digest.FromBytes(content))
	if err != nil {
		t.Fatal(err)
	}
	f.start(int64(len(content)))
	keeping, behind := f.newReader(t.Context()), f.newReader(t.Context())
	const piece = 256 << 10
	f.write(content[:piece])
	held, done, err := keeping.Next()
	if err != nil || len(held) == 0 || !bytes.Equal(held, content[:len(held)]) {
		t.Fatalf("first Next: %d bytes, %v", len(held), err)
	}
	want := append([]byte(nil), held...)
	var got bytes.Buffer
	got.Write(held)
	for off := piece; off < len(content); off += piece {
		f.write(content[off : off+piece])
		for keeping.pos < int64(off+piece-FillHoldBack) {
			b, d, err := keeping.Next()
			if err != nil || b == nil {
				t.Fatalf("Next at %d: %d bytes, %v", keeping.pos, len(b), err)
			}
			got.Write(b)
			d()
		}
	}
	if !bytes.Equal(held, want) {
		t.Fatal("a chunk a reader held was reused while it held it")
	}
	done()
	if b, d, err := behind.Next(); b != nil || d != nil || err != nil {
		t.Fatalf("a reader 6 MiB behind got %d bytes from memory, %v", len(b), err)
	}
	if got.Len() != len(content)-FillHoldBack {
		t.Fatalf("before verification the reader had %d bytes; want all but the held-back %d", got.Len(), FillHoldBack)
	}
	if err := f.finish(f.repos); err != nil {
		t.Fatal(err)
	}
	for {
		b, d, err := keeping.Next()
		if err == io.EOF {
			break
		}
		if err != nil || b == nil {
			t.Fatalf("Next after verification: %d bytes, %v", len(b), err)
		}
		got.Write(b)
		d()
	}
	rest, err := io.ReadAll(behind)
	if err != nil || !bytes.Equal(rest, content) || !bytes.Equal(got.Bytes(), content) {
		t.Fatalf("behind: %d bytes, %v; keeping: %d bytes", len(rest), err, got.Len())
	}
	keeping.Close()
	behind.Close()
	f.retire()
}
