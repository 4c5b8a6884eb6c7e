package mirror

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sync/singleflight"

	"github.com/wharf-registry/wharf/cache"
	"github.com/wharf-registry/wharf/policy"
	"github.com/wharf-registry/wharf/upstream"
)

// proxy is the pull-through mirror: it decides per request whether a name
// is private or mirrored, answers mirrored reads from the cache, and fills
// the cache from upstream on a miss.
type proxy struct {
	reg   *Registry
	store Store
	up    Upstream
	opts  Options

	mu    sync.Mutex             // guards fills, and the hand-over from fill to cache
	fills map[string]*cache.Fill // "<local repo>@<digest>" → download in flight

	manifests singleflight.Group // one upstream manifest fetch per repo and reference

	bg     context.Context // owned by no client; cancelled by close
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

func newProxy(reg *Registry) *proxy {
	o := &reg.opts
	if o.TagTTL <= 0 {
		o.TagTTL = 10 * time.Minute
	}
	if o.PrefetchParallel == 0 {
		o.PrefetchParallel = 8
	}
	if o.FillTimeout <= 0 {
		o.FillTimeout = time.Hour
	}
	p := &proxy{reg: reg, store: reg.store, up: o.Upstream, opts: *o, fills: map[string]*cache.Fill{}}
	p.bg, p.cancel = context.WithCancel(context.Background())
	return p
}

func (p *proxy) close() {
	p.cancel()
	p.wg.Wait()
}

func isWrite(method string) bool { return method != http.MethodGet && method != http.MethodHead }

// serve routes one request: writes and private names go to the registry
// handlers, mirrored reads to the cache and upstream.
func (p *proxy) serve(w http.ResponseWriter, r *http.Request, rt route, h handlerFunc) error {
	ns := r.URL.Query().Get("ns")
	if a := actionOf(rt, r.Method); a != policy.Pull {
		if err := p.checkPush(r, rt.name, ns, a); err != nil {
			return err
		}
		if err := p.reg.authorize(r, rt.name, a, false); err != nil {
			return err
		}
		return h(w, r, rt)
	}
	t, mirrored, err := p.route(rt.name, ns)
	if err != nil {
		return err
	}
	private := func() error {
		if err := p.reg.authorize(r, rt.name, policy.Pull, false); err != nil {
			return err
		}
		return h(w, r, rt)
	}
	if !mirrored {
		return private()
	}
	local := rt
	local.name = t.Local
	if err := p.reg.authorize(r, t.Local, policy.Pull, true); err != nil {
		return err
	}
	if r.Method == http.MethodHead && ns == "" && !policy.HasRegistryPrefix(rt.name) {
		// Push clients probe a new repository's blobs with HEAD before
		// uploading (pulls use GET, containerd sends ?ns=): such a HEAD is
		// answered from what is here (the mirrored copy, or nothing) and
		// never goes upstream.
		if held, err := p.store.HasRepository(t.Local); err != nil || !held {
			return h(w, r, rt)
		}
		return h(w, r, local)
	}
	if !p.up.Allowed(t.Registry) {
		return fmt.Errorf("%s: %w", t.Registry, upstream.ErrNotAllowed)
	}
	if ns != "" {
		w.Header().Set("OCI-Namespace", ns)
	}
	switch rt.kind {
	case routeManifest:
		m, err := p.manifest(r.Context(), t, rt.ref)
		if err != nil {
			return err
		}
		return writeManifest(w, r, m)
	case routeBlob:
		return p.blob(w, r, local, t)
	}
	return h(w, r, local) // tags and referrers: what the cache holds
}

// route decides whether a read of name is mirrored. Names with a registry
// host or ?ns= always are; other names are private once something was
// pushed to them, mirrored from Docker Hub otherwise.
func (p *proxy) route(name, ns string) (policy.Target, bool, error) {
	t := policy.Mirror(name, ns)
	if ns != "" || policy.HasRegistryPrefix(name) {
		return t, true, nil
	}
	private, err := p.store.HasRepository(name)
	return t, !private, err
}

// checkPush refuses writes that would overwrite or shadow mirrored names:
// registry-prefixed or ?ns= names, Docker Hub's library/ namespace, and any
// name whose mirrored copy holds content — unless a rule explicitly grants
// the caller that action on that name.
func (p *proxy) checkPush(r *http.Request, name, ns string, a policy.Action) error {
	var why string
	t := policy.Mirror(name, "")
	switch {
	case ns != "" || policy.HasRegistryPrefix(name):
		why = "names another registry's content"
	case strings.HasPrefix(t.Remote, "library/") && t.Registry == upstream.DockerHub:
		why = "is in Docker Hub's library/ namespace"
	default:
		if held, err := p.store.HasRepository(t.Local); err != nil {
			return err
		} else if held {
			why = "holds content mirrored from " + t.Registry
		}
	}
	if why == "" || (ns == "" && p.reg.policy().Explicit(callerOf(r).Subject, name, a)) {
		return nil
	}
	p.reg.audit(r, "denied", slog.String("repo", name), slog.String("action", string(a)), slog.String("reason", "mirrored name"))
	return apiErr(codeDenied, "%s %s; a push may not shadow it unless a rule allows it", name, why)
}

// manifest returns manifest ref of mirrored repository t: from the cache
// while fresh (tags) or forever (digests), revalidated with a HEAD when a
// tag is older than the TTL, fetched on a miss. When upstream cannot be
// reached, cached tags are served however old.
func (p *proxy) manifest(ctx context.Context, t policy.Target, ref string) (*cache.Manifest, error) {
	p.store.Touch(t.Local, ref) // for LRU eviction: a map update, flushed in batches
	if strings.Contains(ref, ":") {
		if m, err := p.store.GetManifest(t.Local, ref); err == nil || !errors.Is(err, cache.ErrManifestUnknown) {
			if err == nil {
				p.opts.Metrics.cache("manifest", "hit")
			}
			return m, err
		}
		if p.opts.Offline {
			return nil, cache.ErrManifestUnknown
		}
		return p.fetchManifest(ctx, t, ref, upstream.Descriptor{Digest: digest.Digest(ref)})
	}
	d, checked, err := p.store.TagInfo(t.Local, ref)
	if errors.Is(err, cache.ErrManifestUnknown) {
		if p.opts.Offline {
			return nil, err
		}
		return p.fetchManifest(ctx, t, ref, upstream.Descriptor{})
	} else if err != nil {
		return nil, err
	}
	if p.opts.Offline || time.Since(checked) < p.opts.TagTTL {
		p.opts.Metrics.cache("manifest", "hit")
		return p.store.GetManifest(t.Local, d.String())
	}
	desc, err := p.resolveOnce(ctx, t, ref)
	switch {
	case err == nil && desc.Digest == d:
		if err := p.store.TouchTag(t.Local, ref, d, time.Now()); err != nil {
			return nil, err
		}
		p.opts.Metrics.cache("manifest", "hit")
		return p.store.GetManifest(t.Local, d.String())
	case err == nil:
		return p.fetchManifest(ctx, t, ref, desc)
	case errors.Is(err, upstream.ErrNotFound):
		return nil, fmt.Errorf("%w: %v", cache.ErrManifestUnknown, err)
	}
	p.reg.log.Warn("upstream unreachable: serving the cached tag", "repo", t.Local, "tag", ref, "checked", checked, "err", err)
	p.opts.Metrics.cache("manifest", "hit")
	return p.store.GetManifest(t.Local, d.String())
}

// resolveOnce revalidates a tag with one HEAD however many clients ask.
func (p *proxy) resolveOnce(ctx context.Context, t policy.Target, ref string) (upstream.Descriptor, error) {
	ch := p.manifests.DoChan("HEAD "+t.Local+":"+ref, func() (any, error) {
		hctx, cancel := context.WithTimeout(p.bg, time.Minute)
		defer cancel()
		start := time.Now()
		desc, err := p.up.Resolve(hctx, t.Registry, t.Remote, ref)
		p.opts.Metrics.upstream(t.Registry, "resolve", err, time.Since(start).Seconds())
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
func (p *proxy) fetchManifest(ctx context.Context, t policy.Target, ref string, desc upstream.Descriptor) (*cache.Manifest, error) {
	ch := p.manifests.DoChan(t.Local+"@"+ref, func() (any, error) {
		fctx, cancel := context.WithTimeout(p.bg, 2*time.Minute)
		defer cancel()
		if desc.MediaType == "" {
			var err error
			start := time.Now()
			desc, err = p.up.Resolve(fctx, t.Registry, t.Remote, ref)
			p.opts.Metrics.upstream(t.Registry, "resolve", err, time.Since(start).Seconds())
			if err != nil {
				return nil, err
			}
		}
		if strings.Contains(ref, ":") && desc.Digest.String() != ref {
			return nil, fmt.Errorf("%w: asked for %s, upstream resolved %s", upstream.ErrInvalid, ref, desc.Digest)
		}
		start := time.Now()
		body, err := p.up.Manifest(fctx, t.Registry, t.Remote, desc, cache.MaxManifestSize)
		p.opts.Metrics.upstream(t.Registry, "manifest", err, time.Since(start).Seconds())
		if err != nil {
			return nil, err
		}
		tag := ""
		if !strings.Contains(ref, ":") {
			tag = ref
		}
		m, err := p.store.PutMirroredManifest(t.Local, desc.Digest, tag, desc.MediaType, body, time.Now())
		if err != nil {
			return nil, err
		}
		if !cache.IsIndex(m.MediaType) {
			p.prefetch(t, m.Refs)
		} else if len(p.opts.PrefetchPlatforms) > 0 {
			p.prefetchPlatforms(t, body)
		}
		return m, nil
	})
	p.opts.Metrics.cache("manifest", "miss")
	select {
	case res := <-ch:
		if res.Shared {
			p.opts.Metrics.coalesced()
		}
		if res.Err != nil {
			if errors.Is(res.Err, upstream.ErrNotFound) || errors.Is(res.Err, upstream.ErrDenied) {
				return nil, fmt.Errorf("%w: %v", cache.ErrManifestUnknown, res.Err)
			}
			return nil, res.Err
		}
		return res.Val.(*cache.Manifest), nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}
