package mirror

import (
	"fmt"
	"html/template"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/wharf-registry/wharf/cache"
	"github.com/wharf-registry/wharf/policy"
	"github.com/wharf-registry/wharf/upstream"
)

// StatusInfo is what the status page needs from outside the registry.
type StatusInfo struct {
	StoreBytes, QuotaBytes int64
	Upstreams              []upstream.Status
	Cluster                *cache.ClusterHealth // nil on a single box
}

// statusBook keeps what the status page shows over time: samples of the
// traffic counters and the latest errors.
type statusBook struct {
	mu      sync.Mutex
	samples []sample      // one a minute, the last 60
	errors  []bookedError // newest last, at most 12
	audits  []auditEvent  // newest last, at most maxAudits
}

// auditEvent is one audit record kept for the admin API.
type auditEvent struct {
	Time   string            `json:"time"`
	User   string            `json:"user"`
	Event  string            `json:"event"`
	Client string            `json:"client"`
	Attrs  map[string]string `json:"attrs,omitempty"`
}

const maxAudits = 200

func (b *statusBook) noteAudit(e auditEvent) {
	b.mu.Lock()
	b.audits = append(b.audits, e)
	if len(b.audits) > maxAudits {
		b.audits = b.audits[len(b.audits)-maxAudits:]
	}
	b.mu.Unlock()
}

// bookedError is one recent error; repo ("" for none) decides who sees it.
type bookedError struct {
	text string
	repo string
}

type sample struct {
	at                      time.Time
	fromCache, fromUpstream float64 // cumulative blob bytes
}

func (b *statusBook) noteError(repo, s string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.errors = append(b.errors, bookedError{text: time.Now().Format("15:04:05") + "  " + s, repo: repo})
	if len(b.errors) > 12 {
		b.errors = b.errors[len(b.errors)-12:]
	}
}

// sampleNow records the traffic counters (called every minute by cmd, and
// on each page view so the page is current).
func (reg *Registry) sampleNow() {
	m := reg.opts.Metrics
	if m == nil {
		return
	}
	s := sample{at: time.Now(), fromCache: testutil.ToFloat64(m.BytesServed.WithLabelValues("cache")),
		fromUpstream: testutil.ToFloat64(m.UpstreamBytes)}
	b := &reg.book
	b.mu.Lock()
	defer b.mu.Unlock()
	if n := len(b.samples); n > 0 && s.at.Sub(b.samples[n-1].at) < 50*time.Second {
		b.samples[n-1] = s
		return
	}
	b.samples = append(b.samples, s)
	if len(b.samples) > 60 {
		b.samples = b.samples[1:]
	}
}

// Sample records a point of the traffic history; call it every minute.
func (reg *Registry) Sample() { reg.sampleNow() }

type bar struct{ X, H, W float64 }

type statusPage struct {
	Now                      string
	HitRatio                 string
	Hits, Misses             int
	FromCache, FromUp        string
	Saved                    string
	Bars                     []bar
	StoreBytes, Quota        string
	UsedPct                  float64
	Mirrored, Pushed         []string
	MoreMirrored, MorePushed int
	Upstreams                []upstreamRow
	Errors                   []string
	Cluster                  *clusterView
}

// clusterView is the status page's cluster section.
type clusterView struct {
	Node              string
	Members           []memberRow
	Index, IndexState string
	IndexOK           bool
	Store, StoreState string
	StoreOK           bool
	Fills             []fillRow
}

type memberRow struct {
	ID, URL string
	Self    bool
}

type fillRow struct {
	Digest, Repos, Progress, From, Owner string
}

type upstreamRow struct {
	Name, Endpoint, State, Limit, LastError string
	OK                                      bool
}

func humanBytes(n float64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB"}
	i := 0
	for n >= 1024 && i < len(units)-1 {
		n /= 1024
		i++
	}
	if i == 0 {
		return fmt.Sprintf("%.0f B", n)
	}
	return fmt.Sprintf("%.1f %s", n, units[i])
}

// statusHandler renders the page at "/".
func (reg *Registry) status(w http.ResponseWriter, r *http.Request) {
	reg.sampleNow()
	p := statusPage{Now: time.Now().Format("2006-01-02 15:04:05")}
	if m := reg.opts.Metrics; m != nil {
		var hits, misses float64
		for _, k := range []string{"manifest", "blob"} {
			hits += testutil.ToFloat64(m.Cache.WithLabelValues(k, "hit"))
			misses += testutil.ToFloat64(m.Cache.WithLabelValues(k, "miss"))
		}
		p.Hits, p.Misses = int(hits), int(misses)
		p.HitRatio = "–"
		if hits+misses > 0 {
			p.HitRatio = fmt.Sprintf("%.0f%%", 100*hits/(hits+misses))
		}
		fromCache := testutil.ToFloat64(m.BytesServed.WithLabelValues("cache"))
		fromUp := testutil.ToFloat64(m.UpstreamBytes)
		p.FromCache, p.FromUp, p.Saved = humanBytes(fromCache), humanBytes(fromUp), humanBytes(fromCache)
	}
	reg.book.mu.Lock()
	samples := append([]sample(nil), reg.book.samples...)
	booked := append([]bookedError(nil), reg.book.errors...)
	reg.book.mu.Unlock()
	// A viewer sees the errors of repositories they may pull, and those of
	// no repository: private names stay private.
	subject, pol := callerOf(r).Subject, reg.policy()
	for _, e := range booked {
		if e.repo == "" || pol.Allowed(subject, e.repo, policy.Pull, reg.origin(e.repo).Mirrored()) {
			p.Errors = append(p.Errors, e.text)
		}
	}
	var maxD float64
	deltas := make([]float64, 0, len(samples))
	for i := 1; i < len(samples); i++ {
		d := samples[i].fromCache - samples[i-1].fromCache
		deltas = append(deltas, d)
		maxD = max(maxD, d)
	}
	for i, d := range deltas {
		h := 0.0
		if maxD > 0 {
			h = 70 * d / maxD
		}
		p.Bars = append(p.Bars, bar{X: float64(i) * 10, H: h, W: 8})
	}
	if reg.opts.StatusInfo != nil {
		info := reg.opts.StatusInfo()
		p.StoreBytes, p.Quota = humanBytes(float64(info.StoreBytes)), "no quota"
		if info.QuotaBytes > 0 {
			p.Quota = humanBytes(float64(info.QuotaBytes))
			p.UsedPct = min(100, 100*float64(info.StoreBytes)/float64(info.QuotaBytes))
		}
		for _, u := range info.Upstreams {
			row := upstreamRow{Name: u.Name, Endpoint: u.Endpoint, OK: u.Up && time.Now().After(u.RateLimitedUntil), Limit: "not reported", LastError: u.LastError}
			switch {
			case !u.Up:
				row.State = "down"
			case time.Now().Before(u.RateLimitedUntil):
				row.State = "rate limited until " + u.RateLimitedUntil.Format("15:04:05")
			default:
				row.State = "up"
			}
			if u.RateLimitRemaining >= 0 {
				row.Limit = fmt.Sprintf("%d pulls left", u.RateLimitRemaining)
			}
			p.Upstreams = append(p.Upstreams, row)
		}
	}
	if reg.opts.StatusInfo != nil {
		if info := reg.opts.StatusInfo(); info.Cluster != nil {
			p.Cluster = reg.clusterView(*info.Cluster, subject, pol)
		}
	}
	repos, _, _ := reg.visibleRepos(r, 1000, "")
	for _, repo := range repos {
		if reg.origin(repo).Mirrored() {
			p.Mirrored = append(p.Mirrored, repo)
		} else {
			p.Pushed = append(p.Pushed, repo)
		}
	}
	if len(p.Mirrored) > 15 {
		p.MoreMirrored, p.Mirrored = len(p.Mirrored)-15, p.Mirrored[:15]
	}
	if len(p.Pushed) > 15 {
		p.MorePushed, p.Pushed = len(p.Pushed)-15, p.Pushed[:15]
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	if err := statusTemplate.Execute(w, p); err != nil {
		reg.log.Warn("status page", "err", err)
	}
}

// clusterView renders the cluster: members, index and object store
// health, and the downloads in flight with the node that owns each (only
// those of repositories the viewer may pull).
func (reg *Registry) clusterView(h cache.ClusterHealth, subject policy.Subject, pol *policy.Policy) *clusterView {
	v := &clusterView{Node: h.Node, Index: strings.Join(h.Index.Endpoints, ", "), Store: h.BlobStore, IndexOK: h.Index.Healthy, StoreOK: h.BlobStoreErr == ""}
	v.IndexState = fmt.Sprintf("answering; %d changes followed, %d watch restarts", h.Index.Events, h.Index.Restarts)
	if !h.Index.Healthy {
		v.IndexState = "unavailable: " + h.Index.LastError
	}
	v.StoreState = "answering"
	if !v.StoreOK {
		v.StoreState = h.BlobStoreErr
	}
	for id, u := range h.Members {
		v.Members = append(v.Members, memberRow{ID: id, URL: u, Self: id == h.Node})
	}
	sort.Slice(v.Members, func(i, j int) bool { return v.Members[i].ID < v.Members[j].ID })
	if reg.pull != nil {
		for _, f := range reg.pull.fills.Active() {
			visible := false
			for _, repo := range f.Repos {
				visible = visible || pol.Allowed(subject, repo, policy.Pull, true)
			}
			if !visible {
				continue
			}
			row := fillRow{Digest: f.Digest.String(), Repos: strings.Join(f.Repos, ", "), From: "upstream"}
			if f.From != "" {
				row.From = "node " + f.From
			}
			if f.Size > 0 {
				row.Progress = fmt.Sprintf("%s of %s", humanBytes(float64(f.Written)), humanBytes(float64(f.Size)))
			} else {
				row.Progress = humanBytes(float64(f.Written))
			}
			row.Owner, _ = BlobOwner(h.Members, f.Digest)
			v.Fills = append(v.Fills, row)
		}
	}
	return v
}

var statusTemplate = template.Must(template.New("status").Funcs(template.FuncMap{
	"join": strings.Join, "sub": func(a, b float64) float64 { return a - b }}).Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="30">
<title>Wharf</title>
<style>
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;background:#f4f6f8;color:#1d2733}
header{background:#12344d;color:#fff;padding:18px 32px;display:flex;align-items:baseline;gap:16px}
header h1{margin:0;font-size:22px;letter-spacing:.5px}header span{opacity:.75;font-size:13px}
main{padding:24px 32px;display:grid;grid-template-columns:repeat(auto-fit,minmax(320px,1fr));gap:20px}
section{background:#fff;border-radius:10px;padding:18px 20px;box-shadow:0 1px 3px rgba(0,0,0,.08)}
h2{font-size:13px;text-transform:uppercase;letter-spacing:.8px;color:#5b6b7b;margin:0 0 12px}
.big{font-size:40px;font-weight:650;color:#12344d}.sub{color:#5b6b7b;font-size:13px}
.meter{height:12px;background:#e3e8ee;border-radius:6px;overflow:hidden;margin:10px 0 6px}
.meter div{height:100%;background:#2f80c4}
ul{list-style:none;margin:0;padding:0}li{padding:4px 0;border-bottom:1px solid #eef1f4;font-family:ui-monospace,monospace;font-size:13px}
.ok{color:#1e8e3e;font-weight:600}.bad{color:#c5221f;font-weight:600}
table{width:100%;border-collapse:collapse;font-size:13px}td{padding:5px 4px;border-bottom:1px solid #eef1f4;vertical-align:top}
.err{font-family:ui-monospace,monospace;font-size:12px;color:#7a2a2a}
</style></head><body>
<header><h1>Wharf</h1><span>container registry mirror · {{.Now}}</span></header>
<main>
<section><h2>Cache hit ratio</h2><div class="big">{{.HitRatio}}</div>
<div class="sub">{{.Hits}} hits, {{.Misses}} misses (manifests and blobs)</div></section>
<section><h2>Bytes served from cache</h2><div class="big">{{.Saved}}</div>
<div class="sub">not fetched again from upstream · {{.FromUp}} downloaded from upstream</div>
<svg width="100%" height="74" viewBox="0 0 600 74" preserveAspectRatio="none" role="img" aria-label="bytes served from cache per minute">
{{range .Bars}}<rect x="{{.X}}" y="{{printf "%.1f" (sub 72 .H)}}" width="{{.W}}" height="{{printf "%.1f" .H}}" fill="#2f80c4"/>{{end}}
<line x1="0" y1="72.5" x2="600" y2="72.5" stroke="#c9d2dc"/></svg>
<div class="sub">per minute, last hour</div></section>
<section><h2>Disk</h2><div class="big">{{.StoreBytes}}</div><div class="sub">quota: {{.Quota}}</div>
<div class="meter"><div style="width:{{printf "%.0f" .UsedPct}}%"></div></div></section>
<section><h2>Upstreams</h2><table>{{range .Upstreams}}<tr><td><b>{{.Name}}</b><br><span class="sub">{{.Endpoint}}</span></td>
<td class="{{if .OK}}ok{{else}}bad{{end}}">{{.State}}</td><td>{{.Limit}}</td></tr>{{else}}<tr><td class="sub">mirroring off</td></tr>{{end}}</table></section>
{{with .Cluster}}<section><h2>Cluster</h2><div class="sub">this node: {{.Node}}</div>
<table>{{range .Members}}<tr><td><b>{{.ID}}</b>{{if .Self}} (this node){{end}}</td><td>{{.URL}}</td></tr>{{end}}</table>
<table><tr><td><b>index</b><br><span class="sub">{{.Index}}</span></td><td class="{{if .IndexOK}}ok{{else}}bad{{end}}">{{.IndexState}}</td></tr>
<tr><td><b>object store</b><br><span class="sub">{{.Store}}</span></td><td class="{{if .StoreOK}}ok{{else}}bad{{end}}">{{.StoreState}}</td></tr></table>
<h3>Downloads in flight</h3><table>{{range .Fills}}<tr><td>{{.Repos}}<br><span class="sub">{{.Digest}}</span></td><td>{{.Progress}}</td><td>from {{.From}}; owner {{.Owner}}</td></tr>{{else}}<tr><td class="sub">none</td></tr>{{end}}</table></section>{{end}}
<section><h2>Cached images</h2><ul>{{range .Mirrored}}<li>{{.}}</li>{{else}}<li class="sub">none yet</li>{{end}}</ul>
{{if .MoreMirrored}}<div class="sub">and {{.MoreMirrored}} more</div>{{end}}</section>
<section><h2>Pushed images</h2><ul>{{range .Pushed}}<li>{{.}}</li>{{else}}<li class="sub">none (or none you may see)</li>{{end}}</ul>
{{if .MorePushed}}<div class="sub">and {{.MorePushed}} more</div>{{end}}</section>
<section><h2>Recent errors</h2>{{range .Errors}}<div class="err">{{.}}</div>{{else}}<div class="sub">none</div>{{end}}</section>
</main></body></html>`))
