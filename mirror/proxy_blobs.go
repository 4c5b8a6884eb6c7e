package mirror

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sync/errgroup"

	"github.com/wharf-registry/wharf/cache"
	"github.com/wharf-registry/wharf/policy"
	"github.com/wharf-registry/wharf/upstream"
)

// blob serves blob rt.ref of mirrored repository t (rt.name is its local
// name): from the cache, or streamed from the download in flight, which
// this request starts if none is.
func (p *proxy) blob(w http.ResponseWriter, r *http.Request, rt route, t policy.Target) error {
	d := digest.Digest(rt.ref)
	if _, err := p.store.StatBlob(rt.name, d); err == nil || p.opts.Offline || p.linkShared(r.Context(), t, d) {
		p.opts.Metrics.cache("blob", "hit")
		return p.reg.getBlob(w, r, rt)
	}
	f, rd, err := p.fill(r.Context(), t, d, true)
	if err != nil {
		return err
	}
	if f == nil { // committed meanwhile
		p.opts.Metrics.cache("blob", "hit")
		return p.reg.getBlob(w, r, rt)
	}
	p.opts.Metrics.cache("blob", "miss")
	defer rd.Close()
	size, err := f.Size(r.Context())
	if err != nil {
		return blobError(err)
	}
	start, n, partial, ok := singleRange(r.Header.Get("Range"), size)
	if !ok { // several or unsatisfiable ranges: let the cached copy answer
		if err := f.Wait(r.Context()); err != nil {
			return blobError(err)
		}
		return p.reg.getBlob(w, r, rt)
	}
	h := w.Header()
	setBlobHeaders(h, d)
	h.Set("Content-Length", strconv.FormatInt(n, 10))
	status := http.StatusOK
	if partial {
		h.Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", start, start+n-1, size))
		status = http.StatusPartialContent
	}
	if r.Method == http.MethodHead {
		w.WriteHeader(status)
		return nil
	}
	rd.Limit(start, n)
	w.WriteHeader(status)
	bp := blobBufs.Get().(*[]byte)
	defer blobBufs.Put(bp)
	sent, err := io.CopyBuffer(struct{ io.Writer }{w}, rd, *bp)
	if m := p.opts.Metrics; m != nil {
		m.BytesServed.WithLabelValues("upstream").Add(float64(sent))
	}
	if err != nil {
		// Headers promised the whole body: cut the connection so the client
		// sees a failed transfer, never a complete but wrong one.
		p.reg.log.Warn("mirrored blob transfer aborted", "repo", rt.name, "digest", d, "err", err)
		panic(http.ErrAbortHandler)
	}
	return nil
}

// linkShared links a blob Wharf already holds (fetched for another
// repository, or pushed) into mirrored repository t once upstream confirms,
// with a HEAD, that t has it: the same digest is the same bytes, so a layer
// shared by many images is downloaded once.
func (p *proxy) linkShared(ctx context.Context, t policy.Target, d digest.Digest) bool {
	if _, err := p.store.Blobs().Stat(d); err != nil {
		return false
	}
	if err := p.up.HasBlob(ctx, t.Registry, t.Remote, d); err != nil {
		return false
	}
	_, err := p.store.LinkExisting(t.Local, d)
	return err == nil
}

// blobError turns a failed fill into the client's error.
func blobError(err error) error {
	if errors.Is(err, upstream.ErrNotFound) || errors.Is(err, upstream.ErrDenied) {
		return fmt.Errorf("%w: %v", cache.ErrBlobUnknown, err)
	}
	return err
}

// fill returns the download in flight for blob d of t, starting one if
// there is none, and, when asked, a reader taken under the same lock (so
// the fill cannot be retired before the reader holds it). It returns a nil
// fill when the blob is already committed.
func (p *proxy) fill(ctx context.Context, t policy.Target, d digest.Digest, reader bool) (*cache.Fill, *cache.FillReader, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	key := t.Local + "@" + d.String()
	newReader := func(f *cache.Fill) *cache.FillReader {
		if !reader {
			return nil
		}
		return f.NewReader(ctx)
	}
	if f := p.fills[key]; f != nil {
		if reader {
			p.opts.Metrics.coalesced()
		}
		return f, newReader(f), nil
	}
	if _, err := p.store.StatBlob(t.Local, d); err == nil {
		return nil, nil, nil
	}
	f, err := p.store.NewFill(t.Local, d)
	if err != nil {
		return nil, nil, err
	}
	p.fills[key] = f
	p.wg.Add(1)
	go p.runFill(key, f, t)
	return f, newReader(f), nil
}

// runFill downloads one blob on a context no client owns, then commits it
// (verified) or discards it, and retires the fill.
func (p *proxy) runFill(key string, f *cache.Fill, t policy.Target) {
	defer p.wg.Done()
	ctx, cancel := context.WithTimeout(p.bg, p.opts.FillTimeout)
	defer cancel()
	start := time.Now()
	err := p.download(ctx, f, t)
	if err == nil {
		err = f.Finish()
	} else {
		f.Fail(err)
	}
	switch {
	case errors.Is(err, cache.ErrDigestMismatch) || errors.Is(err, cache.ErrSizeInvalid):
		p.opts.Metrics.digestFailed()
		p.reg.log.Error("upstream sent a corrupt blob: discarded, nothing cached", "repo", t.Local, "digest", f.Digest(), "err", err)
	case err != nil:
		p.reg.log.Warn("blob download from upstream failed", "repo", t.Local, "digest", f.Digest(), "err", err)
	default:
		p.reg.log.Debug("blob cached from upstream", "repo", t.Local, "digest", f.Digest(), "bytes", f.Written(), "took", time.Since(start))
	}
	p.mu.Lock()
	delete(p.fills, key)
	p.mu.Unlock()
	f.Retire()
}

// maxResumes bounds reconnections of one blob download.
const maxResumes = 5

// fillBatch is the least a download hands to its fill at once (but the last
// piece): fewer, larger writes mean fewer wake-ups and socket writes for
// the clients streaming it.
const fillBatch = 256 << 10

// download copies blob f.Digest() from upstream into f, resuming with a
// Range request (Seek) after a failed read, with backoff.
func (p *proxy) download(ctx context.Context, f *cache.Fill, t policy.Target) error {
	opened := time.Now()
	rc, size, err := p.up.Blob(ctx, t.Registry, t.Remote, f.Digest())
	p.opts.Metrics.upstream(t.Registry, "blob", err, time.Since(opened).Seconds())
	if err != nil {
		return err
	}
	defer rc.Close()
	f.Start(size)
	bp := blobBufs.Get().(*[]byte)
	defer blobBufs.Put(bp)
	buf := *bp
	resumes := 0
	for {
		// Gather at least fillBatch bytes per write: each write wakes every
		// reader, and each of their reads becomes a socket write.
		n, rerr := io.ReadAtLeast(rc, buf, fillBatch)
		if rerr == io.ErrUnexpectedEOF {
			rerr = io.EOF
		}
		if n > 0 {
			if _, err := f.Write(buf[:n]); err != nil {
				return err
			}
			if m := p.opts.Metrics; m != nil {
				m.UpstreamBytes.Add(float64(n))
			}
		}
		switch {
		case rerr == nil:
			continue
		case rerr == io.EOF && f.Written() == size:
			return nil
		case ctx.Err() != nil:
			return ctx.Err()
		case resumes == maxResumes:
			return fmt.Errorf("%w: %d resumes: %v", upstream.ErrUnavailable, resumes, rerr)
		}
		resumes++
		p.reg.log.Info("upstream blob transfer interrupted: resuming", "repo", t.Local, "digest", f.Digest(), "at", f.Written(), "err", rerr)
		select {
		case <-time.After(time.Duration(resumes*resumes) * 100 * time.Millisecond):
		case <-ctx.Done():
			return ctx.Err()
		}
		if _, err := rc.Seek(f.Written(), io.SeekStart); err != nil {
			return err
		}
	}
}

// prefetch downloads a manifest's blobs ahead of the client, a few at a
// time; the upstream client's semaphore bounds connections overall.
func (p *proxy) prefetch(t policy.Target, blobs []digest.Digest) {
	if p.opts.PrefetchParallel < 0 {
		return
	}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		var g errgroup.Group
		g.SetLimit(p.opts.PrefetchParallel)
		for _, d := range blobs {
			g.Go(func() error {
				if _, err := p.store.StatBlob(t.Local, d); err == nil || p.linkShared(p.bg, t, d) {
					return nil
				}
				p.opts.Metrics.prefetched()
				f, _, err := p.fill(p.bg, t, d, false)
				if f != nil && err == nil {
					f.Wait(p.bg)
				}
				return nil
			})
		}
		g.Wait()
	}()
}

// singleRange parses a Range header with one range against size. ok is
// false for several ranges or an unsatisfiable one.
func singleRange(h string, size int64) (start, n int64, partial, ok bool) {
	if h == "" {
		return 0, size, false, true
	}
	spec, found := strings.CutPrefix(h, "bytes=")
	if !found || strings.Contains(spec, ",") || size == 0 { // nothing in an empty blob is satisfiable
		return 0, 0, false, false
	}
	a, b, _ := strings.Cut(spec, "-")
	switch {
	case a == "": // suffix: the last b bytes
		k, err := strconv.ParseInt(b, 10, 64)
		if err != nil || k <= 0 {
			return 0, 0, false, false
		}
		k = min(k, size)
		return size - k, k, true, true
	default:
		s, err := strconv.ParseInt(a, 10, 64)
		if err != nil || s >= size {
			return 0, 0, false, false
		}
		e := size - 1
		if b != "" {
			if e, err = strconv.ParseInt(b, 10, 64); err != nil || e < s {
				return 0, 0, false, false
			}
			e = min(e, size-1)
		}
		return s, e - s + 1, true, true
	}
}

// prefetchPlatforms fetches the manifests (and so the blobs) of an index's
// entries for the configured platforms.
func (p *proxy) prefetchPlatforms(t policy.Target, index []byte) {
	var idx struct {
		Manifests []struct {
			Digest   digest.Digest
			Platform struct {
				OS           string `json:"os"`
				Architecture string `json:"architecture"`
				Variant      string `json:"variant"`
			}
		}
	}
	if json.Unmarshal(index, &idx) != nil {
		return
	}
	for _, m := range idx.Manifests {
		plat := m.Platform.OS + "/" + m.Platform.Architecture
		if !slices.Contains(p.opts.PrefetchPlatforms, plat) && !slices.Contains(p.opts.PrefetchPlatforms, plat+"/"+m.Platform.Variant) {
			continue
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			if _, err := p.manifest(p.bg, t, m.Digest.String()); err != nil {
				p.reg.log.Warn("platform prefetch failed", "repo", t.Local, "digest", m.Digest, "err", err)
			}
		}()
	}
}
