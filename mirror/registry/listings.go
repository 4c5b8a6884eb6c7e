package registry

import (
	"context"
	"net/http"
	"sort"
	"time"

	"github.com/wharf-registry/wharf/cache"
	"github.com/wharf-registry/wharf/policy"
)

// What a mirrored repository lists is upstream's answer: its tags (for
// `docker pull -a`, `crane ls`, helm without --version, tag-watching bots)
// and the referrers of its images (signatures, SBOMs). Each listing is
// asked upstream once per tag TTL however many clients ask (one flight),
// kept in the index, and served stale while upstream is down, rate
// limited or --offline. Upstream's "no such repository" is remembered for
// the TTL too.

// tags serves tags/list of a mirrored repository.
func (p *puller) tags(w http.ResponseWriter, r *http.Request, q *request) error {
	if err := p.allowed(q); err != nil {
		return err
	}
	n, last, err := pageParams(r, -1)
	if err != nil {
		return err
	}
	t := q.target
	l, err := p.listing(r.Context(), t, cache.TagsListing, func(ctx context.Context) (cache.Listing, error) {
		tags, err := p.up.Tags(ctx, t.Registry, t.Remote)
		return cache.Listing{Tags: tags}, err
	})
	if err != nil { // upstream's "no such name" is a Missing listing, not an error
		if _, known := p.store.Origin(t.Local); known {
			// Never listed and upstream cannot say: what the cache holds.
			p.reg.logLimited("mirror: upstream cannot list tags: serving the cached ones", "repo", t.Local, "err", err)
			return p.reg.tags(w, r, q)
		}
		return err
	}
	if l.Missing {
		return cache.ErrNameUnknown
	}
	tags := l.Tags // sorted (upstream.Client.Tags)
	if last != "" {
		tags = tags[sort.SearchStrings(tags, last):]
		if len(tags) > 0 && tags[0] == last {
			tags = tags[1:]
		}
	}
	if tags == nil {
		tags = []string{}
	}
	if n >= 0 && len(tags) > n {
		tags = tags[:n]
		if n > 0 {
			setNextLink(w, "/v2/"+q.name+"/tags/list", n, tags[n-1])
		}
	}
	return writeJSON(w, r, "application/json", map[string]any{"name": q.name, "tags": tags})
}

// referrers serves the referrers API for a manifest of a mirrored
// repository: upstream's referrers (its API, or its referrers tag).
func (p *puller) referrers(w http.ResponseWriter, r *http.Request, q *request) error {
	if err := p.allowed(q); err != nil {
		return err
	}
	t, d := q.target, q.digest
	l, err := p.listing(r.Context(), t, cache.ReferrersListing(d), func(ctx context.Context) (cache.Listing, error) {
		refs, err := p.up.Referrers(ctx, t.Registry, t.Remote, d)
		return cache.Listing{Referrers: refs}, err
	})
	if err != nil { // a missing name is a Missing listing: no referrers
		if _, known := p.store.Origin(t.Local); known {
			p.reg.logLimited("mirror: upstream cannot list referrers: serving the cached ones", "repo", t.Local, "digest", d, "err", err)
			return p.reg.referrers(w, r, q)
		}
		return err
	}
	return writeReferrers(w, r, l.Referrers, r.URL.Query().Get("artifactType"))
}

// listing returns what upstream lists as what for t: stored while fresh
// (or, with --offline, however old), else asked upstream in one flight.
// When upstream cannot answer, a stored listing is served however old.
func (p *puller) listing(ctx context.Context, t policy.Target, what string, fetch func(context.Context) (cache.Listing, error)) (cache.Listing, error) {
	l, ok := p.storedListing(t.Local, what)
	if ok && (p.opts.Offline || time.Since(l.At) < p.opts.TagTTL) {
		p.opts.Metrics.cache("listing", "hit")
		return l, nil
	}
	if p.opts.Offline {
		return l, cache.ErrNameUnknown
	}
	p.opts.Metrics.cache("listing", "miss")
	ch := p.manifests.DoChan("LIST "+t.Local+"\x00"+what, func() (any, error) {
		// A client that found the listing stale just before the flight
		// ahead of it renewed it asks no one.
		if l, ok := p.storedListing(t.Local, what); ok && time.Since(l.At) < p.opts.TagTTL {
			return l, nil
		}
		fctx, cancel := context.WithTimeout(p.bg, time.Minute)
		defer cancel()
		start := time.Now()
		l, err := fetch(fctx)
		p.opts.Metrics.upstream(t.Registry, "list", err, time.Since(start).Seconds())
		if isMiss(err) { // a 404, or Docker Hub's 401 for a name it has not (misses.go)
			l, err = cache.Listing{Missing: true}, nil
		}
		if err != nil {
			return nil, err
		}
		l.At = time.Now()
		p.keepListing(t.Local, what, l)
		return l, nil
	})
	select {
	case res := <-ch:
		if res.Err == nil {
			return res.Val.(cache.Listing), nil
		}
		if ok {
			p.reg.logLimited("mirror: upstream cannot list: serving the last listing", "repo", t.Local, "listing", what, "at", l.At, "err", res.Err)
			return l, nil
		}
		return cache.Listing{}, res.Err
	case <-ctx.Done():
		return cache.Listing{}, ctx.Err()
	}
}

// storedListing reads a listing from the index, or from memory when the
// index could not keep it.
func (p *puller) storedListing(repo, what string) (cache.Listing, bool) {
	l, ok, err := p.store.Listing(repo, what)
	if m, mok := p.unstored.get(repo + "\x00" + what); mok && (!ok || err != nil || m.At.After(l.At)) {
		return m, true
	}
	return l, ok && err == nil
}

// keepListing stores a listing; one the index refuses (too big, a full
// disk, an unreachable etcd) is kept in memory instead.
func (p *puller) keepListing(repo, what string, l cache.Listing) {
	if err := p.store.PutListing(repo, what, l); err != nil {
		p.reg.logLimited("mirror: a listing is kept in memory only", "repo", repo, "listing", what, "err", err)
		p.unstored.set(repo+"\x00"+what, l)
		return
	}
	p.unstored.drop(repo + "\x00" + what)
}

// writeReferrers answers the referrers API with descs, keeping only those
// of artifactType when it is set.
func writeReferrers(w http.ResponseWriter, r *http.Request, descs []cache.Descriptor, artifactType string) error {
	out := []cache.Descriptor{}
	for _, d := range descs {
		if artifactType == "" || d.ArtifactType == artifactType {
			out = append(out, d)
		}
	}
	if artifactType != "" {
		w.Header().Set("OCI-Filters-Applied", "artifactType")
	}
	return writeJSON(w, r, cache.MediaTypeOCIIndex, map[string]any{
		"schemaVersion": 2, "mediaType": cache.MediaTypeOCIIndex, "manifests": out,
	})
}

// memListingsMax bounds the listings kept in memory (a tag list over the
// index's 1 MiB can be a few MiB): past it they are dropped whole.
const memListingsMax = 256
