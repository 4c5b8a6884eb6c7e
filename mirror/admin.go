package mirror

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
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

// The admin API (/api/v1/) is what the console and `wharf … --server` use:
// JSON, authorized per call by the same users and rules as the registry
// (reads of a repository need pull on it; deleting and evicting need
// delete or admin on it; usage, GC and upstreams need admin on "**"),
// audited, and safe while serving. Errors are the OCI error format.
//
//	GET    /api/v1/repositories                     repositories the auth.Caller may pull
//	GET    /api/v1/repositories/<name>/tags         a repository's tags
//	DELETE /api/v1/repositories/<name>/tags/<tag>   untag
//	DELETE /api/v1/repositories/<name>/manifests/<digest>  delete a manifest (and its tags)
//	DELETE /api/v1/repositories/<name>              evict a mirrored image (all its tags)
//	GET    /api/v1/usage                            usage by repository and in total
//	GET    /api/v1/upstreams                        upstream health and rate-limit headroom
//	GET    /api/v1/events                           recent errors and audit events
//	POST   /api/v1/gc[?dry_run=true]                collect now; what a deliberate delete
//	                                                released gets no grace
const apiPrefix = "/api/v1/"

// adminState is what the admin API remembers between calls.
type adminState struct {
	mu sync.Mutex

	reclaimAt  time.Time // when reclaim was computed (the console's overview)
	reclaim    int64
	reclaiming bool // a dry run for it is under way
}

// repoInfo is one repository in the API's listings.
type repoInfo struct {
	Name      string `json:"name"`
	Origin    string `json:"origin"`             // "pushed" or "mirrored"
	Registry  string `json:"registry,omitempty"` // for mirrored ones
	Bytes     int64  `json:"bytes"`
	Blobs     int    `json:"blobs"`
	Manifests int    `json:"manifests"`
	Tags      int    `json:"tags"`
	Pulls     int64  `json:"pulls"`
	// LastPulled is the latest manifest GET (RFC 3339; absent: never).
	LastPulled string `json:"last_pulled,omitempty"`
}

type tagInfo struct {
	Tag       string   `json:"tag"`
	Digest    string   `json:"digest"`
	MediaType string   `json:"media_type"`
	Bytes     int64    `json:"bytes"` // the manifest and what it references in the repository, shared blobs included
	Platforms []string `json:"platforms,omitempty"`
	Pushed    string   `json:"pushed,omitempty"` // when the manifest was stored (RFC 3339)
	// Pulls counts manifest GETs by this tag; LastPulled is the latest by
	// the tag or by its digest.
	Pulls      int64  `json:"pulls"`
	LastPulled string `json:"last_pulled,omitempty"`
}

// serveAPI answers /api/v1/ requests.
func (reg *Registry) serveAPI(w http.ResponseWriter, r *http.Request) error {
	rest := strings.TrimPrefix(r.URL.Path, apiPrefix)
	if isWrite(r.Method) && auth.CrossSite(r) {
		// A browser's form from another site, sending credentials it
		// keeps for this one: never a script's call.
		reg.gate.Audit(r, "denied", slog.String("api", r.Method+" "+r.URL.Path), slog.String("reason", "cross-site request"))
		return oci.Errorf(oci.CodeDenied, "cross-site requests may not change anything")
	}
	switch {
	case rest == "repositories" && r.Method == http.MethodGet:
		return reg.apiRepositories(w, r)
	case rest == "usage" && r.Method == http.MethodGet:
		return reg.apiUsage(w, r)
	case rest == "gc" && r.Method == http.MethodPost:
		return reg.apiGC(w, r)
	case rest == "events" && r.Method == http.MethodGet:
		return reg.apiEvents(w, r)
	case rest == "upstreams" && r.Method == http.MethodGet:
		return reg.apiUpstreams(w, r)
	case strings.HasPrefix(rest, "repositories/"):
		name, what, ok := splitAPIRepo(strings.TrimPrefix(rest, "repositories/"))
		if !ok {
			break
		}
		switch {
		case what == "" && r.Method == http.MethodDelete:
			return reg.apiEvict(w, r, name)
		case what == "tags" && r.Method == http.MethodGet:
			return reg.apiTags(w, r, name)
		case strings.HasPrefix(what, "tags/") && r.Method == http.MethodDelete:
			return reg.apiDelete(w, r, name, strings.TrimPrefix(what, "tags/"))
		case strings.HasPrefix(what, "manifests/") && r.Method == http.MethodDelete:
			ref := strings.TrimPrefix(what, "manifests/")
			if _, err := digest.Parse(ref); err != nil {
				return oci.Errorf(oci.CodeDigestInvalid, "not a digest: %q", ref)
			}
			return reg.apiDelete(w, r, name, ref)
		}
	}
	return &oci.Error{Code: oci.CodeUnsupported, Status: http.StatusNotFound, Message: r.Method + " " + r.URL.Path + " is no admin API endpoint"}
}

// splitAPIRepo splits "<name>/tags", "<name>/tags/<tag>",
// "<name>/manifests/<digest>" or "<name>" (names contain slashes; tags and
// digests do not, so the part is recognised from the end, as in /v2/).
func splitAPIRepo(s string) (name, what string, ok bool) {
	dir, last := "", s
	if i := strings.LastIndexByte(s, '/'); i >= 0 {
		dir, last = s[:i], s[i+1:]
	}
	parent, kind := "", dir
	if i := strings.LastIndexByte(dir, '/'); i >= 0 {
		parent, kind = dir[:i], dir[i+1:]
	}
	switch {
	case last == "tags" && dir != "":
		name, what = dir, "tags"
	case kind == "tags" && parent != "" && oci.ValidTag(last):
		name, what = parent, "tags/"+last
	case kind == "manifests" && parent != "" && strings.Contains(last, ":"):
		name, what = parent, "manifests/"+last
	default:
		name = s // the repository itself
	}
	return name, what, oci.ValidName(name)
}

// apiCaller is who asks, refusing a throttled sign-in.
func (reg *Registry) apiCaller(r *http.Request) (auth.Caller, error) {
	c := auth.CallerOf(r)
	if c.Throttled > 0 {
		return c, oci.Throttled(c.Throttled)
	}
	return c, nil
}

// apiDenied is the refusal of a call: 401 (Basic) for an anonymous auth.Caller,
// 403 for a signed-in one.
func (reg *Registry) apiDenied(r *http.Request, c auth.Caller, what string) error {
	reg.gate.Audit(r, "denied", slog.String("api", r.Method+" "+r.URL.Path))
	if c.User == "" {
		return &oci.Error{Code: oci.CodeUnauthorized, Message: "sign in (Basic credentials) to " + what, Challenge: `Basic realm="Wharf admin API"`}
	}
	return oci.Errorf(oci.CodeDenied, "%s may not %s", c.User, what)
}

func (reg *Registry) mayPull(s policy.Subject, repo string) bool {
	return reg.policy().Allowed(s, repo, policy.Pull, reg.origin(repo).Mirrored())
}

func (reg *Registry) mayDelete(s policy.Subject, repo string) bool {
	pol, mirrored := reg.policy(), reg.origin(repo).Mirrored()
	return pol.Allowed(s, repo, policy.Delete, mirrored) || pol.Allowed(s, repo, policy.Admin, mirrored)
}

// apiJSON answers status with v as JSON.
func apiJSON(w http.ResponseWriter, status int, v any) error {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	return json.NewEncoder(w).Encode(v)
}

func info(u cache.RepoUsage) repoInfo {
	ri := repoInfo{Name: u.Repo, Origin: "pushed", Bytes: u.Bytes, Blobs: u.Blobs, Manifests: u.Manifests, Tags: u.Tags}
	if u.Origin.Mirrored() {
		ri.Origin, ri.Registry = "mirrored", u.Origin.Registry
	}
	return ri
}

func (reg *Registry) apiRepositories(w http.ResponseWriter, r *http.Request) error {
	c, err := reg.apiCaller(r)
	if err != nil {
		return err
	}
	usage, _, err := reg.store.Maintenance().Usage()
	if err != nil {
		return err
	}
	pulls, err := reg.store.Records().RepoPulls()
	if err != nil {
		return err
	}
	out := []repoInfo{}
	for _, u := range usage {
		if u.Manifests > 0 && reg.mayPull(c.Subject, u.Repo) {
			ri := info(u)
			ri.Pulls, ri.LastPulled = pulls[u.Repo].Count, rfc3339(pulls[u.Repo].Last)
			out = append(out, ri)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return apiJSON(w, http.StatusOK, map[string]any{"repositories": out})
}

func (reg *Registry) apiUsage(w http.ResponseWriter, r *http.Request) error {
	c, err := reg.apiCaller(r)
	if err != nil {
		return err
	}
	if !reg.policy().RegistryAdmin(c.Subject) {
		return reg.apiDenied(r, c, "see the registry's usage")
	}
	usage, total, err := reg.store.Maintenance().Usage()
	if err != nil {
		return err
	}
	repos := make([]repoInfo, 0, len(usage))
	for _, u := range usage {
		repos = append(repos, info(u))
	}
	out := map[string]any{"total_bytes": total, "repositories": repos}
	if reg.opts.StatusInfo != nil {
		out["quota_bytes"] = reg.opts.StatusInfo().QuotaBytes
	}
	return apiJSON(w, http.StatusOK, out)
}

func (reg *Registry) apiTags(w http.ResponseWriter, r *http.Request, repo string) error {
	c, err := reg.apiCaller(r)
	if err != nil {
		return err
	}
	if !reg.mayPull(c.Subject, repo) {
		if c.User == "" && !reg.policy().Open() {
			return reg.apiDenied(r, c, "list "+repo)
		}
		return oci.Errorf(oci.CodeNameUnknown, "repository name not known to registry") // never say a private name exists
	}
	rows, err := reg.repoTags(repo, -1)
	if err != nil {
		return err
	}
	out := []tagInfo{}
	for _, row := range rows {
		ti := row.tagInfo
		ti.Pushed, ti.Pulls, ti.LastPulled = rfc3339(row.PushedAt), row.Pulls, rfc3339(row.LastPulled)
		out = append(out, ti)
	}
	return apiJSON(w, http.StatusOK, map[string]any{"name": repo, "tags": out})
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
func (reg *Registry) imageBytes(repo string, m *cache.Manifest, depth int) int64 {
	n := m.Size
	for _, ref := range m.Refs {
		if child, err := reg.store.GetManifest(repo, ref.String()); err == nil && depth < 2 {
			n += reg.imageBytes(repo, child, depth+1)
		} else if size, err := reg.store.StatBlob(repo, ref); err == nil {
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

// apiDelete untags (ref a tag) or deletes a manifest (ref a digest); the
// store records what it released, which the next collection frees without
// waiting for the grace period (cache/released.go).
func (reg *Registry) apiDelete(w http.ResponseWriter, r *http.Request, repo, ref string) error {
	c, err := reg.apiCaller(r)
	if err != nil {
		return err
	}
	if err := reg.mayWrite(r, c, repo); err != nil {
		return err
	}
	if err := reg.store.DeleteReleasing(repo, ref); err != nil {
		return err
	}
	reg.gate.Audit(r, "delete", slog.String("repo", repo), slog.String("ref", ref), slog.String("via", "api"))
	return apiJSON(w, http.StatusAccepted, map[string]string{"deleted": repo + refSep(ref) + ref})
}

// mayWrite decides an API delete or eviction in repo: the auth.Caller needs
// delete or admin there, and with no users configured (everyone may do
// everything) the server must have been started with --allow-delete.
func (reg *Registry) mayWrite(r *http.Request, c auth.Caller, repo string) error {
	if reg.policy().Open() && !reg.opts.AllowDelete {
		return errDeleteDisabled
	}
	if !reg.mayDelete(c.Subject, repo) {
		return reg.apiDenied(r, c, "delete in "+repo)
	}
	return nil
}

// collect runs a collection through the maintenance scheduler (a dry run:
// what one would free now).
func (reg *Registry) collect(ctx context.Context, dry bool) (cache.GCReport, error) {
	return reg.collectWithout(ctx, dry, nil)
}

// collectWithout is collect; a dry run treats without (repository → tags
// or digests) as deleted too (GCOptions.Without).
func (reg *Registry) collectWithout(ctx context.Context, dry bool, without map[string][]string) (cache.GCReport, error) {
	duty := 0.5 // a real collection leaves serving half the CPU; a dry run, read-only, answers a page
	if dry {
		duty = 1
	}
	o := cache.GCOptions{DryRun: dry, Without: without, Duty: duty}
	if reg.opts.Collector != nil {
		return reg.opts.Collector.CollectNow(ctx, o)
	}
	o.Grace = reg.opts.GCGrace
	return reg.store.Maintenance().GC(o)
}

// apiEvict untags every tag of a mirrored repository: the next collection
// frees what only they used, and the next pull fetches it again.
func (reg *Registry) apiEvict(w http.ResponseWriter, r *http.Request, repo string) error {
	c, err := reg.apiCaller(r)
	if err != nil {
		return err
	}
	if err := reg.mayWrite(r, c, repo); err != nil {
		return err
	}
	evicted, err := reg.evict(repo)
	if err != nil {
		return err
	}
	reg.gate.Audit(r, "evict", slog.String("repo", repo), slog.Int("tags", len(evicted)), slog.String("via", "api"))
	return apiJSON(w, http.StatusAccepted, map[string]any{"evicted": repo, "tags": evicted})
}

// evict untags every tag of a mirrored repository and forgets its pulls
// by digest, and returns them (a digest as "@sha256:…").
func (reg *Registry) evict(repo string) ([]string, error) {
	if o, ok := reg.store.Origin(repo); !ok || !o.Mirrored() {
		if !ok {
			return nil, oci.Errorf(oci.CodeNameUnknown, "repository name not known to registry")
		}
		return nil, oci.Errorf(oci.CodeDenied, "%s holds pushed images: delete them tag by tag; eviction is for mirrored ones", repo)
	}
	tags, _, err := reg.store.Tags(repo, -1, "")
	if err != nil {
		return nil, err
	}
	evicted := []string{}
	for _, tag := range tags {
		if err := reg.store.DeleteReleasing(repo, tag); errors.Is(err, cache.ErrManifestUnknown) {
			continue // untagged meanwhile
		} else if err != nil {
			return evicted, err
		}
		evicted = append(evicted, tag)
	}
	// What clients pulled by digest is kept like a tag (cache/pins.go):
	// evicting the repository releases it too.
	pinned, err := reg.store.Maintenance().ForgetUses(repo)
	if err != nil {
		return evicted, err
	}
	for _, d := range pinned {
		evicted = append(evicted, "@"+d.String())
	}
	return evicted, nil
}

// apiUpstreams is the status page's upstream table, as JSON (public, as
// that page is).
func (reg *Registry) apiUpstreams(w http.ResponseWriter, r *http.Request) error {
	type row struct {
		Name               string `json:"name"`
		Endpoint           string `json:"endpoint"`
		Up                 bool   `json:"up"`
		RateLimitedUntil   string `json:"rate_limited_until,omitempty"`
		RateLimitRemaining int    `json:"rate_limit_remaining"` // -1: never reported
		LastError          string `json:"last_error,omitempty"`
	}
	out := []row{}
	if reg.opts.StatusInfo != nil {
		for _, u := range reg.opts.StatusInfo().Upstreams {
			x := row{Name: u.Name, Endpoint: u.Endpoint, Up: u.Up, RateLimitRemaining: u.RateLimitRemaining, LastError: u.LastError}
			if time.Now().Before(u.RateLimitedUntil) {
				x.RateLimitedUntil = u.RateLimitedUntil.UTC().Format(time.RFC3339)
			}
			out = append(out, x)
		}
	}
	return apiJSON(w, http.StatusOK, map[string]any{"upstreams": out})
}

// apiEvents lists the recent errors and audit events (registry admins).
func (reg *Registry) apiEvents(w http.ResponseWriter, r *http.Request) error {
	c, err := reg.apiCaller(r)
	if err != nil {
		return err
	}
	if !reg.policy().RegistryAdmin(c.Subject) {
		return reg.apiDenied(r, c, "see the registry's events")
	}
	reg.book.mu.Lock()
	errs := make([]string, 0, len(reg.book.errors))
	for _, e := range reg.book.errors {
		errs = append(errs, e.text)
	}
	audits := append([]auth.AuditEvent{}, reg.book.audits...)
	reg.book.mu.Unlock()
	return apiJSON(w, http.StatusOK, map[string]any{"errors": errs, "audit": audits})
}

func refSep(ref string) string {
	if strings.Contains(ref, ":") {
		return "@"
	}
	return ":"
}

// apiGC collects now: a dry run reports what would go; a real one frees
// at once what the API's deletes released (no grace for them).
func (reg *Registry) apiGC(w http.ResponseWriter, r *http.Request) error {
	c, err := reg.apiCaller(r)
	if err != nil {
		return err
	}
	if !reg.policy().RegistryAdmin(c.Subject) {
		return reg.apiDenied(r, c, "run garbage collection")
	}
	dry := r.URL.Query().Get("dry_run") == "true" || r.URL.Query().Get("dry_run") == "1"
	start := time.Now()
	rep, err := reg.collect(r.Context(), dry)
	if !dry {
		reg.NoteGC("api", c.User, rep, time.Since(start), err)
		reg.forgetReclaimable()
	}
	if err != nil {
		return err
	}
	reg.gate.Audit(r, "gc", slog.Bool("dry_run", dry), slog.Int64("freed_bytes", rep.Bytes), slog.Int("blobs", rep.Blobs))
	items := rep.Items
	if items == nil {
		items = []string{}
	}
	return apiJSON(w, http.StatusOK, map[string]any{"dry_run": dry, "bytes": rep.Bytes, "manifests": rep.Manifests, "links": rep.Links,
		"blobs": rep.Blobs, "orphans": rep.Orphans, "items": items, "took_ms": time.Since(start).Milliseconds()})
}
