package upstream

import "time"

// More connections help a blob whose connection is capped (a CDN's
// per-connection limit, a long fat network): each new one brings its own
// bandwidth. Where downloads share one bottleneck (a busy CPU on either
// side, a full link) they only divide it, and add requests, buffers and
// copies. So each split blob is judged when its last byte is read: unless
// its segments' connections each delivered at least splitKeep of what
// the first one did when it was split (both from their first bytes), the
// registry's blobs are not split for a while, doubling up to splitRestMax
// while splits keep not helping; a split that helps ends the rest.
const (
	splitKeep    = 0.5
	splitRestMin = 30 * time.Second
	splitRestMax = 10 * time.Minute
)

// splitsHelp reports whether r's blobs may be split at now (not resting
// after a split that did not help).
func (c *Client) splitsHelp(r *registry, now time.Time) bool {
	if c.opts.SplitAlways {
		return true
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return !now.Before(r.splitRestUntil)
}

// judgeSplit records how a split blob of r did: first, what its first
// connection delivered (bytes per second) when it was split; each, what
// each of its segments' connections delivered.
func (c *Client) judgeSplit(r *registry, first, each float64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if each >= splitKeep*first {
		r.splitRest = 0
		return
	}
	r.splitRest = min(max(2*r.splitRest, splitRestMin), splitRestMax)
	r.splitRestUntil = time.Now().Add(r.splitRest)
	c.log.Debug("split connections each got a fraction of the first: the downloads share one bottleneck; not splitting for a while",
		"registry", r.Name, "first_bytes_per_sec", int64(first), "segment_bytes_per_sec", int64(each), "for", r.splitRest)
}

// linkTTL is how long a look at a registry's connections stands for it.
const linkTTL = 10 * time.Minute

func (c *Client) noteLink(r *registry, slow bool, now time.Time) {
	r.mu.Lock()
	r.linkSlow, r.linkAt = slow, now
	r.mu.Unlock()
}

// ParallelHelps reports whether fetching several of registry's blobs at
// once is likely to make them arrive sooner. It is false while splits
// rest, and when the latest look at a large blob's connection (within
// linkTTL) found it fast or its reader busy: the downloads then share one
// bottleneck (the CPU on either side, a full link) and more at once only
// divide it. Without a recent look (blobs too small to measure, segments
// off) it is true.
func (c *Client) ParallelHelps(registry string) bool {
	r, ok := c.regs[NormalizeName(registry)]
	if !ok {
		return true
	}
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	if now.Before(r.splitRestUntil) {
		return false
	}
	return r.linkAt.IsZero() || now.Sub(r.linkAt) > linkTTL || r.linkSlow
}
