package mirror

import (
	"fmt"
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
	samples []sample      // one a minute, the last maxSamples
	errors  []bookedError // newest last, at most maxErrors
	audits  []auditEvent  // newest last, at most maxAudits
	gcRuns  []gcRun       // newest last, at most maxGCRuns
}

// auditEvent is one audit record kept for the admin API.
type auditEvent struct {
	Time   string            `json:"time"`
	User   string            `json:"user"`
	Event  string            `json:"event"`
	Client string            `json:"client"`
	Attrs  map[string]string `json:"attrs,omitempty"`
}

const (
	maxAudits  = 200
	maxErrors  = 100
	maxGCRuns  = 20
	maxSamples = 24 * 60 // a day of minutes
)

// gcRun is one collection, for the console's GC page.
type gcRun struct {
	At      time.Time
	Trigger string // "schedule", "after deletes", "console", "api"
	User    string
	Report  cache.GCReport
	Took    time.Duration
	Err     string
}

// NoteGC records a collection that ran (scheduled ones are run by cmd).
func (reg *Registry) NoteGC(trigger, user string, rep cache.GCReport, took time.Duration, err error) {
	run := gcRun{At: time.Now(), Trigger: trigger, User: user, Report: rep, Took: took}
	run.Report.Items = nil
	if err != nil {
		run.Err = err.Error()
	}
	b := &reg.book
	b.mu.Lock()
	b.gcRuns = append(b.gcRuns, run)
	if len(b.gcRuns) > maxGCRuns {
		b.gcRuns = b.gcRuns[len(b.gcRuns)-maxGCRuns:]
	}
	b.mu.Unlock()
}

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
	at   time.Time
	text string
	repo string
}

type sample struct {
	at                      time.Time
	fromCache, fromUpstream float64 // cumulative blob bytes
	disk                    int64   // bytes the blob store holds (-1: unknown)
}

func (b *statusBook) noteError(repo, s string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.errors = append(b.errors, bookedError{at: time.Now(), text: s, repo: repo})
	if len(b.errors) > maxErrors {
		b.errors = b.errors[len(b.errors)-maxErrors:]
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
		fromUpstream: testutil.ToFloat64(m.UpstreamBytes), disk: -1}
	if reg.opts.StatusInfo != nil {
		s.disk = reg.opts.StatusInfo().StoreBytes
	}
	b := &reg.book
	b.mu.Lock()
	defer b.mu.Unlock()
	if n := len(b.samples); n > 0 && s.at.Sub(b.samples[n-1].at) < 50*time.Second {
		b.samples[n-1] = s
		return
	}
	b.samples = append(b.samples, s)
	if len(b.samples) > maxSamples {
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
	StoreBytesN              int64
	UsedPct                  float64
	Mirrored, Pushed         []string
	MoreMirrored, MorePushed int
	Upstreams                []upstreamRow
	Errors                   []shownError
	Cluster                  *clusterView
}

// shownError is a recent error as the console shows it.
type shownError struct {
	At   time.Time
	Text string
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

// statusData is what the console's overview shows everyone (what the
// status page showed): traffic, disk, upstreams, cluster, the images and
// recent errors subject may see.
func (reg *Registry) statusData(subject policy.Subject) statusPage {
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
	pol := reg.policy()
	for i := len(booked) - 1; i >= 0 && len(p.Errors) < 12; i-- { // newest first
		if e := booked[i]; e.repo == "" || pol.Allowed(subject, e.repo, policy.Pull, reg.origin(e.repo).Mirrored()) {
			p.Errors = append(p.Errors, shownError{At: e.at, Text: e.text})
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
		p.StoreBytes, p.StoreBytesN, p.Quota = humanBytes(float64(info.StoreBytes)), info.StoreBytes, "no quota"
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
	repos, _, _ := reg.visibleReposOf(subject, 1000, "")
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
	return p
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
