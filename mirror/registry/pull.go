package registry

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containerd/platforms"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/singleflight"

	"github.com/wharf-registry/wharf/cache"
	"github.com/wharf-registry/wharf/policy"
	"github.com/wharf-registry/wharf/upstream"
)

// Upstream is what the pull-through mirror needs from upstream registries;
// *upstream.Client provides it.
type Upstream interface {
	Allowed(registry string) bool
	Resolve(ctx context.Context, registry, repo, ref string) (upstream.Descriptor, error)
	Manifest(ctx context.Context, registry, repo string, desc upstream.Descriptor, maxSize int64) ([]byte, error)
	Blob(ctx context.Context, registry, repo string, d digest.Digest, offset int64) (io.ReadCloser, int64, error)
	HasBlob(ctx context.Context, registry, repo string, d digest.Digest) error
	Tags(ctx context.Context, registry, repo string) ([]string, error)
	Referrers(ctx context.Context, registry, repo string, d digest.Digest) ([]upstream.Descriptor, error)
	// BytesReceived counts the blob bytes received so far (the metrics
	// read it).
	BytesReceived() int64
	// ParallelHelps reports whether fetching several of the registry's
	// blobs at once makes them arrive sooner (a link that caps each
	// connection), rather than dividing one bottleneck among them.
	ParallelHelps(registry string) bool
}

var _ Upstream = (*upstream.Client)(nil)

// puller is the pull-through mirror: it answers reads of mirrored
// repositories from the cache and fills the cache from upstream on a miss.
// Blob downloads are the store's (cache.Fills); the puller tells them where
// the bytes come from.
type puller struct {
	reg   *Registry
	store *cache.Store
	up    Upstream
	opts  Options
	fills *cache.Fills
	// platforms are Options.PrefetchPlatforms, matched as containerd does.
	platforms platforms.MatchComparer

	manifests singleflight.Group  // one upstream manifest fetch per repo and reference
	misses    *misses             // what upstream said it has not, for MissTTL
	checked   checkedTags         // revalidations the store could not record (disk full)
	unstored  memo[cache.Listing] // upstream listings the store could not keep (listings.go)

	bg     context.Context // owned by no client; cancelled by close
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

func newPuller(reg *Registry) *puller {
	o := &reg.opts
	if o.TagTTL <= 0 {
		o.TagTTL = 10 * time.Minute
	}
	if o.PrefetchParallel == 0 {
		o.PrefetchParallel = 16
	}
	if o.MissTTL == 0 {
		o.MissTTL = time.Minute
	}
	p := &puller{reg: reg, store: reg.store, up: o.Upstream, opts: *o, platforms: platforms.Any(), misses: newMisses(o.MissTTL)}
	p.unstored.limit = memListingsMax
	var ps []ocispec.Platform
	for _, s := range o.PrefetchPlatforms {
		if pl, err := platforms.Parse(s); err == nil {
			ps = append(ps, pl)
		} else {
			reg.log.Warn("ignoring a prefetch platform", "platform", s, "err", err)
		}
	}
	p.platforms = platforms.Any(ps...)
	p.fills = reg.store.NewFills(cache.FillsOptions{Timeout: o.FillTimeout, Logger: reg.log, MakeRoom: o.MakeRoom})
	o.Metrics.countDiscarded(p.fills.Discarded)
	p.bg, p.cancel = context.WithCancel(context.Background())
	return p
}

func (p *puller) close() {
	p.cancel()
	p.wg.Wait()
	p.fills.Close()
}

// allowed refuses registries that are not configured upstreams.
func (p *puller) allowed(q *request) error {
	if !q.allowed {
		return fmt.Errorf("%s: %w", q.target.Registry, upstream.ErrNotAllowed)
	}
	return nil
}

// manifest serves GET and HEAD of a mirrored manifest.
func (p *puller) manifest(w http.ResponseWriter, r *http.Request, q *request) error {
	if err := p.allowed(q); err != nil {
		return err
	}
	m, err := p.lookup(r.Context(), q.target, q.ref)
	if err != nil {
		return err
	}
	return writeManifest(w, r, m)
}

// lookup returns manifest ref of mirrored repository t: from the cache
// while fresh (tags) or forever (digests), revalidated with a HEAD when a
// tag is older than the TTL, fetched on a miss. When upstream cannot be
// reached, cached tags are served however old.
func (p *puller) lookup(ctx context.Context, t policy.Target, ref reference) (*cache.Manifest, error) {
	p.store.Touch(t.Local, ref.String()) // for LRU eviction: a map update, flushed in batches
	if ref.isDigest() {
		if m, err := p.store.GetManifest(t.Local, ref.String()); err == nil || !errors.Is(err, cache.ErrManifestUnknown) {
			if err == nil {
				p.opts.Metrics.cache("manifest", "hit")
			}
			return m, err
		}
		if p.opts.Offline {
			return nil, cache.ErrManifestUnknown
		}
		if m, ok, err := p.viaOwner(ctx, t, ref); ok {
			return m, err
		}
		return p.fetchManifest(ctx, t, ref, upstream.Descriptor{Digest: ref.digest})
	}
	d, checked, err := p.tagInfo(t.Local, ref.tag)
	if errors.Is(err, cache.ErrManifestUnknown) {
		if p.opts.Offline {
			return nil, err
		}
		if m, ok, err := p.viaOwner(ctx, t, ref); ok {
			return m, err
		}
		return p.fetchManifest(ctx, t, ref, upstream.Descriptor{})
	} else if err != nil {
		return nil, err
	}
	if p.opts.Offline || time.Since(checked) < p.opts.TagTTL {
		p.opts.Metrics.cache("manifest", "hit")
		return p.store.GetManifest(t.Local, d.String())
	}
	if m, ok, err := p.viaOwner(ctx, t, ref); ok && (err == nil || errors.Is(err, cache.ErrManifestUnknown)) {
		if err == nil {
			p.opts.Metrics.cache("manifest", "hit")
		}
		return m, err
	}
	desc, err := p.resolveOnce(ctx, t, ref.tag, d)
	switch {
	case err == nil && desc.Digest == d:
		p.opts.Metrics.cache("manifest", "hit")
		return p.store.GetManifest(t.Local, d.String())
	case err == nil:
		m, err := p.fetchManifest(ctx, t, ref, desc)
		if err != nil && cannotWrite(err) {
			// Read-only serving: the tag moved upstream, but its new
			// manifest cannot be stored. The cached one is still an image
			// upstream had; clients get it until there is room.
			p.reg.logLimited("mirror: storage refuses writes: serving the cached tag, not the one upstream moved to",
				"repo", t.Local, "tag", ref.tag, "cached", d, "upstream", desc.Digest, "err", err)
			p.checked.set(t.Local, ref.tag, d, time.Now())
			p.opts.Metrics.cache("manifest", "hit")
			return p.store.GetManifest(t.Local, d.String())
		}
		return m, err
	case errors.Is(err, upstream.ErrNotFound):
		return nil, err
	}
	p.reg.log.Warn("upstream unreachable: serving the cached tag", "repo", t.Local, "tag", ref.tag, "checked", checked, "err", err)
	p.opts.Metrics.cache("manifest", "hit")
	return p.store.GetManifest(t.Local, d.String())
}

// resolveOnce revalidates a tag with one HEAD however many clients ask;
// when upstream still has it at cached, the tag's check time is renewed
// before the flight ends, so that a client arriving just after it finds
// the tag fresh (on a cluster, the index write takes a round trip).
func (p *puller) resolveOnce(ctx context.Context, t policy.Target, tag string, cached digest.Digest) (upstream.Descriptor, error) {
	if err := p.misses.get(t.Registry, t.Local, tag); err != nil {
		p.opts.Metrics.rememberedMiss()
		return upstream.Descriptor{}, err
	}
	ch := p.manifests.DoChan("HEAD "+t.Local+":"+tag, func() (any, error) {
		// A client that found the tag stale just before another flight
		// renewed it starts this one after that flight ended: the tag is
		// fresh now, and upstream is not asked twice.
		if d, checked, err := p.tagInfo(t.Local, tag); err == nil && d == cached && time.Since(checked) < p.opts.TagTTL {
			return upstream.Descriptor{Digest: cached}, nil
		}
		hctx, cancel := context.WithTimeout(p.bg, time.Minute)
		defer cancel()
		start := time.Now()
		desc, err := p.up.Resolve(hctx, t.Registry, t.Remote, tag)
		p.opts.Metrics.upstream(t.Registry, "resolve", err, time.Since(start).Seconds())
		if err != nil {
			p.misses.note(t.Registry, t.Local, tag, err)
		} else if desc.Digest == cached {
			now := time.Now()
			if err := p.store.TouchTag(t.Local, t.Registry, tag, cached, now); err != nil {
				if !cannotWrite(err) {
					return upstream.Descriptor{}, err
				}
				// Bookkeeping only: the tag is still right. Kept in memory
				// so that the next requests within the TTL ask no one.
				p.reg.logLimited("mirror: storage refuses writes: a revalidated tag's check time is kept in memory",
					"repo", t.Local, "tag", tag, "err", err)
				p.checked.set(t.Local, tag, cached, now)
			} else {
				p.checked.drop(t.Local, tag)
			}
		}
		return desc, err
	})
	select {
	case res := <-ch:
		if res.Err != nil {
			return upstream.Descriptor{}, res.Err
		}
		return res.Val.(upstream.Descriptor), nil
	case <-ctx.Done():
		return upstream.Descriptor{}, ctx.Err()
	}
}

// fetchManifest downloads ref once however many clients ask (the flight
// runs on a context no client owns), stores it and starts prefetching its
// blobs. desc is what is already known of it.
func (p *puller) fetchManifest(ctx context.Context, t policy.Target, ref reference, desc upstream.Descriptor) (*cache.Manifest, error) {
	if err := p.misses.get(t.Registry, t.Local, ref.String()); err != nil {
		p.opts.Metrics.rememberedMiss()
		return nil, err
	}
	ch := p.manifests.DoChan(t.Local+"@"+ref.String(), func() (any, error) {
		m, err := p.fetchManifestFlight(t, ref, desc)
		p.misses.note(t.Registry, t.Local, ref.String(), err)
		return m, err
	})
	p.opts.Metrics.cache("manifest", "miss")
	select {
	case res := <-ch:
		if res.Shared {
			p.opts.Metrics.coalesced()
		}
		if res.Err != nil {
			return nil, res.Err
		}
		return res.Val.(*cache.Manifest), nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// fetchManifestFlight is the one download of fetchManifest.
func (p *puller) fetchManifestFlight(t policy.Target, ref reference, desc upstream.Descriptor) (*cache.Manifest, error) {
	fctx, cancel := context.WithTimeout(p.bg, 2*time.Minute)
	defer cancel()
	if desc.MediaType == "" {
		var err error
		start := time.Now()
		desc, err = p.up.Resolve(fctx, t.Registry, t.Remote, ref.String())
		p.opts.Metrics.upstream(t.Registry, "resolve", err, time.Since(start).Seconds())
		if err != nil {
			return nil, err
		}
	}
	if ref.isDigest() && desc.Digest != ref.digest {
		return nil, fmt.Errorf("%w: asked for %s, upstream resolved %s", upstream.ErrInvalid, ref, desc.Digest)
	}
	start := time.Now()
	body, err := p.up.Manifest(fctx, t.Registry, t.Remote, desc, cache.MaxManifestSize)
	p.opts.Metrics.upstream(t.Registry, "manifest", err, time.Since(start).Seconds())
	if err != nil {
		return nil, err
	}
	m, err := p.store.PutMirroredManifest(t.Local, t.Registry, desc.Digest, ref.tag, desc.MediaType, body, time.Now())
	if err != nil {
		return nil, err
	}
	if !cache.IsIndex(m.MediaType) {
		p.prefetch(t, m.Refs)
	} else if len(p.opts.PrefetchPlatforms) > 0 {
		p.prefetchPlatforms(t, m.MediaType, body)
	}
	return m, nil
}

// tagInfo is the store's TagInfo, with a check time kept in memory when
// the store could not record it (checkedTags) when that is later.
func (p *puller) tagInfo(repo, tag string) (digest.Digest, time.Time, error) {
	d, checked, err := p.store.TagInfo(repo, tag)
	if err == nil {
		if at, ok := p.checked.get(repo, tag, d); ok && at.After(checked) {
			checked = at
		}
	}
	return d, checked, err
}

// cannotWrite reports a write the store refused for want of room or of
// its index: reads still work, so a read that only wanted to record
// something goes on without it.
func cannotWrite(err error) bool {
	return errors.Is(err, cache.ErrStorageFull) || errors.Is(err, cache.ErrIndexUnavailable)
}

// checkedTags remembers, in memory, when mirrored tags were last
// revalidated while the store could not record it: tag → (digest, time).
type checkedTags struct{ memo[checkedTag] }

type checkedTag struct {
	d  digest.Digest
	at time.Time
}

func (c *checkedTags) get(repo, tag string, d digest.Digest) (time.Time, bool) {
	e, ok := c.memo.get(repo + "\x00" + tag)
	return e.at, ok && e.d == d
}

func (c *checkedTags) set(repo, tag string, d digest.Digest, at time.Time) {
	c.memo.set(repo+"\x00"+tag, checkedTag{d: d, at: at})
}

func (c *checkedTags) drop(repo, tag string) { c.memo.drop(repo + "\x00" + tag) }

// memo holds, in memory, what the store could not record (a full disk,
// an unreachable etcd, a value too big for it). Past memoMax entries the
// oldest knowledge is dropped whole (and asked upstream again). With no
// entries (a store that records everything) get takes no lock.
type memo[V any] struct {
	limit int // entries kept; 0: memoMax
	n     atomic.Int64
	mu    sync.Mutex
	m     map[string]V
}

const memoMax = 100000

func (c *memo[V]) get(k string) (V, bool) {
	var zero V
	if c.n.Load() == 0 {
		return zero, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	v, ok := c.m[k]
	return v, ok
}

func (c *memo[V]) set(k string, v V) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if limit := cmp.Or(c.limit, memoMax); c.m == nil || len(c.m) >= limit {
		c.m = map[string]V{}
	}
	c.m[k] = v
	c.n.Store(int64(len(c.m)))
}

func (c *memo[V]) drop(k string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.m, k)
	c.n.Store(int64(len(c.m)))
}

// viaOwner is the cluster's answer for manifest ref of t (its owner's):
// ok is false on a single box, when this node owns ref, or when the owner
// failed — then this node asks upstream itself.
func (p *puller) viaOwner(ctx context.Context, t policy.Target, ref reference) (*cache.Manifest, bool, error) {
	if p.reg.node == nil {
		return nil, false, nil
	}
	return p.reg.node.ViaOwner(ctx, t.Local, ref.String())
}
