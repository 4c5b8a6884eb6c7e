package cache

import (
	"context"
	"errors"
	"fmt"
	"hash"
	"io"
	"sync"
	"sync/atomic"

	"github.com/google/uuid"
	"github.com/opencontainers/go-digest"
)

// FillHoldBack is how many final bytes of a filling blob readers get only
// after the whole blob is verified: a client never receives a complete
// body whose bytes do not match the digest.
const FillHoldBack = 64 << 10

// fillRing is how many of the latest bytes of a fill are kept in memory
// (at least; plus the chunk being written): readers that keep up take them
// from there as they arrive; one that falls further behind, or joins late,
// reads the ingest file. Per fill in flight (at most the upstream
// connection limit of them).
const fillRing = 1 << 20

// ErrFillAborted is returned to readers of a fill that did not complete.
var ErrFillAborted = errors.New("blob download aborted")

// fill is a blob being written from upstream while clients read it: each
// chunk of bytes goes to an ingest file and a hash as it arrives, and stays
// in memory while it is among the latest fillRing bytes; readers take
// chunks from there, or read the file when they are further behind. finish verifies the digest and commits the blob into the
// repositories that asked for it; fail discards it. Safe for concurrent
// use. Fills (fills.go) owns the one fill per digest.
type fill struct {
	s   *Store
	o   Origin
	d   digest.Digest
	id  string
	app Appender
	h   hash.Hash
	rf  ReadAtCloser // shared read handle; valid after commit or discard

	mu        sync.Mutex
	changed   chan struct{} // closed and replaced on every change
	size      int64         // -1 until Start
	written   int64
	done      bool         // verified: readers may have every byte
	committed bool         // stored and linked: the cache answers from now on
	err       error        // set by Fail: readers stop with it
	commitErr error        // the blob was verified but could not be stored
	recent    []*fillChunk // the latest chunks, in order, contiguous up to written; nil once released
	recentLen int64        // their bytes
	released  bool
	readers   int
	retired   bool
	repos     []string      // linked on commit; guarded by Fills.mu
	from      func() string // BlobSource.Peer, set before the download starts: the node sending every byte so far
	urgent    atomic.Bool   // a client waits for the download (see BlobSource.Background)
}

// waitedFor notes who asked for the download: unless src is Background, a
// client waits for it.
func (f *fill) waitedFor(src BlobSource) {
	if !src.Background {
		f.urgent.Store(true)
	}
}

// newFill begins filling blob d, content of origin o, for repo. The caller
// must end it with finish or fail, and retire it once no new reader can
// find it.
func (s *Store) newFill(repo string, o Origin, d digest.Digest) (*fill, error) {
	if err := ValidateDigest(d); err != nil {
		return nil, err
	}
	id := "fill-" + uuid.NewString()
	app, err := s.blobs.Append(id)
	if err != nil {
		return nil, err
	}
	rf, err := s.blobs.ReadIngest(id)
	if err != nil {
		app.Close()
		s.blobs.Discard(id)
		return nil, err
	}
	return &fill{s: s, o: o, repos: []string{repo}, d: d, id: id, app: app, h: d.Algorithm().Hash(), rf: rf,
		changed: make(chan struct{}), size: -1}, nil
}

func (f *fill) notifyLocked() {
	close(f.changed)
	f.changed = make(chan struct{})
}

// start records the blob's size, as upstream announced it.
func (f *fill) start(size int64) {
	f.mu.Lock()
	f.size = size
	f.notifyLocked()
	f.mu.Unlock()
}

// write appends upstream bytes (copied into chunks). It refuses bytes
// beyond the announced size.
func (f *fill) write(p []byte) (int, error) {
	var total int
	for len(p) > 0 {
		c := newFillChunk()
		c.b = c.b[:copy(c.b[:cap(c.b)], p)]
		p = p[len(c.b):]
		n, err := f.writeChunk(c)
		total += n
		if err != nil {
			return total, err
		}
	}
	return total, nil
}

// writeChunk appends c's bytes, taking over the caller's reference to c.
// It refuses bytes beyond the announced size.
func (f *fill) writeChunk(c *fillChunk) (int, error) {
	f.mu.Lock()
	size, written := f.size, f.written
	f.mu.Unlock()
	if size >= 0 && written+int64(len(c.b)) > size {
		c.release()
		return 0, fmt.Errorf("%w: more than the announced %d bytes", ErrSizeInvalid, size)
	}
	n, err := f.app.Write(c.b)
	c.b = c.b[:n]
	f.h.Write(c.b)
	f.mu.Lock()
	c.off = f.written
	f.written += int64(n)
	if n > 0 && !f.released {
		f.recent = append(f.recent, c)
		f.recentLen += int64(n)
		for len(f.recent) > 1 && f.recentLen-int64(len(f.recent[0].b)) >= fillRing {
			f.recentLen -= int64(len(f.recent[0].b))
			f.recent[0].release()
			f.recent = append(f.recent[:0], f.recent[1:]...)
		}
		c = nil
	}
	f.notifyLocked()
	f.mu.Unlock()
	if c != nil {
		c.release()
	}
	return n, err
}

// releaseLocked gives up the recent chunks and closes the read handle,
// once the fill is retired and its last reader closed. Call with f.mu held.
func (f *fill) releaseLocked() error {
	for _, c := range f.recent {
		c.release()
	}
	f.recent, f.recentLen, f.released = nil, 0, true
	return f.rf.Close()
}

// written is how many bytes arrived so far.
func (f *fill) bytesWritten() int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.written
}

// finish verifies size and digest, releases the held-back bytes to
// readers, then commits the blob (fsync, rename) and links it into repos,
// the repositories that asked for it. Readers do not wait for the commit: what they get is
// verified either way. On a mismatch the fill fails with ErrDigestMismatch
// and nothing is kept.
func (f *fill) finish(repos []string) error {
	f.mu.Lock()
	size, written := f.size, f.written
	f.mu.Unlock()
	err := f.app.Close()
	switch {
	case err != nil:
	case size >= 0 && written != size:
		err = fmt.Errorf("%w: %d of %d bytes", ErrSizeInvalid, written, size)
	case digest.NewDigest(f.d.Algorithm(), f.h) != f.d:
		err = fmt.Errorf("%w: upstream bytes for %s hash to %s", ErrDigestMismatch, f.d, digest.NewDigest(f.d.Algorithm(), f.h))
	}
	if err != nil {
		f.fail(err)
		return err
	}
	f.mu.Lock()
	f.done = true
	f.notifyLocked()
	f.mu.Unlock()
	var peer string
	if f.from != nil {
		peer = f.from()
	}
	if err = f.s.commitBlob(f.id, repos, f.d, written, nil, f.o, peer); err != nil {
		f.s.blobs.Discard(f.id)
	}
	f.mu.Lock()
	f.committed, f.commitErr = err == nil, err
	f.notifyLocked()
	f.mu.Unlock()
	return err
}

// fail abandons the fill: readers get err, the ingest file is removed.
func (f *fill) fail(err error) {
	f.app.Close()
	f.s.blobs.Discard(f.id)
	f.mu.Lock()
	if f.err == nil && !f.done {
		f.err = fmt.Errorf("%w: %w", ErrFillAborted, err)
	}
	f.notifyLocked()
	f.mu.Unlock()
}

// until waits for the fill's changes until cond, called with f.mu held,
// reports done or an error (which it returns), or ctx ends.
func (f *fill) until(ctx context.Context, cond func() (bool, error)) error {
	for {
		f.mu.Lock()
		done, err := cond()
		ch := f.changed
		f.mu.Unlock()
		if done || err != nil {
			return err
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// sizeWait waits until the size is known and returns it.
func (f *fill) sizeWait(ctx context.Context) (int64, error) {
	var size int64
	if err := f.until(ctx, func() (bool, error) { size = f.size; return size >= 0, f.err }); err != nil {
		return 0, err
	}
	return size, nil
}

// verified blocks until the blob is downloaded and verified (readers may
// have every byte; the commit may still be under way) or the fill failed.
func (f *fill) verified(ctx context.Context) error {
	return f.until(ctx, func() (bool, error) { return f.done, f.err })
}

// wait blocks until the blob is committed (then the cache answers for it)
// or the fill has failed.
func (f *fill) wait(ctx context.Context) error {
	return f.until(ctx, func() (bool, error) { return f.committed, errors.Join(f.err, f.commitErr) })
}

// newReader returns a reader of the whole blob that holds the fill's read
// handle open until closed; take it while the fill cannot yet be retired
// (under Fills.mu, which guards retiring). Bytes come as they arrive; the
// last FillHoldBack bytes only after verification; if the fill fails the
// reader returns an error wrapping ErrFillAborted.
func (f *fill) newReader(ctx context.Context) *FillReader {
	f.mu.Lock()
	f.readers++
	f.mu.Unlock()
	return &FillReader{f: f, ctx: ctx}
}

// retire tells the fill that no new reader will come; its read handle is
// closed when the last reader is.
func (f *fill) retire() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.retired = true
	if f.readers == 0 {
		f.releaseLocked()
	}
}

// FillReader reads a blob while it is downloaded; see Fills.Get. Bytes come
// as they arrive; the last FillHoldBack bytes only after the whole blob
// matched its digest; if the download fails, Read returns an error wrapping
// ErrFillAborted. Not safe for concurrent use; Close it.
type FillReader struct {
	f        *fill
	ctx      context.Context
	pos, end int64
	open     bool // end is set
	closed   bool
	// bytes this reader took from the ring and from the file
	fromRing, fromFile int64
}

// Limit restricts the reader to n bytes from offset off, before any Read.
func (r *FillReader) Limit(off, n int64) {
	r.pos, r.end, r.open = off, off+n, true
}

// Size waits until upstream announced the blob's size and returns it.
func (r *FillReader) Size(ctx context.Context) (int64, error) { return r.f.sizeWait(ctx) }

// Verified blocks until the whole blob arrived and matched its digest (its
// commit, an fsync and a rename, may still be under way) or the download
// failed.
func (r *FillReader) Verified(ctx context.Context) error { return r.f.verified(ctx) }

// Wait blocks until the blob is committed (the store then answers for it)
// or the download failed.
func (r *FillReader) Wait(ctx context.Context) error { return r.f.wait(ctx) }

// ready waits until the reader may have more bytes and returns how many,
// with f.mu held; or an error (io.EOF at the end) without it.
func (r *FillReader) ready() (int64, error) {
	f := r.f
	for {
		f.mu.Lock()
		limit, size, done, err, ch := f.written, f.size, f.done, f.err, f.changed
		if err != nil {
			f.mu.Unlock()
			return 0, err
		}
		if !done {
			if size >= 0 {
				limit = min(limit, size-FillHoldBack)
			} else {
				limit -= FillHoldBack
			}
		}
		end := limit
		if r.open {
			end = min(end, r.end)
		}
		if r.open && r.pos >= r.end || done && r.pos >= limit {
			f.mu.Unlock()
			return 0, io.EOF
		}
		if avail := end - r.pos; avail > 0 {
			return avail, nil
		}
		f.mu.Unlock()
		select {
		case <-ch:
		case <-r.ctx.Done():
			return 0, r.ctx.Err()
		}
	}
}

// Ready waits until the reader has bytes to give, or is at the end
// (io.EOF), or the download failed.
func (r *FillReader) Ready() error {
	_, err := r.ready()
	if err == nil {
		r.f.mu.Unlock()
	}
	return err
}

func (r *FillReader) Read(p []byte) (int, error) {
	f := r.f
	avail, err := r.ready()
	if err != nil {
		return 0, err
	}
	n := int(min(int64(len(p)), avail))
	if c := f.chunkLocked(r.pos); c != nil {
		// Still in memory, and so is everything after it up to written.
		for done := 0; done < n; {
			c := f.chunkLocked(r.pos + int64(done))
			done += copy(p[done:n], c.b[r.pos+int64(done)-c.off:])
		}
		f.mu.Unlock()
		r.pos += int64(n)
		r.fromRing += int64(n)
		return n, nil
	}
	f.mu.Unlock()
	n, err = f.rf.ReadAt(p[:n], r.pos)
	r.pos += int64(n)
	r.fromFile += int64(n)
	if err == io.EOF && n > 0 {
		err = nil
	}
	return n, err
}

// Next waits for the reader's next bytes and returns them without a copy
// while they are in memory: b counts as read and stays valid until done
// is called (exactly once). When they are no longer in memory (the reader
// fell behind, or joined late) it returns no bytes and no error: Read
// them. At the end it returns io.EOF.
func (r *FillReader) Next() (b []byte, done func(), err error) {
	f := r.f
	avail, err := r.ready()
	if err != nil {
		return nil, nil, err
	}
	c := f.chunkLocked(r.pos)
	if c == nil {
		f.mu.Unlock()
		return nil, nil, nil
	}
	c.refs.Add(1)
	f.mu.Unlock()
	at := r.pos - c.off
	n := min(avail, int64(len(c.b))-at)
	r.pos += n
	r.fromRing += n
	return c.b[at : at+n], c.release, nil
}

func (r *FillReader) Close() error {
	if r.closed {
		return nil
	}
	r.closed = true
	f := r.f
	f.mu.Lock()
	defer f.mu.Unlock()
	f.readers--
	if f.retired && f.readers == 0 {
		return f.releaseLocked()
	}
	return nil
}
