package mirror

import (
	"context"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/wharf-registry/wharf/cache"
	"github.com/wharf-registry/wharf/mirror/auth"
	"github.com/wharf-registry/wharf/mirror/oci"
	"github.com/wharf-registry/wharf/policy"
)

//go:embed console/*.html
var consoleFiles embed.FS

// consoleTemplates is the console's one template set ("page:<name>" for
// each page, with the layout's "head" and "foot"), parsed on first use: a
// server nobody browses keeps no templates in memory.
var consoleTemplates = sync.OnceValue(func() *template.Template {
	funcs := template.FuncMap{"bytes": func(n int64) string { return humanBytes(float64(n)) },
		"ago": ago, "exact": exact, "sep": refSep, "iso": func(t time.Time) string { return t.UTC().Format(time.RFC3339) },
		"short": func(d string) string {
			if _, hex, ok := strings.Cut(d, ":"); ok && len(hex) > 12 {
				return hex[:12]
			}
			return d
		}}
	return template.Must(template.New("console").Funcs(funcs).ParseFS(consoleFiles, "console/*.html"))
})

// page is what every console page renders with.
type page struct {
	Title   string
	Nav     string // the active section
	User    string
	Basic   bool
	CSRF    string
	Admin   bool
	NoUsers bool
	Flash   string
	Path    string
	Data    any
}

func (reg *Registry) subject(v auth.Viewer) policy.Subject { return policy.Subject{User: v.User} }

func (reg *Registry) newPage(r *http.Request, v auth.Viewer, title string) *page {
	return &page{Title: title, User: v.User, Basic: v.Basic, CSRF: v.CSRF(), Admin: reg.policy().RegistryAdmin(reg.subject(v)),
		NoUsers: !reg.gate.Required(), Path: r.URL.RequestURI()}
}

func (reg *Registry) render(w http.ResponseWriter, status int, name string, p *page) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	if err := consoleTemplates().ExecuteTemplate(w, "page:"+name, p); err != nil {
		reg.log.Warn("console page", "page", name, "err", err)
	}
}

func (reg *Registry) consoleError(w http.ResponseWriter, r *http.Request, v auth.Viewer, status int, msg string) {
	p := reg.newPage(r, v, http.StatusText(status))
	p.Data = msg
	reg.render(w, status, "error", p)
}

func retryAfterSeconds(d time.Duration) string {
	return strconv.Itoa(int((d + time.Second - 1) / time.Second))
}

// ago is a time relative to now, in words.
func ago(t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	d := time.Since(t)
	switch {
	case d < 0:
		return "just now"
	case d < time.Minute:
		return fmt.Sprintf("%d s ago", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%d min ago", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%d h ago", int(d.Hours()))
	default:
		return fmt.Sprintf("%d days ago", int(d.Hours()/24))
	}
}

func exact(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format("2006-01-02 15:04:05 UTC")
}

// column is a sortable table heading: a link that sorts by it (and
// reverses when it is the current order).
type column struct {
	Label, URL, Arrow string
	Sort              string // aria-sort
}

func columns(r *http.Request, current, order string, fields ...string) []column {
	var out []column
	for i := 0; i+1 < len(fields); i += 2 {
		key, label := fields[i], fields[i+1]
		q := r.URL.Query()
		q.Set("sort", key)
		next, c := "asc", column{Label: label, Sort: "none"}
		if key == current {
			if order == "asc" {
				next, c.Arrow, c.Sort = "desc", " ▲", "ascending"
			} else {
				c.Arrow, c.Sort = " ▼", "descending"
			}
		} else if key != "name" && key != "tag" {
			next = "desc" // sizes and times: largest or latest first
		}
		q.Set("order", next)
		c.URL = "?" + q.Encode()
		out = append(out, c)
	}
	return out
}

// sortBy sorts rows by ?sort= (a key of less; def when absent or unknown)
// and ?order= (asc or desc), and returns the order used.
func sortBy[T any](r *http.Request, rows []T, def, defOrder string, less map[string]func(a, b T) bool) (key, order string) {
	key, order = r.URL.Query().Get("sort"), r.URL.Query().Get("order")
	if less[key] == nil {
		key, order = def, defOrder
	}
	if order != "asc" && order != "desc" {
		order = defOrder
	}
	by := less[key]
	sort.SliceStable(rows, func(i, j int) bool {
		if order == "desc" {
			return by(rows[j], rows[i])
		}
		return by(rows[i], rows[j])
	})
	return key, order
}

// overview is the overview page's data.
type overview struct {
	statusPage
	Traffic, Disk *chart
	Reclaimable   string
	ReclaimErr    string
	Repositories  int
}

func (reg *Registry) pageOverview(w http.ResponseWriter, r *http.Request, v auth.Viewer) {
	p := reg.newPage(r, v, "Overview")
	p.Nav = "overview"
	o := overview{statusPage: reg.statusData(reg.subject(v))}
	points := reg.chartPoints()
	o.Traffic, o.Disk = trafficChart(points), diskChart(points)
	if p.Admin {
		if n, err := reg.reclaimable(); err != nil {
			o.ReclaimErr = err.Error()
		} else {
			o.Reclaimable = humanBytes(float64(n))
		}
	}
	p.Data = o
	reg.render(w, http.StatusOK, "overview", p)
}

// reclaimable is what a collection would free now (a dry run, at most
// once every 30 s, and one at a time: page views meanwhile get the last
// figure).
func (reg *Registry) reclaimable() (int64, error) {
	reg.admin.mu.Lock()
	at, n, busy := reg.admin.reclaimAt, reg.admin.reclaim, reg.admin.reclaiming
	if time.Since(at) < 30*time.Second || busy && !at.IsZero() {
		reg.admin.mu.Unlock()
		return n, nil
	}
	reg.admin.reclaiming = true
	reg.admin.mu.Unlock()
	// The scheduler runs it between its jobs: a page does not wait long
	// behind a collection or an eviction, it shows the last figure.
	ctx, cancel := context.WithTimeout(context.Background(), reclaimWait)
	defer cancel()
	rep, err := reg.collect(ctx, true)
	reg.admin.mu.Lock()
	reg.admin.reclaiming = false
	reg.admin.mu.Unlock()
	if errors.Is(err, context.DeadlineExceeded) && !at.IsZero() {
		return n, nil
	} else if errors.Is(err, context.DeadlineExceeded) {
		return 0, errors.New("maintenance is busy; reload in a minute")
	}
	if err != nil {
		return 0, err
	}
	reg.admin.mu.Lock()
	reg.admin.reclaimAt, reg.admin.reclaim = time.Now(), rep.Bytes
	reg.admin.mu.Unlock()
	return rep.Bytes, nil
}

// reclaimWait bounds how long the overview waits for the scheduler's dry
// run.
const reclaimWait = 3 * time.Second

// forgetReclaimable makes the next overview compute it again.
func (reg *Registry) forgetReclaimable() {
	reg.admin.mu.Lock()
	reg.admin.reclaimAt = time.Time{}
	reg.admin.mu.Unlock()
}

type repoRow struct {
	repoInfo
	Pulls      int64
	LastPulled time.Time
}

func (reg *Registry) pageRepositories(w http.ResponseWriter, r *http.Request, v auth.Viewer) {
	p := reg.newPage(r, v, "Repositories")
	p.Nav = "repositories"
	q := r.URL.Query()
	search, origin := strings.TrimSpace(q.Get("q")), q.Get("origin")
	usage, _, err := reg.store.Maintenance().Usage()
	if err != nil {
		reg.consoleError(w, r, v, http.StatusServiceUnavailable, "The index could not be read: "+err.Error())
		return
	}
	pulls, _ := reg.store.Records().RepoPulls()
	subject := reg.subject(v)
	rows := []repoRow{}
	for _, u := range usage {
		if u.Manifests == 0 || !reg.mayPull(subject, u.Repo) {
			continue
		}
		ri := info(u)
		if search != "" && !strings.Contains(ri.Name, strings.ToLower(search)) || origin != "" && ri.Origin != origin {
			continue
		}
		rows = append(rows, repoRow{repoInfo: ri, Pulls: pulls[u.Repo].Count, LastPulled: pulls[u.Repo].Last})
	}
	key, order := sortBy(r, rows, "name", "asc", map[string]func(a, b repoRow) bool{
		"name":   func(a, b repoRow) bool { return a.Name < b.Name },
		"size":   func(a, b repoRow) bool { return a.Bytes < b.Bytes },
		"tags":   func(a, b repoRow) bool { return a.Tags < b.Tags },
		"pulls":  func(a, b repoRow) bool { return a.Pulls < b.Pulls },
		"pulled": func(a, b repoRow) bool { return a.LastPulled.Before(b.LastPulled) },
	})
	p.Data = map[string]any{"Rows": rows, "Q": search, "Origin": origin, "Sort": key, "Order": order,
		"Columns": columns(r, key, order, "name", "Name", "size", "Size", "tags", "Tags", "pulls", "Pulls", "pulled", "Last pulled")}
	reg.render(w, http.StatusOK, "repositories", p)
}

type tagRow struct {
	tagInfo
	PushedAt    time.Time
	Pulls       int64
	LastPulled  time.Time
	Labels      []kv
	Annotations []kv
}

type kv struct{ Key, Value string }

func (reg *Registry) pageRepository(w http.ResponseWriter, r *http.Request, v auth.Viewer, repo string) {
	subject := reg.subject(v)
	if !oci.ValidName(repo) || !reg.mayPull(subject, repo) {
		if v.User == "" && !reg.policy().Open() {
			http.Redirect(w, r, "/signin?next="+url.QueryEscape(r.URL.RequestURI()), http.StatusSeeOther)
			return
		}
		reg.consoleError(w, r, v, http.StatusNotFound, "No such repository (or not one you may see).")
		return
	}
	if r.Method == http.MethodPost {
		reg.repositoryAction(w, r, v, repo)
		return
	}
	if action := r.URL.Query().Get("action"); action == "delete" || action == "evict" {
		reg.confirmPage(w, r, v, repo, action, r.URL.Query().Get("ref"))
		return
	}
	tags, err := reg.repoTags(repo, 50)
	if err != nil {
		reg.consoleError(w, r, v, http.StatusServiceUnavailable, "The index could not be read: "+err.Error())
		return
	}
	key, order := sortBy(r, tags, "tag", "asc", map[string]func(a, b tagRow) bool{
		"tag":    func(a, b tagRow) bool { return a.Tag < b.Tag },
		"size":   func(a, b tagRow) bool { return a.Bytes < b.Bytes },
		"pushed": func(a, b tagRow) bool { return a.PushedAt.Before(b.PushedAt) },
		"pulls":  func(a, b tagRow) bool { return a.Pulls < b.Pulls },
		"pulled": func(a, b tagRow) bool { return a.LastPulled.Before(b.LastPulled) },
	})
	o, _ := reg.store.Origin(repo)
	p := reg.newPage(r, v, repo)
	p.Nav = "repositories"
	p.Flash = r.URL.Query().Get("done")
	host := strings.TrimPrefix(strings.TrimPrefix(reg.gate.ExternalBase(r), "https://"), "http://")
	deletes := reg.mayDelete(subject, repo) && (!reg.policy().Open() || reg.opts.AllowDelete)
	p.Data = map[string]any{"Repo": repo, "Host": host, "Tags": tags, "Mirrored": o.Mirrored(), "Registry": o.Registry,
		"CanDelete": deletes, "Columns": columns(r, key, order, "tag", "Tag", "size", "Size", "pushed", "Stored", "pulls", "Pulls", "pulled", "Last pulled")}
	reg.render(w, http.StatusOK, "repository", p)
}

// repoTags is a repository's tags with sizes, pulls, labels and
// annotations (details for the first detailed tags only; 0: all, -1:
// none).
func (reg *Registry) repoTags(repo string, detailed int) ([]tagRow, error) {
	names, _, err := reg.store.Tags(repo, -1, "")
	if err != nil {
		return nil, err
	}
	pulls, _ := reg.store.Records().Pulls(repo)
	rows := []tagRow{}
	for i, tag := range names {
		m, err := reg.store.GetManifest(repo, tag)
		if errors.Is(err, cache.ErrManifestUnknown) {
			continue
		} else if err != nil {
			return nil, err
		}
		row := tagRow{tagInfo: tagInfo{Tag: tag, Digest: m.Digest.String(), MediaType: m.MediaType, Bytes: reg.imageBytes(repo, m, 0),
			Platforms: indexPlatforms(m.Body)}, PushedAt: m.Pushed}
		byTag, byDigest := pulls[tag], pulls[m.Digest.String()]
		row.Pulls, row.LastPulled = byTag.Count, byTag.Last
		if byDigest.Last.After(row.LastPulled) {
			row.LastPulled = byDigest.Last
		}
		if detailed == 0 || i < detailed {
			row.Labels, row.Annotations = reg.imageMeta(repo, m)
		}
		rows = append(rows, row)
	}
	return rows, nil
}

// imageMeta reads an image's labels (from its config, when stored here and
// small) and its manifest's annotations.
func (reg *Registry) imageMeta(repo string, m *cache.Manifest) (labels, annotations []kv) {
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
	annotations = sortedKV(body.Annotations)
	if body.Config == nil || body.Config.Size > 256<<10 {
		return nil, annotations
	}
	rc, _, err := reg.store.OpenBlob(repo, body.Config.Digest)
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
		labels = sortedKV(cfg.Config.Labels)
	}
	return labels, annotations
}

func sortedKV(m map[string]string) []kv {
	out := make([]kv, 0, len(m))
	for k, v := range m {
		out = append(out, kv{k, v})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out
}

// wouldFree is what deleting refs of repo would free: a dry run without
// them, less what is collectable anyway.
func (reg *Registry) wouldFree(repo string, refs []string) (int64, error) {
	base, err := reg.collect(context.Background(), true)
	if err != nil {
		return 0, err
	}
	without, err := reg.collectWithout(context.Background(), true, map[string][]string{repo: refs})
	if err != nil {
		return 0, err
	}
	return max(0, without.Bytes-base.Bytes), nil
}

// confirmPage asks before a delete or an eviction, saying what it frees.
func (reg *Registry) confirmPage(w http.ResponseWriter, r *http.Request, v auth.Viewer, repo, action, ref string) {
	var refs []string
	switch action {
	case "delete":
		if _, err := digest.Parse(ref); err != nil && !oci.ValidTag(ref) {
			reg.consoleError(w, r, v, http.StatusBadRequest, "Not a tag or a digest.")
			return
		}
		if _, err := reg.store.GetManifest(repo, ref); err != nil {
			reg.consoleError(w, r, v, http.StatusNotFound, "No such tag or manifest in this repository.")
			return
		}
		refs = []string{ref}
	case "evict":
		refs, _, _ = reg.store.Tags(repo, -1, "")
	}
	freed, err := reg.wouldFree(repo, refs)
	p := reg.newPage(r, v, "Confirm")
	p.Nav = "repositories"
	data := map[string]any{"Repo": repo, "Action": action, "Ref": ref, "Tags": refs, "Freed": humanBytes(float64(freed))}
	if err != nil {
		data["Freed"] = "an unknown amount (" + err.Error() + ")"
	}
	p.Data = data
	reg.render(w, http.StatusOK, "confirm", p)
}

// repositoryAction deletes a tag or manifest, or evicts a mirrored image,
// from a confirmed form.
func (reg *Registry) repositoryAction(w http.ResponseWriter, r *http.Request, v auth.Viewer, repo string) {
	if reg.policy().Open() && !reg.opts.AllowDelete {
		reg.consoleError(w, r, v, http.StatusMethodNotAllowed, "Deleting is disabled on this server: with no users configured, start it with --allow-delete.")
		return
	}
	if !reg.mayDelete(reg.subject(v), repo) {
		reg.gate.Audit(r, "denied", slog.String("console", "delete in "+repo))
		reg.consoleError(w, r, v, http.StatusForbidden, "You may not delete in "+repo+".")
		return
	}
	var done string
	switch r.PostFormValue("action") {
	case "delete":
		ref := r.PostFormValue("ref")
		if _, err := digest.Parse(ref); err != nil && !oci.ValidTag(ref) {
			reg.consoleError(w, r, v, http.StatusBadRequest, "Not a tag or a digest.")
			return
		}
		if err := reg.store.DeleteReleasing(repo, ref); err != nil {
			reg.consoleError(w, r, v, statusOf(err), "The delete failed: "+err.Error())
			return
		}
		reg.gate.AuditAs(r, v.User, "delete", slog.String("repo", repo), slog.String("ref", ref), slog.String("via", "console"))
		done = "Deleted " + repo + refSep(ref) + ref + ". Its space comes back within seconds."
	case "evict":
		tags, err := reg.evict(repo)
		if err != nil {
			reg.consoleError(w, r, v, statusOf(err), "The eviction failed: "+err.Error())
			return
		}
		reg.gate.AuditAs(r, v.User, "evict", slog.String("repo", repo), slog.Int("tags", len(tags)), slog.String("via", "console"))
		done = fmt.Sprintf("Evicted %s (%d tags). The next pull fetches it again.", repo, len(tags))
	default:
		reg.consoleError(w, r, v, http.StatusBadRequest, "Unknown action.")
		return
	}
	reg.forgetReclaimable()
	http.Redirect(w, r, "/repositories/"+repo+"?done="+url.QueryEscape(done), http.StatusSeeOther)
}

// statusOf is the HTTP status err has in the OCI error format.
func statusOf(err error) int { return toAPIError(err, routeManifest).StatusCode() }

func (reg *Registry) pageGC(w http.ResponseWriter, r *http.Request, v auth.Viewer) {
	if !reg.needAdmin(w, r, v) {
		return
	}
	if r.Method == http.MethodPost {
		start := time.Now()
		rep, err := reg.collect(r.Context(), false)
		reg.NoteGC("console", v.User, rep, time.Since(start), err)
		reg.gate.AuditAs(r, v.User, "gc", slog.Bool("dry_run", false), slog.Int64("freed_bytes", rep.Bytes), slog.Int("blobs", rep.Blobs), slog.String("via", "console"))
		reg.forgetReclaimable()
		msg := fmt.Sprintf("Collected: %s freed (%d blobs, %d manifests, %d links).", humanBytes(float64(rep.Bytes)), rep.Blobs, rep.Manifests, rep.Links)
		if err != nil {
			msg = "The collection failed: " + err.Error()
		}
		http.Redirect(w, r, "/gc?done="+url.QueryEscape(msg), http.StatusSeeOther)
		return
	}
	p := reg.newPage(r, v, "Garbage collection")
	p.Nav = "gc"
	p.Flash = r.URL.Query().Get("done")
	preview, err := reg.collect(context.Background(), true)
	items := preview.Items
	more := 0
	if len(items) > 200 {
		more, items = len(items)-200, items[:200]
	}
	runs := reg.gcRuns(maxGCRuns)
	data := map[string]any{"Preview": preview, "Items": items, "More": more, "Runs": runs, "Grace": reg.gcGrace().String()}
	if err != nil {
		data["Err"] = err.Error()
	}
	p.Data = data
	reg.render(w, http.StatusOK, "gc", p)
}

func (reg *Registry) gcGrace() time.Duration {
	if reg.opts.GCGrace > 0 {
		return reg.opts.GCGrace
	}
	return time.Hour
}

func (reg *Registry) pageUpstreams(w http.ResponseWriter, r *http.Request, v auth.Viewer) {
	p := reg.newPage(r, v, "Upstreams")
	p.Nav = "upstreams"
	p.Data = reg.statusData(reg.subject(v)).Upstreams
	reg.render(w, http.StatusOK, "upstreams", p)
}

type userRow struct {
	Name   string
	Groups []string
	Admin  bool
}

func (reg *Registry) pageUsers(w http.ResponseWriter, r *http.Request, v auth.Viewer) {
	if !reg.needAdmin(w, r, v) {
		return
	}
	pol := reg.policy()
	var rows []userRow
	if named, ok := reg.gate.Users().(interface{ Names() []string }); ok {
		for _, u := range named.Names() {
			rows = append(rows, userRow{Name: u, Groups: pol.GroupsOf(u), Admin: pol.RegistryAdmin(policy.Subject{User: u})})
		}
	}
	p := reg.newPage(r, v, "Users and rules")
	p.Nav = "users"
	p.Data = map[string]any{"Users": rows, "Rules": pol.Rules(), "Open": pol.Open(), "AnonMirror": pol.AnonymousMirrorPull()}
	reg.render(w, http.StatusOK, "users", p)
}

type auditRow struct {
	At                  time.Time
	User, Event, Client string
	Attrs               []kv
}

func (reg *Registry) pageAudit(w http.ResponseWriter, r *http.Request, v auth.Viewer) {
	if !reg.needAdmin(w, r, v) {
		return
	}
	reg.book.mu.Lock()
	audits := append([]auth.AuditEvent(nil), reg.book.audits...)
	booked := append([]bookedError(nil), reg.book.errors...)
	reg.book.mu.Unlock()
	filter := strings.TrimSpace(r.URL.Query().Get("q"))
	var rows []auditRow
	for i := len(audits) - 1; i >= 0; i-- {
		e := audits[i]
		at, _ := time.Parse(time.RFC3339, e.Time)
		row := auditRow{At: at, User: e.User, Event: e.Event, Client: e.Client, Attrs: sortedKV(e.Attrs)}
		if filter != "" && !strings.Contains(fmt.Sprint(row.User, " ", row.Event, " ", row.Attrs), filter) {
			continue
		}
		rows = append(rows, row)
	}
	var errs []shownError
	for i := len(booked) - 1; i >= 0; i-- {
		errs = append(errs, shownError{At: booked[i].at, Text: booked[i].text})
	}
	p := reg.newPage(r, v, "Audit log")
	p.Nav = "audit"
	p.Data = map[string]any{"Rows": rows, "Errors": errs, "Q": filter}
	reg.render(w, http.StatusOK, "audit", p)
}
