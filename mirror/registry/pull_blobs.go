package registry

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/wharf-registry/wharf/cache"
	"github.com/wharf-registry/wharf/mirror/cluster"
	"github.com/wharf-registry/wharf/policy"
	"github.com/wharf-registry/wharf/upstream"
)

// blob serves a mirrored blob: from the cache, or streamed from the
// store's download in flight, which this request starts if none is.
func (p *puller) blob(w http.ResponseWriter, r *http.Request, q *request) error {
	if p.opts.Offline {
		p.opts.Metrics.cache("blob", "hit")
		return p.reg.getBlob(w, r, q)
	}
	if err := p.refused(q); err != nil {
		// Upstream would not be asked: what is here is still served.
		if _, serr := p.store.StatBlob(q.repo, q.digest); serr == nil {
			p.opts.Metrics.cache("blob", "hit")
			return p.reg.getBlob(w, r, q)
		}
		if isMiss(err) {
			p.opts.Metrics.rememberedMiss()
		}
		return err
	}
	// Fills.Get answers a warm hit with no reader, without its lock.
	src := p.source(q.target, q.digest, 0)
	if p.reg.node != nil && cluster.IsServedHere(r.Context()) {
		src = p.upstreamSource(q.target, q.digest, 0) // this node owns the download
	}
	rd, shared, err := p.fills.Get(r.Context(), q.repo, cache.Origin{Registry: q.target.Registry}, q.digest, src)
	if err != nil {
		return err
	}
	if rd == nil { // here, held for another repository, or committed meanwhile
		p.opts.Metrics.cache("blob", "hit")
		return p.reg.getBlob(w, r, q)
	}
	defer rd.Close()
	if shared {
		p.opts.Metrics.coalesced()
	}
	p.opts.Metrics.cache("blob", "miss")
	size, err := rd.Size(r.Context())
	if err != nil {
		return err
	}
	if r.Header.Get("Range") != "" {
		// A range is answered once the whole blob is verified and stored:
		// the hold-back protects only a whole body's end, and any range can
		// be a complete response.
		if err := rd.Wait(r.Context()); err != nil {
			return err
		}
		return p.reg.getBlob(w, r, q)
	}
	streaming := func() {
		h := w.Header()
		setBlobHeaders(h, q.digest)
		h.Del("Cache-Control") // immutable only once stored: these bytes are still arriving
		h.Set("Content-Length", strconv.FormatInt(size, 10))
		w.WriteHeader(http.StatusOK)
	}
	if r.Method == http.MethodHead {
		streaming()
		return nil
	}
	// The status waits for the first bytes: a download that fails before
	// any (a small blob is held back whole until verified) is answered
	// with its error, not with a 200 and a cut connection.
	if err := rd.Ready(); err != nil && !(errors.Is(err, io.EOF) && size == 0) {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return err
	}
	streaming()
	sent, err := p.reg.copyToClient(w, r, rd)
	if m := p.opts.Metrics; m != nil {
		m.BytesServed.WithLabelValues("upstream").Add(float64(sent))
	}
	if err != nil {
		// Headers promised the whole body: cut the connection so the client
		// sees a failed transfer, never a complete but wrong one.
		p.reg.log.Warn("mirrored blob transfer aborted", "repo", q.repo, "digest", q.digest, "err", err)
		panic(http.ErrAbortHandler)
	}
	return nil
}

// probeBlob answers HEAD of a mirrored blob. Push clients probe a new
// repository's blobs with HEAD before uploading (pulls use GET; containerd
// sends ?ns=): unless the request named its registry, such a HEAD is
// answered from what is here and never goes upstream. A blob a cached
// manifest of the repository references is known all the same (a client
// that fetched the manifest checks its layers, as copy tools and zot's zb
// do): its size is the manifest's descriptor's.
func (p *puller) probeBlob(w http.ResponseWriter, r *http.Request, q *request) error {
	if q.target.Named {
		return p.blob(w, r, q)
	}
	err := p.reg.getBlob(w, r, q)
	if !errors.Is(err, cache.ErrBlobUnknown) {
		return err
	}
	size, ok, lerr := p.store.ReferencedBlob(q.repo, q.digest)
	if lerr != nil || !ok {
		return err
	}
	setBlobHeaders(w.Header(), q.digest)
	w.Header().Set("Content-Length", strconv.FormatInt(size, 10))
	w.WriteHeader(http.StatusOK)
	return nil
}

// refused is why upstream is not asked for q's blob now: its registry is
// not on the allow-list, or upstream said it has no such blob within
// MissTTL.
func (p *puller) refused(q *request) error {
	if err := p.allowed(q); err != nil {
		return err
	}
	return p.misses.get(q.target.Registry, q.target.Local, q.digest.String())
}

// source tells the store's download where blob d of t comes from: one GET
// (with Range when resumed at an offset after a failure), and a HEAD confirming that t has
// it when the bytes are already here for another repository.
//
// In a cluster, a node that does not own d's download fills from the node
// that does (package cluster). order is d's place in what clients will
// read next (upstream.WithOrder): its index in a prefetched manifest, 0
// for a client's own request.
func (p *puller) source(t policy.Target, d digest.Digest, order int) cache.BlobSource {
	up := p.upstreamSource(t, d, order)
	if p.reg.node != nil {
		return p.reg.node.BlobSource(t.Local, d, up)
	}
	return up
}

// upstreamSource downloads blob d of t from its upstream registry, in line
// for segments at order.
func (p *puller) upstreamSource(t policy.Target, d digest.Digest, order int) cache.BlobSource {
	return cache.BlobSource{
		Open: func(ctx context.Context, offset int64) (io.ReadCloser, int64, error) {
			start := time.Now()
			rc, size, err := p.up.Blob(upstream.WithOrder(ctx, order), t.Registry, t.Remote, d, offset)
			p.opts.Metrics.upstream(t.Registry, "blob", err, time.Since(start).Seconds())
			if err != nil {
				p.misses.note(t.Registry, t.Local, d.String(), err)
				return nil, 0, err
			}
			return rc, size, nil
		},
		Confirm: func(ctx context.Context) error {
			return p.up.HasBlob(ctx, t.Registry, t.Remote, d)
		},
	}
}

// prefetch downloads a manifest's blobs ahead of the client, a few at a
// time; the upstream client's semaphore bounds connections overall.
func (p *puller) prefetch(t policy.Target, blobs []digest.Digest) {
	if p.opts.PrefetchParallel < 0 {
		return
	}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		p.fetchBlobs(p.bg, t, blobs, p.opts.PrefetchParallel)
	}()
}

// prefetchNarrow is how many blobs of one manifest are fetched at once
// while more at once would not make them arrive sooner (upstream's
// ParallelHelps): one, in the manifest's order, which is the order clients
// ask for them in, so that the blob a client waits for is not slowed by
// others and the next one is ready when it asks. Measured side by side on
// an unshaped loopback upstream (skopeo, 2 cores): one at a time was
// faster than two in 15 of 20 paired rounds, and than none (the client's
// request alone) in 6 of 10 (2 ties).
const prefetchNarrow = 1

// prefetchLook is how often a prefetch held back at prefetchNarrow asks
// upstream again whether it may go wider.
const prefetchLook = 100 * time.Millisecond

// fetchBlobs downloads the blobs the store lacks, in order, up to
// parallel at a time (prefetchNarrow while upstream says more would not
// help; asked again at each start and every prefetchLook), and waits for
// them (a download another request started is waited for, not repeated).
func (p *puller) fetchBlobs(ctx context.Context, t policy.Target, blobs []digest.Digest, parallel int) {
	parallel = max(parallel, 1)
	// narrow: more at once would not help, the link is fast and each
	// download's copying and hashing is what limits it: that work is done
	// in the background, with what the clients leave of the machine.
	width := func() (n int, narrow bool) {
		if parallel > prefetchNarrow && !p.up.ParallelHelps(t.Registry) {
			return prefetchNarrow, true
		}
		return parallel, false
	}
	ended := make(chan struct{}, len(blobs))
	var wg sync.WaitGroup
	defer wg.Wait()
	running := 0
	for i, d := range blobs {
		n, narrow := width()
		for ; running >= n; n, narrow = width() {
			select {
			case <-ended:
				running--
			case <-time.After(prefetchLook):
			case <-ctx.Done():
				return
			}
		}
		running++
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.fetchBlob(ctx, t, d, i, narrow, func() { ended <- struct{}{} })
		}()
	}
}

// fetchBlob downloads blob d of t (in line at order; in the background,
// cache.BlobSource.Background, when asked) unless the store has it, and
// waits for the download (its own or another request's) to be stored. It
// calls arrived (once) as soon as the bytes are all here and verified: the
// next download need not wait for this one's commit.
func (p *puller) fetchBlob(ctx context.Context, t policy.Target, d digest.Digest, order int, background bool, arrived func()) {
	arrived = sync.OnceFunc(arrived)
	defer arrived()
	if _, err := p.store.StatBlob(t.Local, d); err == nil {
		return
	}
	src := p.source(t, d, order)
	src.Background = background
	rd, shared, err := p.fills.Get(ctx, t.Local, cache.MirroredFrom(t.Registry), d, src)
	if err != nil || rd == nil {
		return
	}
	defer rd.Close()
	if !shared {
		p.opts.Metrics.prefetched()
	}
	if rd.Verified(ctx) == nil {
		arrived()
	}
	rd.Wait(ctx)
}

// prefetchPlatforms fetches the manifests (and so the blobs) of an index's
// entries for the configured platforms.
func (p *puller) prefetchPlatforms(t policy.Target, mediaType string, index []byte) {
	info, err := cache.ParseManifest(mediaType, index)
	if err != nil {
		return
	}
	for _, m := range info.Manifests {
		if m.Platform == nil || !p.platforms.Match(*m.Platform) {
			continue
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			if _, err := p.lookup(p.bg, t, reference{digest: m.Digest}); err != nil {
				p.reg.log.Warn("platform prefetch failed", "repo", t.Local, "digest", m.Digest, "err", err)
			}
		}()
	}
}
