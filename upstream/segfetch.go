package upstream

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/opencontainers/go-digest"
)

func (s *segmented) fetch(g *segment) {
	rc, err := s.open(g.start, g.end-1)
	filled := 0
	var began time.Time // the first bytes: the rate leaves out the request's round trip, as decide's does
	for err == nil && filled < len(g.buf) {
		var n int
		n, err = rc.Read(g.buf[filled:])
		if began.IsZero() {
			began = time.Now()
		}
		filled += n
		if n > 0 {
			s.mu.Lock()
			g.filled = filled
			s.notifyLocked()
			s.mu.Unlock()
		}
	}
	if rc != nil {
		rc.Close()
	}
	if filled == len(g.buf) {
		err = nil
		s.mu.Lock()
		s.segBytes += int64(filled)
		s.segTime += time.Since(began)
		s.mu.Unlock()
	} else if err == nil || err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	s.c.sem.Release(1)
	s.mu.Lock()
	g.running = false
	s.running--
	var free []byte
	if s.closed {
		free = s.releaseLocked(g)
	}
	s.notifyLocked()
	s.mu.Unlock()
	if err != nil && s.ctx.Err() == nil {
		s.c.log.Debug("upstream blob segment failed: the reader fetches it itself", "digest", s.d, "at", g.start+int64(filled), "err", err)
	}
	if free != nil {
		s.c.segments.put(free)
	}
	s.schedule()
}

// open opens bytes [start, end] of the blob: straight from the CDN URL the
// registry redirected the first GET to (one request instead of two, and
// the registry sees one GET per blob), or, without one or once it failed
// (a signed URL expires), through the registry.
func (s *segmented) open(start, end int64) (io.ReadCloser, error) {
	s.mu.Lock()
	loc := s.location
	s.mu.Unlock()
	if loc != "" {
		rc, err := s.c.openLocation(s.ctx, s.r, loc, start, end)
		if err == nil {
			return rc, nil
		}
		if s.ctx.Err() != nil {
			return nil, err
		}
		s.c.log.Debug("blob segment from the redirect location failed: asking the registry", "digest", s.d, "err", err)
		s.mu.Lock()
		s.location = ""
		s.mu.Unlock()
	}
	return s.c.openRange(s.ctx, s.r, s.repo, s.d, start, end)
}

// openLocation GETs bytes [start, end] from loc, a URL the registry
// redirected a GET of the same blob to, on the registry's HTTP client
// (its dialer rules apply) without credentials (those were for the
// registry). It must answer 206 from start.
func (c *Client) openLocation(ctx context.Context, r *registry, loc string, start, end int64) (io.ReadCloser, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, loc, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", start, end))
	resp, err := r.host.Client.Do(req)
	if err != nil {
		return nil, err
	}
	from, to, _, ok := contentRange(resp.Header.Get("Content-Range"))
	if resp.StatusCode != http.StatusPartialContent || !ok || from != start || to != end {
		resp.Body.Close()
		return nil, fmt.Errorf("redirect location answered %s (%q) for bytes %d-%d", resp.Status, resp.Header.Get("Content-Range"), start, end)
	}
	return resp.Body, nil
}

// openRange opens bytes [start, end] of blob d with one bounded ranged
// GET; the response must be a 206 for exactly that start.
func (c *Client) openRange(ctx context.Context, r *registry, repo string, d digest.Digest, start, end int64) (io.ReadCloser, error) {
	var rc io.ReadCloser
	err := c.do(ctx, r, func(ctx context.Context) error {
		ctx = withRange(ctx, end)
		f, err := c.resolver.Fetcher(ctx, r.Name+"/"+repo+"@"+d.String())
		if err != nil {
			return err
		}
		rs, first, eof, err := openAt(ctx, f, d, end+1, start) // containerd's reader stops at end
		if err != nil {
			return err
		}
		if got := callFrom(ctx).rangeStart(); got != start {
			rs.Close()
			return fmt.Errorf("%w: asked for bytes from %d, got from %d", errRangeIgnored, start, got)
		}
		rc = &primed{first: first, eof: eof, rc: rs}
		return nil
	})
	return rc, err
}

// emptyBlob reports whether d is the digest of no bytes: a Range request
// for it cannot be satisfied.
func emptyBlob(d digest.Digest) bool {
	return d.Validate() == nil && d.Algorithm().FromBytes(nil) == d
}
