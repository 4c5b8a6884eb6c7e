package upstream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Blob opens blob d of repo at offset and returns it with the size of the
// whole blob. It sends one GET (with Range), no HEAD first: the size comes
// from the response. The reader reconnects with a Range request when the
// connection drops; a large blob read from offset 0 whose connection is
// slow is split into segments fetched in parallel (segments.go). It holds
// one of the MaxConns slots until closed.
func (c *Client) Blob(ctx context.Context, name, repo string, d digest.Digest, offset int64) (io.ReadCloser, int64, error) {
	r, err := c.ready(name)
	if err != nil {
		return nil, 0, err
	}
	wctx, cancel := context.WithTimeout(ctx, c.opts.SlotWait)
	err = c.sem.Acquire(wctx, 1)
	cancel()
	if err != nil {
		if ctx.Err() != nil {
			return nil, 0, ctx.Err()
		}
		return nil, 0, fmt.Errorf("%w: all %d upstream connections busy for %s", ErrBusy, c.opts.MaxConns, c.opts.SlotWait)
	}
	release := func() { c.sem.Release(1) }
	var (
		rs       io.ReadSeekCloser
		first    []byte
		eof      bool
		size     int64
		ranged   bool
		location string
	)
	// From offset 0 the GET asks "bytes=0-" all the same: a 206 says the
	// registry serves ranges, which splitting needs.
	askRange := offset == 0 && c.opts.Segments > 0 && !emptyBlob(d)
	err = c.do(ctx, r, func(ctx context.Context) error {
		cs := callFrom(ctx)
		if askRange {
			ctx = withRange(ctx, -1)
		}
		f, err := c.resolver.Fetcher(ctx, r.Name+"/"+repo+"@"+d.String())
		if err != nil {
			return err
		}
		// containerd's Fetch opens lazily and wants a size to stop at;
		// the real one is the response's (the recorder notes it), so the
		// first read, which sends the GET, happens here: errors and the
		// size are known before Blob returns.
		if rs, first, eof, err = openAt(ctx, f, d, unknownSize, offset); err != nil {
			return err
		}
		ranged, location = cs.rangeStart() == offset, cs.redirectedTo()
		if size = cs.blobSize(); size < 0 {
			// A GET without a length (chunked): ask the HEAD, as before.
			if size, err = headBlob(ctx, f, d); err == nil && size < 0 {
				err = fmt.Errorf("%w: blob %s answered without a length", ErrInvalid, d)
			}
			if err != nil {
				rs.Close()
				return err
			}
		}
		return nil
	})
	if err != nil {
		release()
		return nil, 0, err
	}
	var rd io.ReadCloser = &primed{first: first, eof: eof, rc: rs}
	if askRange && ranged && !eof && size >= 2*c.opts.SegmentSize {
		rd = c.newSegmented(ctx, r, repo, d, size, rd, int64(len(first)), location)
	}
	s := newSlotReader(rd, release, r.stalled)
	s.received = &c.received
	return s, size, nil
}

// openAt opens blob d with containerd's reader, which stops at size, seeks
// to offset and reads the first bytes (sending the GET).
func openAt(ctx context.Context, f remotes.Fetcher, d digest.Digest, size, offset int64) (rs io.ReadSeekCloser, first []byte, eof bool, err error) {
	rc, err := f.Fetch(ctx, ocispec.Descriptor{MediaType: "application/octet-stream", Digest: d, Size: size})
	if err != nil {
		return nil, nil, false, err
	}
	rs, ok := rc.(io.ReadSeekCloser)
	if !ok {
		rc.Close()
		return nil, nil, false, errors.New("containerd blob reader cannot seek")
	}
	if offset > 0 {
		if _, err := rs.Seek(offset, io.SeekStart); err != nil {
			rs.Close()
			return nil, nil, false, err
		}
	}
	buf := make([]byte, 32<<10)
	n, err := rs.Read(buf)
	if err != nil && err != io.EOF {
		rs.Close()
		return nil, nil, false, err
	}
	return rs, buf[:n], err == io.EOF, nil
}

// unknownSize stands for "up to the end of the response" in containerd's
// reader, which needs a size to stop at.
const unknownSize = math.MaxInt64 - 1

// primed is a reader whose first bytes were already read (and maybe its
// end: containerd's reader must not be read past its end, it would
// reopen the blob there).
type primed struct {
	first []byte
	eof   bool
	rc    io.ReadCloser
}

func (p *primed) Read(b []byte) (int, error) {
	if len(p.first) > 0 {
		n := copy(b, p.first)
		p.first = p.first[n:]
		return n, nil
	}
	if p.eof {
		return 0, io.EOF
	}
	n, err := p.rc.Read(b)
	if err == io.EOF {
		p.eof = true
	}
	return n, err
}

func (p *primed) Close() error { return p.rc.Close() }

// stallRelease is how long a blob transfer may make no progress before its
// connection slot goes back to the pool: a stalled connection moves no
// bytes, and must not keep other images' cold pulls waiting. (BodyIdle
// later aborts it.)
const stallRelease = 5 * time.Second

type slotReader struct {
	io.ReadCloser
	once     sync.Once
	release  func()
	stalled  *time.Timer
	received *atomic.Int64 // the client's count of blob bytes; nil: none
}

// newSlotReader calls stalled, too, when the transfer makes no progress
// for stallRelease.
func newSlotReader(rc io.ReadCloser, release, stalled func()) *slotReader {
	s := &slotReader{ReadCloser: rc, release: release}
	s.stalled = time.AfterFunc(stallRelease, func() {
		stalled()
		s.once.Do(s.release)
	})
	return s
}

// stalled is called when a connection to r stops moving bytes or answers
// no request in time: whatever froze it (a middlebox, a peer that lost
// its state) may have frozen the idle connections in r's keep-alive pool
// too, so they are closed rather than reused. A request on one would wait
// the whole response timeout; new connections cost one handshake.
func (r *registry) stalled() { r.tr.CloseIdleConnections() }

func (s *slotReader) Read(p []byte) (int, error) {
	n, err := s.ReadCloser.Read(p)
	if n > 0 {
		s.stalled.Reset(stallRelease)
		if s.received != nil {
			s.received.Add(int64(n))
		}
	}
	return n, err
}

func (s *slotReader) Close() error {
	s.stalled.Stop()
	err := s.ReadCloser.Close()
	s.once.Do(s.release)
	return err
}
