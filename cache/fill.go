package cache

import (
	"context"
	"errors"
	"fmt"
	"hash"
	"io"
	"sync"

	"github.com/google/uuid"
	"github.com/opencontainers/go-digest"
)

// FillHoldBack is how many final bytes of a filling blob readers get only
// after the whole blob is verified: a client never receives a complete
// body whose bytes do not match the digest.
const FillHoldBack = 64 << 10

// ErrFillAborted is returned to readers of a fill that did not complete.
var ErrFillAborted = errors.New("blob download aborted")

// Fill is a blob being written from upstream while clients read it: bytes
// go to an ingest file and a hash as they arrive; readers follow the file
// as it grows. Finish verifies the digest and commits the blob into a
// repository; Fail discards it. Safe for concurrent use.
type Fill struct {
	s    *Store
	repo string
	d    digest.Digest
	id   string
	app  Appender
	h    hash.Hash
	rf   ReadAtCloser // shared read handle; valid after commit or discard

	mu        sync.Mutex
	changed   chan struct{} // closed and replaced on every change
	size      int64         // -1 until Start
	written   int64
	done      bool  // verified: readers may have every byte
	committed bool  // stored and linked: the cache answers from now on
	err       error // set by Fail: readers stop with it
	commitErr error // the blob was verified but could not be stored
	readers   int
	retired   bool
}

// NewFill begins filling blob d of repo. The caller must end it with
// Finish or Fail, and Retire it once no new reader can find it.
func (s *Store) NewFill(repo string, d digest.Digest) (*Fill, error) {
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
	return &Fill{s: s, repo: repo, d: d, id: id, app: app, h: d.Algorithm().Hash(), rf: rf,
		changed: make(chan struct{}), size: -1}, nil
}

// Digest is the blob being filled.
func (f *Fill) Digest() digest.Digest { return f.d }

func (f *Fill) notifyLocked() {
	close(f.changed)
	f.changed = make(chan struct{})
}

// Start records the blob's size, as upstream announced it.
func (f *Fill) Start(size int64) {
	f.mu.Lock()
	f.size = size
	f.notifyLocked()
	f.mu.Unlock()
}

// Write appends upstream bytes. It refuses bytes beyond the announced size.
func (f *Fill) Write(p []byte) (int, error) {
	f.mu.Lock()
	size, written := f.size, f.written
	f.mu.Unlock()
	if size >= 0 && written+int64(len(p)) > size {
		return 0, fmt.Errorf("%w: more than the announced %d bytes", ErrSizeInvalid, size)
	}
	n, err := f.app.Write(p)
	f.h.Write(p[:n])
	f.mu.Lock()
	f.written += int64(n)
	f.notifyLocked()
	f.mu.Unlock()
	return n, err
}

// Written is how many bytes arrived so far.
func (f *Fill) Written() int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.written
}

// Finish verifies size and digest, releases the held-back bytes to
// readers, then commits the blob (fsync, rename) and links it into the
// fill's repository. Readers do not wait for the commit: what they get is
// verified either way. On a mismatch the fill fails with ErrDigestMismatch
// and nothing is kept.
func (f *Fill) Finish() error {
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
		f.Fail(err)
		return err
	}
	f.mu.Lock()
	f.done = true
	f.notifyLocked()
	f.mu.Unlock()
	if err = f.s.commitBlob(f.id, f.repo, f.d, written, nil); err != nil {
		f.s.blobs.Discard(f.id)
	}
	f.mu.Lock()
	f.committed, f.commitErr = err == nil, err
	f.notifyLocked()
	f.mu.Unlock()
	return err
}

// Fail abandons the fill: readers get err, the ingest file is removed.
func (f *Fill) Fail(err error) {
	f.app.Close()
	f.s.blobs.Discard(f.id)
	f.mu.Lock()
	if f.err == nil && !f.done {
		f.err = fmt.Errorf("%w: %w", ErrFillAborted, err)
	}
	f.notifyLocked()
	f.mu.Unlock()
}

// Size waits until the size is known and returns it.
func (f *Fill) Size(ctx context.Context) (int64, error) {
	for {
		f.mu.Lock()
		size, err, ch := f.size, f.err, f.changed
		f.mu.Unlock()
		switch {
		case err != nil:
			return 0, err
		case size >= 0:
			return size, nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
}

// Wait blocks until the blob is committed (then the cache answers for it)
// or the fill has failed.
func (f *Fill) Wait(ctx context.Context) error {
	for {
		f.mu.Lock()
		committed, err, ch := f.committed, errors.Join(f.err, f.commitErr), f.changed
		f.mu.Unlock()
		if committed || err != nil {
			return err
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// NewReader returns a reader of the whole blob that holds the fill's read
// handle open until closed; take it while the fill cannot yet be retired
// (under the lock that guards retiring). Bytes come as they arrive; the
// last FillHoldBack bytes only after verification; if the fill fails the
// reader returns an error wrapping ErrFillAborted.
func (f *Fill) NewReader(ctx context.Context) *FillReader {
	f.mu.Lock()
	f.readers++
	f.mu.Unlock()
	return &FillReader{f: f, ctx: ctx}
}

// Retire tells the fill that no new reader will come; its read handle is
// closed when the last reader is.
func (f *Fill) Retire() {
	f.mu.Lock()
	f.retired = true
	last := f.readers == 0
	f.mu.Unlock()
	if last {
		f.rf.Close()
	}
}

// FillReader reads a filling blob; see Fill.NewReader.
type FillReader struct {
	f        *Fill
	ctx      context.Context
	pos, end int64
	open     bool // end is set
	closed   bool
}

// Limit restricts the reader to n bytes from offset off, before any Read.
func (r *FillReader) Limit(off, n int64) {
	r.pos, r.end, r.open = off, off+n, true
}

func (r *FillReader) Read(p []byte) (int, error) {
	f := r.f
	for {
		f.mu.Lock()
		limit, size, done, err, ch := f.written, f.size, f.done, f.err, f.changed
		f.mu.Unlock()
		if err != nil {
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
			return 0, io.EOF
		}
		if avail := end - r.pos; avail > 0 {
			n, err := f.rf.ReadAt(p[:min(int64(len(p)), avail)], r.pos)
			r.pos += int64(n)
			if err == io.EOF && n > 0 {
				err = nil
			}
			return n, err
		}
		select {
		case <-ch:
		case <-r.ctx.Done():
			return 0, r.ctx.Err()
		}
	}
}

func (r *FillReader) Close() error {
	if r.closed {
		return nil
	}
	r.closed = true
	f := r.f
	f.mu.Lock()
	f.readers--
	last := f.retired && f.readers == 0
	f.mu.Unlock()
	if last {
		return f.rf.Close()
	}
	return nil
}
