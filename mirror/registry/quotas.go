package registry

import (
	"errors"
	"fmt"
	"io"
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
	used, linked, err := reg.quotaUsedLocked(q)
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
	if _, same := held[d]; d != "" && same {
		return none, nil // the same bytes are held already: they add nothing
	}
	if used+size > q.Max || (d == "" && used >= q.Max) {
		return nil, quotaFull(q, used, policy.FormatBytes(size)+" more", size)
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

// quotaUsedLocked is what q's repositories hold plus the bytes admitted
// pushes hold and have not committed yet, and the blobs the repositories
// hold. Call with reg.quotaHolds.mu held.
func (reg *Registry) quotaUsedLocked(q *policy.Quota) (int64, map[digest.Digest]bool, error) {
	used, linked, err := reg.store.Maintenance().NamespaceUsage(q.Prefixes(), q.Matches)
	if err != nil {
		return 0, nil, err
	}
	for hd, n := range reg.quotaHolds.held[q.String()] {
		if !linked[hd] { // committed since: counted in used already
			used += n
		}
	}
	return used, linked, nil
}

// quotaFull is the refusal of a push that does not fit in q: its
// repositories (and admitted pushes) hold used bytes; the push needs more
// (size bytes; -1 when not known).
func quotaFull(q *policy.Quota, used int64, needs string, size int64) error {
	return &oci.Error{Code: oci.CodeDenied, Status: http.StatusForbidden,
		Message: fmt.Sprintf("%s is full: its repositories hold %s of %s; this push needs %s. Delete images (or let a retention policy do it) or raise the quota",
			q, policy.FormatBytes(used), policy.FormatBytes(q.Max), needs),
		Detail: map[string]any{"quota": q.String(), "used_bytes": used, "max_bytes": q.Max, "blob_bytes": size}}
}

// isQuotaFull reports whether err is quotaFull's refusal.
func isQuotaFull(err error) bool {
	var e *oci.Error
	if !errors.As(err, &e) {
		return false
	}
	detail, ok := e.Detail.(map[string]any)
	_, quota := detail["quota"]
	return ok && quota
}

// quotaChunk bounds a chunk of upload session id of repo, under a quota,
// to the quota's room less what the session holds already: a stated
// length beyond it is refused before any byte is read; a body of no stated
// length fails with the same refusal when it passes the limit (the chunk
// is then discarded: the session keeps what it had). Sessions are not
// held against each other: each chunk is bounded by the room when it
// starts, and the finish checks the whole blob again. Repositories under
// no quota get the body as it is.
func (reg *Registry) quotaChunk(repo, id string, r *http.Request) (io.Reader, error) {
	q := reg.policy().QuotaFor(repo)
	if q == nil {
		return r.Body, nil
	}
	have, err := reg.store.Uploads().UploadStatus(repo, id)
	if err != nil {
		return nil, err
	}
	h := &reg.quotaHolds
	h.mu.Lock()
	used, _, err := reg.quotaUsedLocked(q)
	h.mu.Unlock()
	if err != nil {
		return nil, err
	}
	room := max(q.Max-used-have, 0)
	if r.ContentLength > room {
		return nil, quotaFull(q, used, fmt.Sprintf("%s more (%s in this upload session so far)",
			policy.FormatBytes(r.ContentLength), policy.FormatBytes(have)), have+r.ContentLength)
	}
	return &quotaReader{r: r.Body, n: room, full: quotaFull(q, used, fmt.Sprintf("more than the %s left (%s in this upload session so far)",
		policy.FormatBytes(room), policy.FormatBytes(have)), -1)}, nil
}

// quotaReader reads at most n bytes of r: a byte more is the error full.
type quotaReader struct {
	r    io.Reader
	n    int64
	full error
}

func (q *quotaReader) Read(p []byte) (int, error) {
	if int64(len(p)) > q.n+1 {
		p = p[:q.n+1]
	}
	n, err := q.r.Read(p)
	if int64(n) > q.n {
		return 0, q.full
	}
	q.n -= int64(n)
	return n, err
}
