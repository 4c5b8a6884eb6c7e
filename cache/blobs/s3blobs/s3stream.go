package s3blobs

import (
	"errors"
	"fmt"
	"hash"
	"io"

	"github.com/google/uuid"
	"github.com/minio/minio-go/v7"
	"github.com/opencontainers/go-digest"
	"github.com/wharf-registry/wharf/cache/blobs"
)

// streamHold is how many of the last bytes a stream from the bucket keeps
// back until the whole object hashed to its digest: a reader never gets a
// complete body that was not verified (a damaged object ends the stream
// with an error instead, short of its size).
const streamHold = 256 << 10

// s3Stream reads a blob without a local copy from the bucket as it
// arrives, writing the local copy on the way (committed once verified).
// It seeks only to where it is, to the start before any read, or to the
// end (for the size); any other seek first completes and verifies the
// download and continues on the local copy.
type s3Stream struct {
	b         *Store
	d         digest.Digest
	size      int64
	obj       *minio.Object
	id        string
	app       blobs.Appender
	h         hash.Hash
	chunk     []byte
	held      []byte // received, not yet handed out
	delivered int64
	received  int64
	done      bool  // verified and committed
	err       error // the stream failed: every later read returns it
	local     io.ReadSeekCloser
}

// openStream starts reading d from the bucket. Errors: blobs.ErrBlobUnknown,
// blobs.ErrStoreUnavailable.
func (b *Store) openStream(d digest.Digest, obj *minio.Object, size int64) (*s3Stream, error) {
	id := "s3-" + uuid.NewString()
	app, err := b.local.Append(id)
	if err != nil {
		obj.Close()
		return nil, err
	}
	return &s3Stream{b: b, d: d, size: size, obj: obj, id: id, app: app, h: d.Algorithm().Hash(), chunk: make([]byte, 256<<10)}, nil
}

func (s *s3Stream) Read(p []byte) (int, error) {
	if s.local != nil {
		return s.local.Read(p)
	}
	for {
		if s.err != nil {
			return 0, s.err
		}
		avail := len(s.held)
		if !s.done {
			avail -= streamHold
		}
		if avail > 0 {
			n := copy(p, s.held[:avail])
			s.held = append(s.held[:0], s.held[n:]...)
			s.delivered += int64(n)
			return n, nil
		}
		if s.done {
			return 0, io.EOF
		}
		s.receive()
	}
}

// receive reads the next piece from the bucket, or finishes at its end.
func (s *s3Stream) receive() {
	n, err := s.obj.Read(s.chunk)
	if n > 0 {
		if _, werr := s.app.Write(s.chunk[:n]); werr != nil {
			s.fail(werr)
			return
		}
		s.h.Write(s.chunk[:n])
		s.held = append(s.held, s.chunk[:n]...)
		s.received += int64(n)
	}
	switch {
	case errors.Is(err, io.EOF):
		s.finish()
	case err != nil:
		s.fail(fmt.Errorf("%w: reading %s: %w", blobs.ErrStoreUnavailable, s.d, err))
	case s.received > s.size:
		s.fail(fmt.Errorf("%w: object %s in the bucket is longer than its %d bytes", blobs.ErrSizeInvalid, s.b.key(s.d), s.size))
	}
}

func (s *s3Stream) finish() {
	if got := digest.NewDigest(s.d.Algorithm(), s.h); s.received != s.size || got != s.d {
		s.fail(fmt.Errorf("%w: object %s in the bucket (%d bytes) hashes to %s", blobs.ErrDigestMismatch, s.b.key(s.d), s.received, got))
		return
	}
	err := s.app.Close()
	if err == nil {
		err = s.b.local.Commit(s.id, s.d)
	}
	if err != nil {
		s.fail(err)
		return
	}
	s.app, s.done = nil, true
}

func (s *s3Stream) fail(err error) {
	s.err = err
	if s.app != nil {
		s.app.Close()
		s.b.local.Discard(s.id)
		s.app = nil
	}
}

func (s *s3Stream) Seek(off int64, whence int) (int64, error) {
	if s.local != nil {
		return s.local.Seek(off, whence)
	}
	switch {
	case whence == io.SeekEnd && off == 0:
		return s.size, nil // http.ServeContent's size probe; it seeks back next
	case (whence == io.SeekStart && off == s.delivered) || (whence == io.SeekCurrent && off == 0):
		return s.delivered, nil
	}
	// Anywhere else: the whole blob first, then its local copy.
	for !s.done && s.err == nil {
		s.receive()
	}
	if s.err != nil {
		return 0, s.err
	}
	rc, _, err := s.b.local.Open(s.d)
	if err != nil {
		return 0, err
	}
	s.local = rc
	return rc.Seek(off, whence)
}

func (s *s3Stream) Close() error {
	s.obj.Close()
	if s.local != nil {
		s.local.Close()
	}
	if s.app != nil { // closed before the end: nothing is kept
		s.app.Close()
		s.b.local.Discard(s.id)
		s.app = nil
	}
	return nil
}
