package registry

import (
	"context"

	"github.com/containerd/platforms"

	"github.com/wharf-registry/wharf/cache"
	"github.com/wharf-registry/wharf/policy"
)

// WarmPins fetches ahead the pins that name one tag (policy's pin): a tag
// upstream moved since its last check (the tag TTL) is fetched anew, and
// an image's blobs are downloaded (an index's platform images, for the
// --prefetch-platform platforms or else this machine's), so that an
// air-gapped LAN keeps its base images without a client pulling them
// first. It returns how many pins it warmed and the first error.
func (reg *Registry) WarmPins(ctx context.Context) (int, error) {
	p := reg.pull
	if p == nil || p.opts.Offline {
		return 0, nil
	}
	var first error
	n := 0
	for _, pt := range reg.policy().PinnedTags() {
		if ctx.Err() != nil {
			return n, ctx.Err()
		}
		m, err := p.lookup(ctx, pt.Target, reference{tag: pt.Tag})
		switch {
		case err != nil:
		case cache.IsIndex(m.MediaType):
			err = p.warmIndex(ctx, pt.Target, m)
		default:
			p.fetchBlobs(ctx, pt.Target, m.Refs, p.opts.PrefetchParallel) // the blobs it lacks
		}
		if err != nil {
			reg.log.Warn("pinned image: fetching it ahead failed (retried at the next round)", "image", pt.Target.Local+":"+pt.Tag, "err", err)
			if first == nil {
				first = err
			}
			continue
		}
		n++
	}
	return n, first
}

// warmIndex fetches the platform manifests of a pinned index (and so
// their blobs) for the configured platforms, or this machine's.
func (p *puller) warmIndex(ctx context.Context, t policy.Target, m *cache.Manifest) error {
	info, err := cache.ParseManifest(m.MediaType, m.Body)
	if err != nil {
		return err
	}
	match := platforms.Default()
	if len(p.opts.PrefetchPlatforms) > 0 {
		match = p.platforms
	}
	for _, e := range info.Manifests {
		if e.Platform == nil || !match.Match(*e.Platform) {
			continue
		}
		pm, err := p.lookup(ctx, t, reference{digest: e.Digest})
		if err != nil {
			return err
		}
		p.fetchBlobs(ctx, t, pm.Refs, p.opts.PrefetchParallel)
	}
	return nil
}
