package admin

import (
	"encoding/json"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/wharf-registry/wharf/cache"
	"github.com/wharf-registry/wharf/mirror/auth"
	"github.com/wharf-registry/wharf/mirror/oci"
)

// The admin API (/api/v1/) is what the console and `wharf … --server` use:
// JSON, authorized per call by the same users and rules as the registry
// (reads of a repository need pull on it; deleting and evicting need
// delete or admin on it; usage, GC and upstreams need admin on "**"),
// audited, and safe while serving. Errors are the OCI error format.
//
//	GET    /api/v1/repositories                     repositories the caller may pull
//	GET    /api/v1/repositories/<name>/tags         a repository's tags
//	DELETE /api/v1/repositories/<name>/tags/<tag>   untag
//	DELETE /api/v1/repositories/<name>/manifests/<digest>  delete a manifest (and its tags)
//	DELETE /api/v1/repositories/<name>              evict a mirrored image (all its tags)
//	GET    /api/v1/usage                            usage by repository and in total
//	GET    /api/v1/upstreams                        upstream health and rate-limit headroom
//	GET    /api/v1/events                           recent errors and audit events
//	POST   /api/v1/gc[?dry_run=true]                collect now; what a deliberate delete
//	                                                released gets no grace
const APIPrefix = "/api/v1/"

// RepoInfo is one repository in the API's listings.
type RepoInfo struct {
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

type TagInfo struct {
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

// ServeAPI answers /api/v1/ requests.
func (svc *Service) ServeAPI(w http.ResponseWriter, r *http.Request) error {
	rest := strings.TrimPrefix(r.URL.Path, APIPrefix)
	if r.Method != http.MethodGet && r.Method != http.MethodHead && auth.CrossSite(r) {
		// A browser's form from another site, sending credentials it
		// keeps for this one: never a script's call.
		svc.gate.Audit(r, "denied", slog.String("api", r.Method+" "+r.URL.Path), slog.String("reason", "cross-site request"))
		return oci.Errorf(oci.CodeDenied, "cross-site requests may not change anything")
	}
	switch {
	case rest == "repositories" && r.Method == http.MethodGet:
		return svc.apiRepositories(w, r)
	case rest == "usage" && r.Method == http.MethodGet:
		return svc.apiUsage(w, r)
	case rest == "gc" && r.Method == http.MethodPost:
		return svc.apiGC(w, r)
	case rest == "retention" && r.Method == http.MethodPost:
		return svc.apiRetention(w, r)
	case rest == "events" && r.Method == http.MethodGet:
		return svc.apiEvents(w, r)
	case rest == "upstreams" && r.Method == http.MethodGet:
		return svc.apiUpstreams(w, r)
	case rest == "tokens":
		return svc.apiTokens(w, r, "")
	case strings.HasPrefix(rest, "tokens/"):
		return svc.apiTokens(w, r, strings.TrimPrefix(rest, "tokens/"))
	case rest == "people" && r.Method == http.MethodGet:
		return svc.apiPeople(w, r, "")
	case strings.HasPrefix(rest, "people/") && r.Method == http.MethodDelete:
		return svc.apiPeople(w, r, strings.TrimPrefix(rest, "people/"))
	case strings.HasPrefix(rest, "repositories/"):
		name, what, ok := splitAPIRepo(strings.TrimPrefix(rest, "repositories/"))
		if !ok {
			break
		}
		switch {
		case what == "" && r.Method == http.MethodDelete:
			return svc.apiEvict(w, r, name)
		case what == "tags" && r.Method == http.MethodGet:
			return svc.apiTags(w, r, name)
		case strings.HasPrefix(what, "tags/") && r.Method == http.MethodDelete:
			return svc.apiDelete(w, r, name, strings.TrimPrefix(what, "tags/"))
		case strings.HasPrefix(what, "manifests/") && r.Method == http.MethodDelete:
			ref := strings.TrimPrefix(what, "manifests/")
			if _, err := digest.Parse(ref); err != nil {
				return oci.Errorf(oci.CodeDigestInvalid, "not a digest: %q", ref)
			}
			return svc.apiDelete(w, r, name, ref)
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
func (svc *Service) apiCaller(r *http.Request) (auth.Caller, error) {
	c := auth.CallerOf(r)
	if err := c.Refusal(); err != nil {
		return c, err
	}
	return c, nil
}

// apiDenied is the refusal of a call: 401 (Basic) for an anonymous caller,
// 403 for a signed-in one.
func (svc *Service) apiDenied(r *http.Request, c auth.Caller, what string) error {
	svc.gate.Audit(r, "denied", slog.String("api", r.Method+" "+r.URL.Path))
	if c.User == "" {
		return &oci.Error{Code: oci.CodeUnauthorized, Message: "sign in (Basic credentials) to " + what, Challenge: `Basic realm="Wharf admin API"`}
	}
	return oci.Errorf(oci.CodeDenied, "%s may not %s", c.User, what)
}

// apiJSON answers status with v as JSON.
func apiJSON(w http.ResponseWriter, status int, v any) error {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	return json.NewEncoder(w).Encode(v)
}

func info(u cache.RepoUsage) RepoInfo {
	ri := RepoInfo{Name: u.Repo, Origin: "pushed", Bytes: u.Bytes, Blobs: u.Blobs, Manifests: u.Manifests, Tags: u.Tags}
	if u.Origin.Mirrored() {
		ri.Origin, ri.Registry = "mirrored", u.Origin.Registry
	}
	return ri
}

func (svc *Service) apiRepositories(w http.ResponseWriter, r *http.Request) error {
	c, err := svc.apiCaller(r)
	if err != nil {
		return err
	}
	rows, err := svc.Repositories(c.Subject)
	if err != nil {
		return err
	}
	out := make([]RepoInfo, 0, len(rows))
	for _, row := range rows {
		out = append(out, row.RepoInfo)
	}
	return apiJSON(w, http.StatusOK, map[string]any{"repositories": out})
}

func (svc *Service) apiUsage(w http.ResponseWriter, r *http.Request) error {
	c, err := svc.apiCaller(r)
	if err != nil {
		return err
	}
	if !svc.gate.Policy().RegistryAdmin(c.Subject) {
		return svc.apiDenied(r, c, "see the registry's usage")
	}
	usage, total, err := svc.store.Maintenance().Usage()
	if err != nil {
		return err
	}
	repos := make([]RepoInfo, 0, len(usage))
	for _, u := range usage {
		repos = append(repos, info(u))
	}
	out := map[string]any{"total_bytes": total, "repositories": repos}
	if svc.opts.StatusInfo != nil {
		out["quota_bytes"] = svc.opts.StatusInfo().QuotaBytes
	}
	quotas, err := svc.QuotaUsage()
	if err != nil {
		return err
	}
	out["quotas"] = quotas
	return apiJSON(w, http.StatusOK, out)
}

func (svc *Service) apiTags(w http.ResponseWriter, r *http.Request, repo string) error {
	c, err := svc.apiCaller(r)
	if err != nil {
		return err
	}
	if !svc.MayPull(c.Subject, repo) {
		if c.User == "" && !svc.gate.Policy().Open() {
			return svc.apiDenied(r, c, "list "+repo)
		}
		return oci.Errorf(oci.CodeNameUnknown, "repository name not known to registry") // never say a private name exists
	}
	rows, err := svc.RepoTags(repo, -1)
	if err != nil {
		return err
	}
	out := []TagInfo{}
	for _, row := range rows {
		ti := row.TagInfo
		ti.Pushed, ti.Pulls, ti.LastPulled = rfc3339(row.PushedAt), row.Pulls, rfc3339(row.LastPulled)
		out = append(out, ti)
	}
	return apiJSON(w, http.StatusOK, map[string]any{"name": repo, "tags": out})
}

// apiDelete untags (ref a tag) or deletes a manifest (ref a digest); the
// store records what it released, which the next collection frees without
// waiting for the grace period (cache/released.go).
func (svc *Service) apiDelete(w http.ResponseWriter, r *http.Request, repo, ref string) error {
	c, err := svc.apiCaller(r)
	if err != nil {
		return err
	}
	if err := svc.mayWrite(r, c, repo); err != nil {
		return err
	}
	if err := svc.Delete(r, c, repo, ref); err != nil {
		return err
	}
	svc.gate.Audit(r, "delete", slog.String("repo", repo), slog.String("ref", ref), slog.String("via", "api"))
	return apiJSON(w, http.StatusAccepted, map[string]string{"deleted": repo + RefSep(ref) + ref})
}

// mayWrite decides an API delete or eviction in repo: the caller needs
// delete or admin there, and with no users configured (everyone may do
// everything) the server must have been started with --allow-delete.
func (svc *Service) mayWrite(r *http.Request, c auth.Caller, repo string) error {
	if svc.ReadOnly() {
		return oci.ErrReadOnly
	}
	if svc.DeletesDisabled() {
		return oci.ErrDeleteDisabled
	}
	if !svc.MayDelete(c.Subject, repo) {
		return svc.apiDenied(r, c, "delete in "+repo)
	}
	return nil
}

// apiEvict untags every tag of a mirrored repository: the next collection
// frees what only they used, and the next pull fetches it again.
func (svc *Service) apiEvict(w http.ResponseWriter, r *http.Request, repo string) error {
	c, err := svc.apiCaller(r)
	if err != nil {
		return err
	}
	if err := svc.mayWrite(r, c, repo); err != nil {
		return err
	}
	evicted, err := svc.Evict(repo)
	if err != nil {
		return err
	}
	svc.gate.Audit(r, "evict", slog.String("repo", repo), slog.Int("tags", len(evicted)), slog.String("via", "api"))
	return apiJSON(w, http.StatusAccepted, map[string]any{"evicted": repo, "tags": evicted})
}

// apiUpstreams is the status page's upstream table, as JSON (public, as
// that page is).
func (svc *Service) apiUpstreams(w http.ResponseWriter, r *http.Request) error {
	type row struct {
		Name               string `json:"name"`
		Endpoint           string `json:"endpoint"`
		Up                 bool   `json:"up"`
		RateLimitedUntil   string `json:"rate_limited_until,omitempty"`
		RateLimitRemaining int    `json:"rate_limit_remaining"` // -1: never reported
		LastError          string `json:"last_error,omitempty"`
	}
	out := []row{}
	if svc.opts.StatusInfo != nil {
		for _, u := range svc.opts.StatusInfo().Upstreams {
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
func (svc *Service) apiEvents(w http.ResponseWriter, r *http.Request) error {
	c, err := svc.apiCaller(r)
	if err != nil {
		return err
	}
	if !svc.gate.Policy().RegistryAdmin(c.Subject) {
		return svc.apiDenied(r, c, "see the registry's events")
	}
	recent := svc.RecentErrors()
	errs := make([]string, 0, len(recent))
	for i := len(recent) - 1; i >= 0; i-- { // oldest first
		errs = append(errs, recent[i].Text)
	}
	audits := svc.Audits()
	if audits == nil {
		audits = []auth.AuditEvent{}
	}
	return apiJSON(w, http.StatusOK, map[string]any{"errors": errs, "audit": audits})
}

// apiGC collects now: a dry run reports what would go; a real one frees
// at once what the API's deletes released (no grace for them).
func (svc *Service) apiGC(w http.ResponseWriter, r *http.Request) error {
	c, err := svc.apiCaller(r)
	if err != nil {
		return err
	}
	if !svc.gate.Policy().RegistryAdmin(c.Subject) {
		return svc.apiDenied(r, c, "run garbage collection")
	}
	dry := r.URL.Query().Get("dry_run") == "true" || r.URL.Query().Get("dry_run") == "1"
	start := time.Now()
	rep, err := svc.Collect(r.Context(), dry)
	if !dry {
		svc.NoteGC("api", c.User, rep, time.Since(start), err)
		svc.ForgetReclaimable()
	}
	if err != nil {
		return err
	}
	svc.gate.Audit(r, "gc", slog.Bool("dry_run", dry), slog.Int64("freed_bytes", rep.Bytes), slog.Int("blobs", rep.Blobs))
	items := rep.Items
	if items == nil {
		items = []string{}
	}
	return apiJSON(w, http.StatusOK, map[string]any{"dry_run": dry, "bytes": rep.Bytes, "manifests": rep.Manifests, "links": rep.Links,
		"blobs": rep.Blobs, "orphans": rep.Orphans, "items": items, "took_ms": time.Since(start).Milliseconds()})
}
