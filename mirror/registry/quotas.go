package registry

import (
	"fmt"
	"net/http"

	"github.com/opencontainers/go-digest"

	"github.com/wharf-registry/wharf/mirror/oci"
	"github.com/wharf-registry/wharf/policy"
)

// checkQuota refuses a blob of size bytes pushed to repo when it would
// take repo's quota (policy.QuotaFor) over its maximum; a blob already
// linked in the quota's repositories adds nothing. d "" is a blob whose
// digest is not known yet (the start of an upload session): refused only
// when the quota is full already. The check is not a reservation: pushes
// racing each other may pass it together, by at most their own sizes.
func (reg *Registry) checkQuota(repo string, d digest.Digest, size int64) error {
	q := reg.policy().QuotaFor(repo)
	if q == nil {
		return nil
	}
	used, linked, err := reg.store.Maintenance().NamespaceUsage(q.Prefixes(), q.Matches)
	if err != nil {
		return err
	}
	if d != "" && linked[d] {
		return nil
	}
	if used+max(size, 0) <= q.Max && (d != "" || used < q.Max) {
		return nil
	}
	return &oci.Error{Code: oci.CodeDenied, Status: http.StatusForbidden,
		Message: fmt.Sprintf("%s is full: its repositories hold %s of %s; this push needs %s more. Delete images (or let a retention policy do it) or raise the quota",
			q, policy.FormatBytes(used), policy.FormatBytes(q.Max), policy.FormatBytes(max(size, 0))),
		Detail: map[string]any{"quota": q.String(), "used_bytes": used, "max_bytes": q.Max, "blob_bytes": size}}
}
