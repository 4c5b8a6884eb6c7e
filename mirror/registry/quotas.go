package registry

import (
	"fmt"
	"net/http"
	"sync"

	"github.com/opencontainers/go-digest"

	"github.com/wharf-registry/wharf/mirror/oci"
	"github.com/wharf-registry/wharf/policy"
)

// quotaHolds are the bytes of pushes that passed a quota check and have
// not committed yet, per quota and digest: the next check counts them as
// used, so pushes racing each other cannot pass together over the quota.
// They are this node's: on a cluster, pushes racing on different nodes
// can still pass together, by at most their own sizes.
type quotaHolds struct {
	mu   sync.Mutex
	held map[string]map[digest.Digest]int64 // quota → digest → bytes
}

// checkQuota refuses a blob of size bytes pushed to repo when it would
// take repo's quota (policy.QuotaFor) over its maximum, counting what
// other pushes hold; a blob already linked in the quota's repositories
// adds nothing. d "" is a blob whose digest is not known yet (the start
// of an upload session): refused only when the quota is full already; a
// known digest of unknown size (-1) is refused with 411 unless linked.
// Admitted, the blob's bytes are held until release is called, which the
// caller must do once the blob is committed or has failed.
func (reg *Registry) checkQuota(repo string, d digest.Digest, size int64) (release func(), err error) {
	none := func() {}
	q := reg.policy().QuotaFor(repo)
	if q == nil {
		return none, nil
	}
	h := &reg.quotaHolds
	h.mu.Lock() // across the usage read: a check sees every admitted push, committed or held
	defer h.mu.Unlock()
	used, linked, err := reg.store.Maintenance().NamespaceUsage(q.Prefixes(), q.Matches)
	if err != nil {
		return nil, err
	}
	if d != "" && linked[d] {
		return none, nil
	}
	if d != "" && size < 0 { // a body of no stated length: it cannot be checked before it is stored
		return nil, &oci.Error{Code: oci.CodeSizeInvalid, Status: http.StatusLengthRequired,
			Message: fmt.Sprintf("a push into %s needs a Content-Length (or an upload session)", q)}
	}
	key := q.String()
	held := h.held[key]
	for hd, n := range held {
		if !linked[hd] { // committed since: counted in used already
			used += n
		}
	}
	if _, same := held[d]; d != "" && same {
		return none, nil // the same bytes are held already: they add nothing
	}
	if used+size > q.Max || (d == "" && used >= q.Max) {
		return nil, &oci.Error{Code: oci.CodeDenied, Status: http.StatusForbidden,
			Message: fmt.Sprintf("%s is full: its repositories hold %s of %s; this push needs %s more. Delete images (or let a retention policy do it) or raise the quota",
				q, policy.FormatBytes(used), policy.FormatBytes(q.Max), policy.FormatBytes(size)),
			Detail: map[string]any{"quota": q.String(), "used_bytes": used, "max_bytes": q.Max, "blob_bytes": size}}
	}
	if d == "" || size == 0 {
		return none, nil
	}
	if held == nil {
		if h.held == nil {
			h.held = map[string]map[digest.Digest]int64{}
		}
		held = map[digest.Digest]int64{}
		h.held[key] = held
	}
	held[d] = size
	return func() {
		h.mu.Lock()
		defer h.mu.Unlock()
		if delete(held, d); len(held) == 0 { // while it held d, held was h.held[key]
			delete(h.held, key)
		}
	}, nil
}
