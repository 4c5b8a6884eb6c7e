package admin

import (
	"errors"
	"log/slog"
	"net/http"
	"sort"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/wharf-registry/wharf/cache"
	"github.com/wharf-registry/wharf/mirror/auth"
	"github.com/wharf-registry/wharf/mirror/oci"
	"github.com/wharf-registry/wharf/policy"
)

// RetentionRemoval is a tag a retention run removes (or, in a dry run,
// would remove).
type RetentionRemoval struct {
	Repo       string    `json:"repo"`
	Tag        string    `json:"tag"`
	Digest     string    `json:"digest"`
	Pushed     time.Time `json:"pushed"`
	LastPulled time.Time `json:"last_pulled,omitzero"`
	// Bytes is what removing it frees: the bytes of its manifests and
	// blobs that no kept tag of any repository shares.
	Bytes  int64  `json:"bytes"`
	Policy string `json:"policy"`
}

// RetentionReport is what a retention run removed (or would remove).
type RetentionReport struct {
	DryRun   bool               `json:"dry_run"`
	Removals []RetentionRemoval `json:"removals"`
	Kept     int                `json:"kept"`  // tags the policies kept
	Bytes    int64              `json:"bytes"` // freed in all (what no kept tag shares)
}

// ErrRetentionElsewhere: another node of the cluster is applying the
// retention policies.
var ErrRetentionElsewhere = errors.New("another node is applying the retention policies")

// Retention applies the retention policies to the pushed repositories
// (registry admins; c nil: the scheduler). A dry run only reports. Each
// removal untags, audited and notified like a delete; what only removed
// tags held is collected within seconds, as after a delete. On a cluster
// one node at a time applies them.
func (svc *Service) Retention(r *http.Request, c *auth.Caller, dry bool, now time.Time) (RetentionReport, error) {
	rep := RetentionReport{DryRun: dry, Removals: []RetentionRemoval{}}
	actor := "retention"
	if c != nil {
		if !svc.gate.Policy().RegistryAdmin(c.Subject) {
			return rep, oci.Errorf(oci.CodeDenied, "only a registry admin may apply the retention policies")
		}
		actor = c.User
	}
	if !dry && svc.ReadOnly() {
		return rep, oci.ErrReadOnly
	}
	pol := svc.gate.Policy()
	if !pol.HasRetention() {
		return rep, nil
	}
	if !dry {
		release, ok, err := svc.store.Records().Claim("retention")
		if err != nil {
			return rep, err
		}
		if !ok {
			return rep, ErrRetentionElsewhere
		}
		defer release()
	}
	// Pulls counted since the last flush count for keep-pulled-within.
	if err := svc.store.Maintenance().FlushAccess(); err != nil && !errors.Is(err, cache.ErrStorageFull) {
		return rep, err
	}
	if r == nil {
		r, _ = http.NewRequest(http.MethodPost, "http://wharf"+APIPrefix+"retention", nil)
		r.RemoteAddr = "wharf"
	}
	repos, _, err := svc.store.Catalog(-1, "")
	if err != nil {
		return rep, err
	}
	// Decide the repositories the policies name first; only when some tag
	// goes is what every kept tag holds (what no removal frees) gathered.
	type ref struct{ repo, ref string }
	var keptRefs []ref
	type removal struct {
		RetentionRemoval
		m *cache.Manifest
	}
	var doomed []removal
	var others []string // repositories no policy touches
	for _, repo := range repos {
		o, _ := svc.store.Origin(repo)
		ret := pol.RetentionFor(repo)
		if o.Mirrored() || ret == nil {
			others = append(others, repo)
			continue
		}
		rows, err := svc.RepoTags(repo, -1)
		if err != nil {
			return rep, err
		}
		sort.SliceStable(rows, func(i, j int) bool {
			if !rows[i].PushedAt.Equal(rows[j].PushedAt) {
				return rows[i].PushedAt.After(rows[j].PushedAt)
			}
			return rows[i].Tag > rows[j].Tag
		})
		for i, row := range rows {
			if keepsTag(pol, ret, repo, row, i, now) {
				rep.Kept++
				keptRefs = append(keptRefs, ref{repo, row.Digest})
				continue
			}
			m, err := svc.store.GetManifest(repo, row.Digest)
			if err != nil {
				return rep, err
			}
			doomed = append(doomed, removal{RetentionRemoval{Repo: repo, Tag: row.Tag, Digest: row.Digest, Pushed: row.PushedAt,
				LastPulled: row.LastPulled, Policy: ret.String()}, m})
		}
	}
	if len(doomed) == 0 {
		return rep, nil
	}
	for _, repo := range others {
		tags, _, err := svc.store.Tags(repo, -1, "")
		if err != nil {
			return rep, err
		}
		for _, t := range tags {
			keptRefs = append(keptRefs, ref{repo, t})
		}
	}
	kept := map[digest.Digest]bool{}
	for _, k := range keptRefs {
		if m, err := svc.store.GetManifest(k.repo, k.ref); err == nil {
			parts := map[digest.Digest]int64{}
			imageParts(svc.store, k.repo, m, 0, parts)
			for d := range parts {
				kept[d] = true
			}
		}
	}
	counted := map[digest.Digest]bool{}
	for _, d := range doomed {
		freed := map[digest.Digest]int64{}
		imageParts(svc.store, d.Repo, d.m, 0, freed)
		for part, size := range freed {
			if !kept[part] && !counted[part] {
				counted[part] = true
				d.Bytes += size
			}
		}
		rep.Bytes += d.Bytes
		rep.Removals = append(rep.Removals, d.RetentionRemoval)
	}
	if dry {
		return rep, nil
	}
	for i, d := range rep.Removals {
		if err := svc.store.DeleteReleasing(d.Repo, d.Tag); err != nil && !errors.Is(err, cache.ErrManifestUnknown) {
			rep.Removals = rep.Removals[:i]
			return rep, err
		}
		svc.gate.AuditAs(r, actor, "retention-delete", slog.String("repo", d.Repo), slog.String("tag", d.Tag),
			slog.String("digest", d.Digest), slog.String("policy", d.Policy))
		if svc.opts.Deleted != nil {
			svc.opts.Deleted(r, actor, d.Repo, d.Tag)
		}
	}
	return rep, nil
}

// keepsTag reports whether ret keeps the i-th most recently pushed tag of
// repo: any keep clause, or an immutable tag (which retention never
// removes).
func keepsTag(pol *policy.Policy, ret *policy.Retention, repo string, row TagRow, i int, now time.Time) bool {
	if _, fixed := pol.ImmutableTag(repo, row.Tag); fixed {
		return true
	}
	return i < ret.KeepLast || ret.KeepsTag(row.Tag) ||
		ret.KeepPulledWithin > 0 && !row.LastPulled.IsZero() && now.Sub(row.LastPulled) <= ret.KeepPulledWithin
}

// imageParts adds m, its child manifests and every blob they reference,
// with their sizes, to parts.
func imageParts(store *cache.Store, repo string, m *cache.Manifest, depth int, parts map[digest.Digest]int64) {
	parts[m.Digest] = m.Size
	for _, ref := range m.Refs {
		if _, seen := parts[ref]; seen {
			continue
		}
		if child, err := store.GetManifest(repo, ref.String()); err == nil && depth < 2 {
			imageParts(store, repo, child, depth+1, parts)
		} else if size, err := store.StatBlob(repo, ref); err == nil {
			parts[ref] = size
		}
	}
}

// apiRetention serves POST /api/v1/retention[?dry-run=true]: apply the
// retention policies now (registry admins), or say what they would remove.
func (svc *Service) apiRetention(w http.ResponseWriter, r *http.Request) error {
	c, err := svc.apiCaller(r)
	if err != nil {
		return err
	}
	if !svc.gate.Policy().RegistryAdmin(c.Subject) {
		return svc.apiDenied(r, c, "apply the retention policies")
	}
	q := r.URL.Query()
	dry := q.Get("dry-run") == "true" || q.Get("dry_run") == "true" || q.Get("dry-run") == "1" || q.Get("dry_run") == "1"
	rep, err := svc.Retention(r, &c, dry, time.Now())
	if errors.Is(err, ErrRetentionElsewhere) {
		return &oci.Error{Code: oci.CodeTooManyRequests, Message: err.Error() + "; try again in a minute", RetryAfter: time.Minute}
	}
	if err != nil {
		return err
	}
	return apiJSON(w, http.StatusOK, rep)
}

// QuotaInfo is a namespace quota and what its repositories hold.
type QuotaInfo struct {
	Quota string `json:"quota"`
	Max   int64  `json:"max_bytes"`
	Used  int64  `json:"used_bytes"`
}

// QuotaUsage is every configured quota with its usage (shared content
// once).
func (svc *Service) QuotaUsage() ([]QuotaInfo, error) {
	out := []QuotaInfo{}
	for _, q := range svc.gate.Policy().Quotas() {
		used, _, err := svc.store.Maintenance().NamespaceUsage(q.Prefixes(), q.Matches)
		if err != nil {
			return nil, err
		}
		out = append(out, QuotaInfo{Quota: q.String(), Max: q.Max, Used: used})
	}
	return out, nil
}
