package admin

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/wharf-registry/wharf/cache"
	"github.com/wharf-registry/wharf/mirror/auth"
	"github.com/wharf-registry/wharf/mirror/oci"
	"github.com/wharf-registry/wharf/policy"
)

// reclaimState is the overview's figure of what a collection would free.
type reclaimState struct {
	mu sync.Mutex

	reclaimAt  time.Time // when reclaim was computed (the console's overview)
	reclaim    int64
	reclaiming bool // a dry run for it is under way
}

func (svc *Service) MayPull(s policy.Subject, repo string) bool {
	return svc.gate.Policy().Allowed(s, repo, policy.Pull, svc.origin(repo).Mirrored())
}

func (svc *Service) MayDelete(s policy.Subject, repo string) bool {
	pol, mirrored := svc.gate.Policy(), svc.origin(repo).Mirrored()
	return pol.Allowed(s, repo, policy.Delete, mirrored) || pol.Allowed(s, repo, policy.Admin, mirrored)
}

// rfc3339 formats t, or "" for the zero time.
func rfc3339(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339)
}

// imageBytes is the size of manifest m and of what it references in repo
// (child manifests of an index included, one level deep at a time).
func (svc *Service) imageBytes(repo string, m *cache.Manifest, depth int) int64 {
	n := m.Size
	for _, ref := range m.Refs {
		if child, err := svc.store.GetManifest(repo, ref.String()); err == nil && depth < 2 {
			n += svc.imageBytes(repo, child, depth+1)
		} else if size, err := svc.store.StatBlob(repo, ref); err == nil {
			n += size
		}
	}
	return n
}

// indexPlatforms lists an index's "os/architecture[/variant]" entries.
func indexPlatforms(body []byte) []string {
	var idx struct {
		Manifests []struct {
			Platform *struct{ OS, Architecture, Variant string }
		}
	}
	if json.Unmarshal(body, &idx) != nil {
		return nil
	}
	var out []string
	for _, m := range idx.Manifests {
		if p := m.Platform; p != nil && p.OS != "unknown" {
			s := p.OS + "/" + p.Architecture
			if p.Variant != "" {
				s += "/" + p.Variant
			}
			out = append(out, s)
		}
	}
	return out
}

// Collect runs a collection through the maintenance scheduler (a dry run:
// what one would free now).
func (svc *Service) Collect(ctx context.Context, dry bool) (cache.GCReport, error) {
	return svc.CollectWithout(ctx, dry, nil)
}

// CollectWithout is Collect; a dry run treats without (repository → tags
// or digests) as deleted too (GCOptions.Without). A dry run is answered
// from the last collection's snapshot while the index has not changed
// since (cache.Maintenance.Preview); only a stale one costs a dry run, by
// the scheduler, which keeps its snapshot for the next questions.
func (svc *Service) CollectWithout(ctx context.Context, dry bool, without map[string][]string) (cache.GCReport, error) {
	duty := 0.5 // a real collection leaves serving half the CPU; a dry run, read-only, answers a page
	if dry {
		duty = 1
	}
	o := cache.GCOptions{DryRun: dry, Without: without, Duty: duty}
	if !dry && svc.ReadOnly() {
		return cache.GCReport{}, oci.ErrReadOnly
	}
	if dry {
		po := o
		if svc.opts.Collector == nil {
			po.Grace = svc.opts.GCGrace
		}
		if rep, _, ok := svc.store.Maintenance().Preview(po); ok {
			return rep, nil
		}
	}
	if svc.opts.Collector != nil {
		return svc.opts.Collector.CollectNow(ctx, o)
	}
	o.Grace = svc.opts.GCGrace
	return svc.store.Maintenance().GC(o)
}

// Evict untags every tag of a mirrored repository and forgets its pulls
// by digest, and returns them (a digest as "@sha256:…").
func (svc *Service) Evict(repo string) ([]string, error) {
	if o, ok := svc.store.Origin(repo); !ok || !o.Mirrored() {
		if !ok {
			return nil, oci.Errorf(oci.CodeNameUnknown, "repository name not known to registry")
		}
		return nil, oci.Errorf(oci.CodeDenied, "%s holds pushed images: delete them tag by tag; eviction is for mirrored ones", repo)
	}
	tags, _, err := svc.store.Tags(repo, -1, "")
	if err != nil {
		return nil, err
	}
	evicted := []string{}
	for _, tag := range tags {
		if err := svc.store.DeleteReleasing(repo, tag); errors.Is(err, cache.ErrManifestUnknown) {
			continue // untagged meanwhile
		} else if err != nil {
			return evicted, err
		}
		evicted = append(evicted, tag)
	}
	// What clients pulled by digest is kept like a tag (cache/pins.go):
	// evicting the repository releases it too.
	pinned, err := svc.store.Maintenance().ForgetUses(repo)
	if err != nil {
		return evicted, err
	}
	for _, d := range pinned {
		evicted = append(evicted, "@"+d.String())
	}
	return evicted, nil
}

func RefSep(ref string) string {
	if strings.Contains(ref, ":") {
		return "@"
	}
	return ":"
}

// Reclaimable is what a collection would free now (a dry run, at most
// once every 30 s, and one at a time: page views meanwhile get the last
// figure).
func (svc *Service) Reclaimable() (int64, error) {
	svc.reclaim.mu.Lock()
	at, n, busy := svc.reclaim.reclaimAt, svc.reclaim.reclaim, svc.reclaim.reclaiming
	if time.Since(at) < 30*time.Second || busy && !at.IsZero() {
		svc.reclaim.mu.Unlock()
		return n, nil
	}
	svc.reclaim.reclaiming = true
	svc.reclaim.mu.Unlock()
	// The scheduler runs it between its jobs: a page does not wait long
	// behind a collection or an eviction, it shows the last figure.
	ctx, cancel := context.WithTimeout(context.Background(), reclaimWait)
	defer cancel()
	rep, err := svc.Collect(ctx, true)
	svc.reclaim.mu.Lock()
	svc.reclaim.reclaiming = false
	svc.reclaim.mu.Unlock()
	if errors.Is(err, context.DeadlineExceeded) && !at.IsZero() {
		return n, nil
	} else if errors.Is(err, context.DeadlineExceeded) {
		return 0, errors.New("maintenance is busy; reload in a minute")
	}
	if err != nil {
		return 0, err
	}
	svc.reclaim.mu.Lock()
	svc.reclaim.reclaimAt, svc.reclaim.reclaim = time.Now(), rep.Bytes
	svc.reclaim.mu.Unlock()
	return rep.Bytes, nil
}

// reclaimWait bounds how long the overview waits for the scheduler's dry
// run.
const reclaimWait = 3 * time.Second

// ForgetReclaimable makes the next overview compute it again.
func (svc *Service) ForgetReclaimable() {
	svc.reclaim.mu.Lock()
	svc.reclaim.reclaimAt = time.Time{}
	svc.reclaim.mu.Unlock()
}

type TagRow struct {
	TagInfo
	PushedAt    time.Time
	Pulls       int64
	LastPulled  time.Time
	Labels      []KV
	Annotations []KV
}

type KV struct{ Key, Value string }

// RepoTags is a repository's tags with sizes, pulls, labels and
// annotations (details for the first detailed tags only; 0: all, -1:
// none).
func (svc *Service) RepoTags(repo string, detailed int) ([]TagRow, error) {
	names, _, err := svc.store.Tags(repo, -1, "")
	if err != nil {
		return nil, err
	}
	pulls, _ := svc.store.Records().Pulls(repo)
	rows := []TagRow{}
	for i, tag := range names {
		m, err := svc.store.GetManifest(repo, tag)
		if errors.Is(err, cache.ErrManifestUnknown) {
			continue
		} else if err != nil {
			return nil, err
		}
		row := TagRow{TagInfo: TagInfo{Tag: tag, Digest: m.Digest.String(), MediaType: m.MediaType, Bytes: svc.imageBytes(repo, m, 0),
			Platforms: indexPlatforms(m.Body)}, PushedAt: m.Pushed}
		byTag, byDigest := pulls[tag], pulls[m.Digest.String()]
		row.Pulls, row.LastPulled = byTag.Count, byTag.Last
		if byDigest.Last.After(row.LastPulled) {
			row.LastPulled = byDigest.Last
		}
		if detailed == 0 || i < detailed {
			row.Labels, row.Annotations = svc.imageMeta(repo, m)
		}
		rows = append(rows, row)
	}
	return rows, nil
}

// imageMeta reads an image's labels (from its config, when stored here and
// small) and its manifest's annotations.
func (svc *Service) imageMeta(repo string, m *cache.Manifest) (labels, annotations []KV) {
	var body struct {
		Config *struct {
			Digest digest.Digest `json:"digest"`
			Size   int64         `json:"size"`
		} `json:"config"`
		Annotations map[string]string `json:"annotations"`
	}
	if json.Unmarshal(m.Body, &body) != nil {
		return nil, nil
	}
	annotations = SortedKV(body.Annotations)
	if body.Config == nil || body.Config.Size > 256<<10 {
		return nil, annotations
	}
	rc, _, err := svc.store.OpenBlob(repo, body.Config.Digest)
	if err != nil {
		return nil, annotations
	}
	defer rc.Close()
	raw, err := io.ReadAll(io.LimitReader(rc, 256<<10))
	if err != nil {
		return nil, annotations
	}
	var cfg struct {
		Config struct{ Labels map[string]string } `json:"config"`
	}
	if json.Unmarshal(raw, &cfg) == nil {
		labels = SortedKV(cfg.Config.Labels)
	}
	return labels, annotations
}

func SortedKV(m map[string]string) []KV {
	out := make([]KV, 0, len(m))
	for k, v := range m {
		out = append(out, KV{k, v})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out
}

// WouldFree is what deleting refs of repo would free: a dry run without
// them, less what is collectable anyway.
func (svc *Service) WouldFree(repo string, refs []string) (int64, error) {
	base, err := svc.Collect(context.Background(), true)
	if err != nil {
		return 0, err
	}
	without, err := svc.CollectWithout(context.Background(), true, map[string][]string{repo: refs})
	if err != nil {
		return 0, err
	}
	return max(0, without.Bytes-base.Bytes), nil
}

func (svc *Service) GCGrace() time.Duration {
	if svc.opts.GCGrace > 0 {
		return svc.opts.GCGrace
	}
	return time.Hour
}

// origin is the recorded origin of a repository; one never written counts
// as pushed (private).
func (svc *Service) origin(repo string) cache.Origin {
	o, _ := svc.store.Origin(repo)
	return o
}

// RepoRow is a repository as the listings show it, with its pulls.
type RepoRow struct {
	RepoInfo
	LastPulled time.Time // the latest manifest GET (zero: never)
}

// Repositories is every repository holding manifests that subject may
// pull, by name, with sizes and pulls.
func (svc *Service) Repositories(subject policy.Subject) ([]RepoRow, error) {
	usage, _, err := svc.store.Maintenance().Usage()
	if err != nil {
		return nil, err
	}
	pulls, err := svc.store.Records().RepoPulls()
	if err != nil {
		return nil, err
	}
	out := []RepoRow{}
	for _, u := range usage {
		if u.Manifests > 0 && svc.MayPull(subject, u.Repo) {
			row := RepoRow{RepoInfo: info(u), LastPulled: pulls[u.Repo].Last}
			row.Pulls, row.RepoInfo.LastPulled = pulls[u.Repo].Count, rfc3339(pulls[u.Repo].Last)
			out = append(out, row)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Origin is where repo's content comes from (pushed when never written).
func (svc *Service) Origin(repo string) cache.Origin { return svc.origin(repo) }

// HasRef reports whether repo holds the tag or digest ref.
func (svc *Service) HasRef(repo, ref string) bool {
	_, err := svc.store.GetManifest(repo, ref)
	return err == nil
}

// Tags is repo's tags.
func (svc *Service) Tags(repo string) ([]string, error) {
	tags, _, err := svc.store.Tags(repo, -1, "")
	return tags, err
}

// Delete untags (ref a tag) or deletes a manifest (ref a digest); the
// store records what it released, which the next collection frees without
// waiting for the grace period (cache/released.go).
// r is the request that asked, by c, told to Options.Deleted. An
// immutable tag (or a manifest one names) needs the admin action.
func (svc *Service) Delete(r *http.Request, c auth.Caller, repo, ref string) error {
	if pol := svc.gate.Policy(); pol.HasImmutable() {
		tags, err := svc.store.TagsRemovedBy(repo, ref)
		if err != nil {
			return err
		}
		if why := pol.ImmutableDeleteRefused(c.Subject, repo, tags); why != "" {
			return oci.Errorf(oci.CodeDenied, "%s", why)
		}
	}
	if err := svc.store.DeleteReleasing(repo, ref); err != nil {
		return err
	}
	if svc.opts.Deleted != nil {
		svc.opts.Deleted(r, c.User, repo, ref)
	}
	return nil
}

// ReadOnly reports a read-only registry (--read-only): nothing is
// deleted, evicted or collected.
func (svc *Service) ReadOnly() bool { return svc.readOnly.Load() }

// SetReadOnly switches read-only mode (Options.ReadOnly) on or off.
func (svc *Service) SetReadOnly(on bool) { svc.readOnly.Store(on) }

// DeletesDisabled reports a server on which nobody may delete: no users
// are configured (everyone may do everything) and it was not started
// with --allow-delete.
func (svc *Service) DeletesDisabled() bool {
	return svc.ReadOnly() || svc.gate.Policy().Open() && !svc.opts.AllowDelete
}

// RecentErrors is the book's recent errors, newest first, with the
// repository each concerns ("" for none).
func (svc *Service) RecentErrors() []ShownError {
	svc.book.mu.Lock()
	defer svc.book.mu.Unlock()
	out := make([]ShownError, 0, len(svc.book.errors))
	for i := len(svc.book.errors) - 1; i >= 0; i-- {
		e := svc.book.errors[i]
		out = append(out, ShownError{At: e.at, Text: e.text, repo: e.repo})
	}
	return out
}

// Audits is the book's audit records, oldest first.
func (svc *Service) Audits() []auth.AuditEvent {
	svc.book.mu.Lock()
	defer svc.book.mu.Unlock()
	return append([]auth.AuditEvent(nil), svc.book.audits...)
}
