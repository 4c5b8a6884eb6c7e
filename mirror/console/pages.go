package console

import (
	"context"
	"embed"
	"fmt"
	"html/template"
	"log/slog"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/wharf-registry/wharf/mirror/admin"
	"github.com/wharf-registry/wharf/mirror/auth"
	"github.com/wharf-registry/wharf/mirror/oci"
	"github.com/wharf-registry/wharf/policy"
)

//go:embed *.html
var consoleFiles embed.FS

// consoleTemplates is the console's one template set ("page:<name>" for
// each page, with the layout's "head" and "foot"), parsed on first use: a
// server nobody browses keeps no templates in memory.
var consoleTemplates = sync.OnceValue(func() *template.Template {
	funcs := template.FuncMap{"bytes": func(n int64) string { return admin.HumanBytes(float64(n)) },
		"ago": ago, "exact": exact, "sep": admin.RefSep, "iso": func(t time.Time) string { return t.UTC().Format(time.RFC3339) },
		"short": func(d string) string {
			if _, hex, ok := strings.Cut(d, ":"); ok && len(hex) > 12 {
				return hex[:12]
			}
			return d
		}}
	return template.Must(template.New("console").Funcs(funcs).ParseFS(consoleFiles, "*.html"))
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
	Refresh string // go on to this page of the console at once (after a sign-in through the provider)
	Data    any
}

func (c *Console) subject(v auth.Viewer) policy.Subject { return c.gate.Subject(v.User) }

func (c *Console) newPage(r *http.Request, v auth.Viewer, title string) *page {
	return &page{Title: title, User: v.User, Basic: v.Basic, CSRF: v.CSRF(), Admin: c.gate.Policy().RegistryAdmin(c.subject(v)),
		NoUsers: !c.gate.Required(), Path: r.URL.RequestURI()}
}

func (c *Console) render(w http.ResponseWriter, status int, name string, p *page) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	if err := consoleTemplates().ExecuteTemplate(w, "page:"+name, p); err != nil {
		c.log.Warn("console page", "page", name, "err", err)
	}
}

func (c *Console) consoleError(w http.ResponseWriter, r *http.Request, v auth.Viewer, status int, msg string) {
	p := c.newPage(r, v, http.StatusText(status))
	p.Data = msg
	c.render(w, status, "error", p)
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
	admin.StatusPage
	Traffic, Disk *chart
	Reclaimable   string
	ReclaimErr    string
	Repositories  int
}

func (c *Console) pageOverview(w http.ResponseWriter, r *http.Request, v auth.Viewer) {
	p := c.newPage(r, v, "Overview")
	p.Nav = "overview"
	o := overview{StatusPage: c.svc.Status(c.subject(v))}
	points := c.svc.ChartPoints()
	o.Traffic, o.Disk = trafficChart(points), diskChart(points)
	if p.Admin {
		if n, err := c.svc.Reclaimable(); err != nil {
			o.ReclaimErr = err.Error()
		} else {
			o.Reclaimable = admin.HumanBytes(float64(n))
		}
	}
	p.Data = o
	c.render(w, http.StatusOK, "overview", p)
}

type repoRow = admin.RepoRow

func (c *Console) pageRepositories(w http.ResponseWriter, r *http.Request, v auth.Viewer) {
	p := c.newPage(r, v, "Repositories")
	p.Nav = "repositories"
	q := r.URL.Query()
	search, origin := strings.TrimSpace(q.Get("q")), q.Get("origin")
	all, err := c.svc.Repositories(c.subject(v))
	if err != nil {
		c.consoleError(w, r, v, http.StatusServiceUnavailable, "The index could not be read: "+err.Error())
		return
	}
	rows := []repoRow{}
	for _, row := range all {
		if search != "" && !strings.Contains(row.Name, strings.ToLower(search)) || origin != "" && row.Origin != origin {
			continue
		}
		rows = append(rows, row)
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
	c.render(w, http.StatusOK, "repositories", p)
}

func (c *Console) pageRepository(w http.ResponseWriter, r *http.Request, v auth.Viewer, repo string) {
	subject := c.subject(v)
	if !oci.ValidName(repo) || !c.svc.MayPull(subject, repo) {
		if v.User == "" && !c.gate.Policy().Open() {
			http.Redirect(w, r, "/signin?next="+url.QueryEscape(r.URL.RequestURI()), http.StatusSeeOther)
			return
		}
		c.consoleError(w, r, v, http.StatusNotFound, "No such repository (or not one you may see).")
		return
	}
	if r.Method == http.MethodPost {
		c.repositoryAction(w, r, v, repo)
		return
	}
	if action := r.URL.Query().Get("action"); action == "delete" || action == "evict" {
		c.confirmPage(w, r, v, repo, action, r.URL.Query().Get("ref"))
		return
	}
	tags, err := c.svc.RepoTags(repo, 50)
	if err != nil {
		c.consoleError(w, r, v, http.StatusServiceUnavailable, "The index could not be read: "+err.Error())
		return
	}
	key, order := sortBy(r, tags, "tag", "asc", map[string]func(a, b admin.TagRow) bool{
		"tag":    func(a, b admin.TagRow) bool { return a.Tag < b.Tag },
		"size":   func(a, b admin.TagRow) bool { return a.Bytes < b.Bytes },
		"pushed": func(a, b admin.TagRow) bool { return a.PushedAt.Before(b.PushedAt) },
		"pulls":  func(a, b admin.TagRow) bool { return a.Pulls < b.Pulls },
		"pulled": func(a, b admin.TagRow) bool { return a.LastPulled.Before(b.LastPulled) },
	})
	o := c.svc.Origin(repo)
	p := c.newPage(r, v, repo)
	p.Nav = "repositories"
	p.Flash = r.URL.Query().Get("done")
	host := strings.TrimPrefix(strings.TrimPrefix(c.gate.ExternalBase(r), "https://"), "http://")
	deletes := c.svc.MayDelete(subject, repo) && !c.svc.DeletesDisabled()
	p.Data = map[string]any{"Repo": repo, "Host": host, "Tags": tags, "Mirrored": o.Mirrored(), "Registry": o.Registry,
		"CanDelete": deletes, "Columns": columns(r, key, order, "tag", "Tag", "size", "Size", "pushed", "Stored", "pulls", "Pulls", "pulled", "Last pulled")}
	c.render(w, http.StatusOK, "repository", p)
}

// confirmPage asks before a delete or an eviction, saying what it frees.
func (c *Console) confirmPage(w http.ResponseWriter, r *http.Request, v auth.Viewer, repo, action, ref string) {
	var refs []string
	switch action {
	case "delete":
		if _, err := digest.Parse(ref); err != nil && !oci.ValidTag(ref) {
			c.consoleError(w, r, v, http.StatusBadRequest, "Not a tag or a digest.")
			return
		}
		if !c.svc.HasRef(repo, ref) {
			c.consoleError(w, r, v, http.StatusNotFound, "No such tag or manifest in this repository.")
			return
		}
		refs = []string{ref}
	case "evict":
		refs, _ = c.svc.Tags(repo)
	}
	freed, err := c.svc.WouldFree(repo, refs)
	p := c.newPage(r, v, "Confirm")
	p.Nav = "repositories"
	data := map[string]any{"Repo": repo, "Action": action, "Ref": ref, "Tags": refs, "Freed": admin.HumanBytes(float64(freed))}
	if err != nil {
		data["Freed"] = "an unknown amount (" + err.Error() + ")"
	}
	p.Data = data
	c.render(w, http.StatusOK, "confirm", p)
}

// repositoryAction deletes a tag or manifest, or evicts a mirrored image,
// from a confirmed form.
func (c *Console) repositoryAction(w http.ResponseWriter, r *http.Request, v auth.Viewer, repo string) {
	if c.svc.ReadOnly() {
		c.consoleError(w, r, v, http.StatusMethodNotAllowed, "This registry is read-only (--read-only): nothing can be deleted or evicted.")
		return
	}
	if c.svc.DeletesDisabled() {
		c.consoleError(w, r, v, http.StatusMethodNotAllowed, "Deleting is disabled on this server: with no users configured, start it with --allow-delete.")
		return
	}
	if !c.svc.MayDelete(c.subject(v), repo) {
		c.gate.Audit(r, "denied", slog.String("console", "delete in "+repo))
		c.consoleError(w, r, v, http.StatusForbidden, "You may not delete in "+repo+".")
		return
	}
	var done string
	switch r.PostFormValue("action") {
	case "delete":
		ref := r.PostFormValue("ref")
		if _, err := digest.Parse(ref); err != nil && !oci.ValidTag(ref) {
			c.consoleError(w, r, v, http.StatusBadRequest, "Not a tag or a digest.")
			return
		}
		if err := c.svc.Delete(r, auth.Caller{Subject: c.subject(v)}, repo, ref); err != nil {
			c.consoleError(w, r, v, c.statusOf(err), "The delete failed: "+err.Error())
			return
		}
		c.gate.AuditAs(r, v.User, "delete", slog.String("repo", repo), slog.String("ref", ref), slog.String("via", "console"))
		done = "Deleted " + repo + admin.RefSep(ref) + ref + ". Its space comes back within seconds."
	case "evict":
		tags, err := c.svc.Evict(repo)
		if err != nil {
			c.consoleError(w, r, v, c.statusOf(err), "The eviction failed: "+err.Error())
			return
		}
		c.gate.AuditAs(r, v.User, "evict", slog.String("repo", repo), slog.Int("tags", len(tags)), slog.String("via", "console"))
		done = fmt.Sprintf("Evicted %s (%d tags). The next pull fetches it again.", repo, len(tags))
	default:
		c.consoleError(w, r, v, http.StatusBadRequest, "Unknown action.")
		return
	}
	c.svc.ForgetReclaimable()
	http.Redirect(w, r, "/repositories/"+repo+"?done="+url.QueryEscape(done), http.StatusSeeOther)
}

func (c *Console) pageGC(w http.ResponseWriter, r *http.Request, v auth.Viewer) {
	if !c.needAdmin(w, r, v) {
		return
	}
	if r.Method == http.MethodPost {
		start := time.Now()
		rep, err := c.svc.Collect(r.Context(), false)
		c.svc.NoteGC("console", v.User, rep, time.Since(start), err)
		c.gate.AuditAs(r, v.User, "gc", slog.Bool("dry_run", false), slog.Int64("freed_bytes", rep.Bytes), slog.Int("blobs", rep.Blobs), slog.String("via", "console"))
		c.svc.ForgetReclaimable()
		msg := fmt.Sprintf("Collected: %s freed (%d blobs, %d manifests, %d links).", admin.HumanBytes(float64(rep.Bytes)), rep.Blobs, rep.Manifests, rep.Links)
		if err != nil {
			msg = "The collection failed: " + err.Error()
		}
		http.Redirect(w, r, "/gc?done="+url.QueryEscape(msg), http.StatusSeeOther)
		return
	}
	p := c.newPage(r, v, "Garbage collection")
	p.Nav = "gc"
	p.Flash = r.URL.Query().Get("done")
	preview, err := c.svc.Collect(context.Background(), true)
	items := preview.Items
	more := 0
	if len(items) > 200 {
		more, items = len(items)-200, items[:200]
	}
	runs := c.svc.GCRuns(admin.MaxGCRuns)
	data := map[string]any{"Preview": preview, "Items": items, "More": more, "Runs": runs, "Grace": c.svc.GCGrace().String()}
	if err != nil {
		data["Err"] = err.Error()
	}
	p.Data = data
	c.render(w, http.StatusOK, "gc", p)
}

func (c *Console) pageUpstreams(w http.ResponseWriter, r *http.Request, v auth.Viewer) {
	p := c.newPage(r, v, "Upstreams")
	p.Nav = "upstreams"
	p.Data = c.svc.Status(c.subject(v)).Upstreams
	c.render(w, http.StatusOK, "upstreams", p)
}

type auditRow struct {
	At                  time.Time
	User, Event, Client string
	Attrs               []admin.KV
}

func (c *Console) pageAudit(w http.ResponseWriter, r *http.Request, v auth.Viewer) {
	if !c.needAdmin(w, r, v) {
		return
	}
	audits := c.svc.Audits()
	filter := strings.TrimSpace(r.URL.Query().Get("q"))
	var rows []auditRow
	for i := len(audits) - 1; i >= 0; i-- {
		e := audits[i]
		at, _ := time.Parse(time.RFC3339, e.Time)
		row := auditRow{At: at, User: e.User, Event: e.Event, Client: e.Client, Attrs: admin.SortedKV(e.Attrs)}
		if filter != "" && !strings.Contains(fmt.Sprint(row.User, " ", row.Event, " ", row.Attrs), filter) {
			continue
		}
		rows = append(rows, row)
	}
	errs := c.svc.RecentErrors()
	p := c.newPage(r, v, "Audit log")
	p.Nav = "audit"
	p.Data = map[string]any{"Rows": rows, "Errors": errs, "Q": filter}
	c.render(w, http.StatusOK, "audit", p)
}
