package upstream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
)

// A large blob that arrives slowly on its one connection (a registry or CDN
// that caps each connection, a long fat network) is fetched over several:
// its first GET keeps going up to a segment boundary, then bounded ranged
// GETs ("Range: bytes=a-b") fetch the following segments ahead of the
// reader into buffers, which the reader drains in order. The bytes reach
// the store's fill in order, so hashing, the ingest file and the fill's
// readers are unchanged. Buffers come from one budget for all blobs; the
// first blob in line gets the next free one (by WithOrder, a layer's place
// in its manifest, then by when it began), so an image's layers are
// completed in the order dockerd unpacks them in, not in the order their
// first responses happened to come. A blob on a fast connection is never
// split: it costs one request, as before.

// splitProbe is how many bytes of the first response are timed before
// deciding whether to split; a blob not split then is looked at again
// every splitAgain bytes (other downloads may have ended since).
const (
	splitProbe = 512 << 10
	splitAgain = 4 << 20
	// splitWindow is the shortest time a rate is measured over.
	splitWindow = 50 * time.Millisecond
)

// errRangeIgnored is a full 200 answered to a bounded ranged GET: the
// registry does not serve ranges (the recorder refuses the body rather
// than let containerd read the blob up to the offset).
var errRangeIgnored = errors.New("registry ignored a range request")

// rangeKey carries, through a request's context, the Range a blob GET
// must ask for: from the offset containerd asked for (0 when it asked
// none) to end (-1: to the end of the blob).
type rangeKey struct{}

func withRange(ctx context.Context, end int64) context.Context {
	return context.WithValue(ctx, rangeKey{}, end)
}

// rangeFrom returns the Range header value for req under ctx's wish, or "".
func rangeFrom(ctx context.Context, existing string) (string, bool) {
	end, ok := ctx.Value(rangeKey{}).(int64)
	if !ok {
		return "", false
	}
	var start int64
	if existing != "" {
		if n, err := fmt.Sscanf(existing, "bytes=%d-", &start); n != 1 || err != nil {
			return "", false
		}
	}
	if end < 0 {
		return fmt.Sprintf("bytes=%d-", start), true
	}
	return fmt.Sprintf("bytes=%d-%d", start, end), true
}

// segment is one part of a split blob, bytes [start, end).
type segment struct {
	start, end int64
	buf        []byte // nil: nobody fetches it into memory
	filled     int    // bytes of buf received
	read       int    // bytes given to the reader
	running    bool   // a helper is fetching it (not running with filled < len: it failed, the reader fetches the rest itself)
	byReader   bool   // the reader streams it on its own connection
}

func (g *segment) len() int { return int(g.end - g.start) }

// segmented reads a blob in order from its first response and, once
// split, from segments.
type segmented struct {
	c      *Client
	r      *registry
	repo   string
	d      digest.Digest
	size   int64
	key    segKey // its place in line for segments
	ctx    context.Context
	cancel context.CancelFunc

	// Used by Read only.
	head    io.ReadCloser // the first response, up to headEnd
	headEnd int64
	since   time.Time     // the rate is measured from here
	began   time.Time     // the first read
	from    int64         // and from this offset
	probe   int64         // the next offset to decide at; -1 once split
	waited  time.Duration // of the time since, spent waiting in the first response's Read
	pos     int64
	direct  io.ReadCloser // the reader's own stream of parts[next]
	// measured is what the latest decision was made on.
	measured linkMeasure
	// Once split (probe -1): the rate the first connection delivered
	// then; judged is set once the split was judged.
	splitRate float64
	judged    bool

	mu       sync.Mutex
	location string // the CDN URL the registry redirected the first GET to; "" once it failed
	changed  chan struct{}
	parts    []*segment // from headEnd on; set once, when split
	helped   int        // parts a helper started on
	// Of the parts helpers fetched whole: their bytes, and the time each
	// took from its first bytes on, summed (what one connection delivered).
	segBytes int64
	segTime  time.Duration
	next     int // the part the reader is in
	running  int // helpers in flight
	closed   bool
}

func (c *Client) newSegmented(ctx context.Context, r *registry, repo string, d digest.Digest, size int64, head io.ReadCloser, first int64, location string) *segmented {
	s := &segmented{c: c, r: r, repo: repo, d: d, size: size, key: c.segments.begin(OrderOf(ctx)), head: head, headEnd: size, location: location,
		from: first, probe: first + splitProbe, changed: make(chan struct{})}
	s.ctx, s.cancel = context.WithCancel(ctx)
	return s
}

func (s *segmented) notifyLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

func (s *segmented) Read(p []byte) (int, error) {
	if s.pos >= s.size {
		return 0, io.EOF
	}
	var n int
	var err error
	if s.pos < s.headEnd {
		n, err = s.readHead(p)
	} else {
		n, err = s.readPart(p)
	}
	if s.pos >= s.size && s.probe < 0 && !s.judged {
		s.judged = true
		s.mu.Lock()
		// Mostly the reader's own connection, for want of buffers or
		// connection slots: the split was not really tried.
		tried := 2*s.helped >= len(s.parts) && s.segTime > 0
		perConn := float64(s.segBytes) / s.segTime.Seconds()
		s.mu.Unlock()
		if tried {
			s.c.judgeSplit(s.r, s.splitRate, perConn)
		}
	}
	return n, err
}

func (s *segmented) readHead(p []byte) (int, error) {
	if int64(len(p)) > s.headEnd-s.pos {
		p = p[:s.headEnd-s.pos]
	}
	var n int
	var err error
	if s.probe >= 0 {
		began := time.Now()
		if s.since.IsZero() { // measured from the first read, not from the open
			s.since, s.began = began, began
		}
		n, err = s.head.Read(p)
		s.waited += time.Since(began)
	} else {
		n, err = s.head.Read(p)
	}
	s.pos += int64(n)
	if s.probe >= 0 && s.pos >= s.probe {
		s.decide()
	}
	if s.pos < s.headEnd {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return n, err
	}
	if s.headEnd < s.size { // the segments take over: the rest of this response is not wanted
		s.head.Close()
		s.head = nil
		return n, nil
	}
	return n, err
}

// linkMeasure is what decide measured of a blob's first connection: bytes
// per second over the latest window and since the first read, and the
// part of the window the reader spent waiting in Read (0–1).
type linkMeasure struct{ Rate, Overall, Waited float64 }

// slowLink is the split rule: the connection delivers less than
// SplitBelow per second, lately and since its start, and the reader spent
// at least 70 % of the window waiting for it (not hashing and writing: a
// busy CPU or disk is not helped by more connections). With SplitAlways
// every measure is slow: the structure of a split is then tested apart
// from this machine's speed.
func (c *Client) slowLink(m linkMeasure) bool {
	if c.opts.SplitAlways {
		return true
	}
	below := float64(c.opts.SplitBelow)
	return m.Rate < below && m.Overall < below && m.Waited >= 0.7
}

// decide splits the rest of the blob into segments if its connection
// delivers less than SplitBelow per second, lately and since its start, while the reader spends most of
// its time waiting for it (not hashing and writing: a busy CPU or disk is
// not helped by more connections), enough is left, fewer than
// splitAhead large blobs ahead in line are still downloading, and the registry's
// splits lately helped (judgeSplit).
func (s *segmented) decide() {
	o := s.c.opts
	now := time.Now()
	window := now.Sub(s.since)
	if window < splitWindow && !o.SplitAlways { // bytes that waited in the socket came in a burst: look longer
		s.probe = s.pos + splitProbe
		return
	}
	m := linkMeasure{
		Rate: float64(s.pos-s.from) / window.Seconds(),
		// A fast blob that stalled for a moment is not slow: the whole
		// download so far must be slow too.
		Overall: float64(s.pos) / now.Sub(s.began).Seconds(),
		Waited:  float64(s.waited) / float64(window),
	}
	s.measured = m
	slow := s.c.slowLink(m)
	s.c.noteLink(s.r, slow, now)
	seg := o.SegmentSize
	cut := (s.pos/seg + 1) * seg
	if s.c.segments.ahead(s.key) >= splitAhead || s.size-cut < seg || !slow || !s.c.splitsHelp(s.r, now) {
		s.since, s.from, s.probe, s.waited = now, s.pos, s.pos+splitAgain, 0
		return
	}
	rate := m.Rate
	s.probe = -1
	s.splitRate = rate
	took := now.Sub(s.since).Seconds()
	var parts []*segment
	for a := cut; a < s.size; a += seg {
		parts = append(parts, &segment{start: a, end: min(a+seg, s.size)})
	}
	s.headEnd = cut
	s.mu.Lock()
	s.parts = parts
	s.mu.Unlock()
	s.c.log.Debug("slow upstream blob: fetching it in segments", "digest", s.d, "size", s.size,
		"bytes_per_sec", int64(rate), "took", took, "segments", len(parts))
	s.schedule()
}

// pendingLocked returns the first part after the reader's that nobody
// fetches, or nil; it stops at Segments parts ahead of the reader.
func (s *segmented) pendingLocked() *segment {
	for i := s.next; i < len(s.parts) && i <= s.next+s.c.opts.Segments; i++ {
		g := s.parts[i]
		if g.buf == nil && !g.running && !g.byReader && g.read == 0 {
			return g
		}
	}
	return nil
}

// schedule starts helpers while there are parts to fetch, connection
// slots and buffers. Call without s.mu.
func (s *segmented) schedule() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for !s.closed && s.running < s.c.opts.Segments {
		g := s.pendingLocked()
		if g == nil || !s.c.sem.TryAcquire(1) {
			return
		}
		buf := s.c.segments.take(s)
		if buf == nil {
			s.c.sem.Release(1)
			return
		}
		s.startLocked(g, buf)
	}
}

// grant offers s a buffer freed by another blob; false if s no longer
// wants it.
func (s *segmented) grant(buf []byte) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.running >= s.c.opts.Segments {
		return false
	}
	g := s.pendingLocked()
	if g == nil || !s.c.sem.TryAcquire(1) {
		return false
	}
	s.startLocked(g, buf)
	return true
}

// startLocked fetches g into buf on a connection slot already taken.
func (s *segmented) startLocked(g *segment, buf []byte) {
	g.buf, g.running, g.filled = buf[:g.len()], true, 0
	s.running++
	s.helped++
	go s.fetch(g)
}

// releaseLocked takes g's buffer back once no helper writes it.
func (s *segmented) releaseLocked(g *segment) []byte {
	if g.running || g.buf == nil {
		return nil
	}
	buf := g.buf[:cap(g.buf)]
	g.buf = nil
	return buf
}

func (s *segmented) readPart(p []byte) (int, error) {
	for {
		if s.direct != nil {
			return s.readDirect(p)
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			return 0, errors.New("blob reader closed")
		}
		g := s.parts[s.next]
		if g.buf != nil && g.read < g.filled {
			n := copy(p, g.buf[g.read:g.filled])
			g.read += n
			s.pos += int64(n)
			var free []byte
			if g.read == g.len() {
				free = s.releaseLocked(g)
				s.next++
			}
			s.mu.Unlock()
			if free != nil {
				s.c.segments.put(free)
				s.schedule()
			}
			return n, nil
		}
		if g.running {
			ch := s.changed
			s.mu.Unlock()
			select {
			case <-ch:
				continue
			case <-s.ctx.Done():
				return 0, s.ctx.Err()
			}
		}
		// Nobody fetches it (no buffer or slot was free), or its helper
		// failed: fetch the rest of it on the reader's own connection.
		g.byReader = true
		free := s.releaseLocked(g)
		from := g.start + int64(g.read)
		s.mu.Unlock()
		if free != nil {
			s.c.segments.put(free)
		}
		rc, err := s.open(from, g.end-1)
		if err != nil {
			return 0, err
		}
		s.direct = rc
	}
}

func (s *segmented) readDirect(p []byte) (int, error) {
	s.mu.Lock()
	g := s.parts[s.next]
	s.mu.Unlock()
	if left := g.len() - g.read; len(p) > left {
		p = p[:left]
	}
	n, err := s.direct.Read(p)
	s.pos += int64(n)
	s.mu.Lock()
	g.read += n
	done := g.read == g.len()
	if done {
		s.next++
	}
	s.mu.Unlock()
	if done {
		s.direct.Close()
		s.direct = nil
		s.schedule()
		return n, nil
	}
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return n, err
}

func (s *segmented) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.cancel()
	var frees [][]byte
	for _, g := range s.parts {
		if b := s.releaseLocked(g); b != nil {
			frees = append(frees, b)
		}
	}
	s.notifyLocked()
	s.mu.Unlock()
	s.c.segments.forget(s)
	s.c.segments.ended(s.key)
	for _, b := range frees {
		s.c.segments.put(b)
	}
	if s.direct != nil {
		s.direct.Close()
	}
	if s.head != nil {
		return s.head.Close()
	}
	return nil
}
