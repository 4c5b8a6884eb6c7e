package registry

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"sync"
	"time"
)

// Slow and stalled clients. Every response body goes out through
// copyToClient: each write must finish within the client timeout (a client
// that reads nothing for that long is cut off, and logged), and a client
// whose writes are slow gets its big copy buffer swapped for a small one,
// so that many slow readers hold little memory. Request bodies of uploads
// go through bodyReader: each read must receive something within the
// client timeout, and an idle body parks its upload slot.

// smallCopyBuffer is the buffer of a client that reads slowly.
const smallCopyBuffer = 32 << 10

// slowWrite: a full big-buffer write that takes longer than this marks the
// client as slow (under 2 MiB/s).
const slowWrite = 250 * time.Millisecond

// A client earns the big buffer once it has taken growAfter bytes at
// growRate or faster: more than kernel socket buffers can hide, so a slow
// reader never holds a big buffer for long.
const (
	growAfter = 8 << 20
	growRate  = 32 << 20 // bytes per second
)

// provedFast reports whether a client that has taken total bytes since
// began has earned the big buffer.
func provedFast(total int64, began time.Time) bool {
	return total >= growAfter && float64(total) >= growRate*time.Since(began).Seconds()
}

// sendfileChunk is how much one sendfile call may send under one deadline.
const sendfileChunk = 1 << 20

// parkAfter is how long one read of an upload body may wait before its
// slot is parked: a client that sends at LAN speed never waits that long,
// a trickle waits every time. A parked slot counts again after a read
// that came within parkAfter.
const parkAfter = 200 * time.Millisecond

var smallBufs = sync.Pool{New: func() any { b := make([]byte, smallCopyBuffer); return &b }}

// clientCut logs a client cut off for not reading (once per response).
func (reg *Registry) clientCut(r *http.Request, sent int64, err error) {
	reg.log.Warn("client cut off: it read nothing within the client timeout", "client", r.RemoteAddr,
		"method", r.Method, "path", r.URL.Path, "sent_bytes", sent, "timeout", reg.opts.ClientTimeout, "err", err)
}

func isTimeout(err error) bool { return errors.Is(err, os.ErrDeadlineExceeded) }

// chunkSource is a body whose bytes can be had without a copy: a
// download in flight (cache.FillReader). Next returns no bytes and no
// error when the next ones must be Read.
type chunkSource interface {
	io.Reader
	Next() (b []byte, done func(), err error)
}

// copyToClient writes src to w with a write deadline per write. It starts
// with a small buffer and takes a pooled blobCopyBuffer once the client
// has proved fast (growAfter at growRate); a big write that waits marks a
// slow client, which goes back to the small buffer. A chunkSource's bytes
// are written from where they are, without a buffer, until a write of
// them waits: a slow client holds no chunk for long.
func (reg *Registry) copyToClient(w http.ResponseWriter, r *http.Request, src io.Reader) (int64, error) {
	return reg.copyWith(w, r, src, false)
}

// copyWith is copyToClient, starting with the big buffer when the client
// has proved fast already.
func (reg *Registry) copyWith(w http.ResponseWriter, r *http.Request, src io.Reader, proven bool) (int64, error) {
	rc := http.NewResponseController(w)
	timeout := reg.opts.ClientTimeout
	defer rc.SetWriteDeadline(time.Time{})
	bp, pool := smallBufs.Get().(*[]byte), &smallBufs
	if proven {
		bp, pool = blobBufs.Get().(*[]byte), &blobBufs
	}
	defer func() { pool.Put(bp) }()
	chunks, _ := src.(chunkSource)
	var total int64
	began := time.Now()
	for {
		buf := *bp
		var out []byte
		var done func()
		var rerr error
		if chunks != nil {
			out, done, rerr = chunks.Next()
		}
		if out == nil && done == nil && rerr == nil {
			var n int
			n, rerr = src.Read(buf)
			out = buf[:n]
		}
		if len(out) > 0 {
			rc.SetWriteDeadline(time.Now().Add(timeout))
			start := time.Now()
			wn, werr := w.Write(out)
			took := time.Since(start)
			if done != nil {
				done()
			}
			total += int64(wn)
			if werr != nil {
				if isTimeout(werr) {
					reg.clientCut(r, total, werr)
				}
				return total, werr
			}
			switch {
			case done != nil && len(out) >= smallCopyBuffer && took > slowWrite:
				chunks = nil // slow: copies through the small buffer from now on
			case pool == &smallBufs && provedFast(total, began):
				pool.Put(bp)
				bp, pool = blobBufs.Get().(*[]byte), &blobBufs
			case pool == &blobBufs && len(out) == len(buf) && took > slowWrite:
				pool.Put(bp)
				bp, pool = smallBufs.Get().(*[]byte), &smallBufs
			}
		} else if done != nil {
			done()
		}
		if rerr == io.EOF {
			return total, nil
		} else if rerr != nil {
			return total, rerr
		}
	}
}

// sendfileCopier sends a file with sendfile(2), one chunk per deadline.
type sendfileCopier struct {
	http.ResponseWriter
	reg *Registry
	r   *http.Request
}

func (s sendfileCopier) ReadFrom(src io.Reader) (int64, error) {
	rf, ok := s.ResponseWriter.(io.ReaderFrom)
	lr, limited := src.(*io.LimitedReader)
	if !ok || !limited {
		return s.reg.copyToClient(s.ResponseWriter, s.r, src)
	}
	n, _, err := s.reg.sendfileChunks(s.ResponseWriter, rf, s.r, lr, false)
	return n, err
}

// sendfileChunks sends lr through rf (sendfile for a file) one
// sendfileChunk per write deadline, to the end; with untilProven it stops
// as soon as the client has taken growAfter bytes at growRate or faster,
// and reports that it has.
func (reg *Registry) sendfileChunks(w http.ResponseWriter, rf io.ReaderFrom, r *http.Request, lr *io.LimitedReader, untilProven bool) (int64, bool, error) {
	rc := http.NewResponseController(w)
	defer rc.SetWriteDeadline(time.Time{})
	var total int64
	began := time.Now()
	for lr.N > 0 {
		rc.SetWriteDeadline(time.Now().Add(reg.opts.ClientTimeout))
		chunk := &io.LimitedReader{R: lr.R, N: min(lr.N, sendfileChunk)}
		n, err := rf.ReadFrom(chunk)
		lr.N -= n
		total += n
		if err != nil {
			if isTimeout(err) {
				reg.clientCut(r, total, err)
			}
			return total, false, err
		}
		if n == 0 {
			break
		}
		if untilProven && provedFast(total, began) {
			return total, true, nil
		}
	}
	return total, false, nil
}

// bodyError is a failure to read a request body: the client's doing (cut
// short, too slow), answered with 400.
type bodyError struct{ err error }

func (e *bodyError) Error() string { return "reading the request body: " + e.err.Error() }
func (e *bodyError) Unwrap() error { return e.err }

// bodyReader reads an upload's body with a read deadline per read, and
// parks the upload's slot while the body sends nothing.
type bodyReader struct {
	rc      io.ReadCloser
	ctl     *http.ResponseController
	timeout time.Duration
	slot    *uploadSlot
	log     *slog.Logger
	client  string
}

func (b *bodyReader) Read(p []byte) (int, error) {
	b.ctl.SetReadDeadline(time.Now().Add(b.timeout))
	park := time.AfterFunc(parkAfter, b.slot.park)
	n, err := b.rc.Read(p)
	if park.Stop() {
		// Only a read that came quickly counts the slot again: a trickle's
		// read waits past parkAfter every time and so stays parked, even in
		// the moment its bytes arrive (64 tricklers sending in step would
		// otherwise all count at once, for parkAfter in every second).
		b.slot.unpark()
	}
	switch {
	case err == nil || err == io.EOF:
		return n, err
	case isTimeout(err):
		b.log.Warn("client cut off: its request body sent nothing within the client timeout", "client", b.client, "timeout", b.timeout)
		return n, &bodyError{fmt.Errorf("nothing received for %s", b.timeout)}
	}
	return n, &bodyError{err}
}

func (b *bodyReader) Close() error { return b.rc.Close() }
