package mirror

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/wharf-registry/wharf/cache"
	"github.com/wharf-registry/wharf/mirror/auth"
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
	samples []sample          // one a minute, the last maxSamples (the charts' fallback)
	last    sample            // the previous Sample: a point is the difference
	trimmed time.Time         // when the history was last trimmed
	errors  []bookedError     // newest last, at most maxErrors
	audits  []auth.AuditEvent // newest last, at most maxAudits
	gcRuns  []gcRun           // newest last, at most maxGCRuns
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
	Node    string // on a cluster, the node that collected
	Report  cache.GCReport
	Took    time.Duration
	Err     string
}

// gcRuns is the last n collections, newest first: the index's history
// (every node's), else this process's memory.
func (reg *Registry) gcRuns(n int) []gcRun {
	var runs []gcRun
	if hist, err := reg.store.Records().History(historyGC, time.Now().Add(-gcKept)); err == nil && len(hist) > 0 {
		for _, h := range hist {
			var run gcRun
			if json.Unmarshal(h.Val, &run) == nil {
				runs = append(runs, run)
			}
		}
	} else {
		reg.book.mu.Lock()
		runs = append(runs, reg.book.gcRuns...)
		reg.book.mu.Unlock()
	}
	if len(runs) > n {
		runs = runs[len(runs)-n:]
	}
	for i, j := 0, len(runs)-1; i < j; i, j = i+1, j-1 {
		runs[i], runs[j] = runs[j], runs[i]
	}
	return runs
}

// NoteGC records a collection that ran (scheduled ones are run by cmd),
// in the index's history and in memory.
func (reg *Registry) NoteGC(trigger, user string, rep cache.GCReport, took time.Duration, err error) {
	run := gcRun{At: time.Now(), Trigger: trigger, User: user, Report: rep, Took: took, Node: reg.store.Cluster().NodeID()}
	run.Report.Items = nil
	if err != nil {
		run.Err = err.Error()
	}
	if val, jerr := json.Marshal(run); jerr == nil {
		if perr := reg.store.Records().PutHistory(historyGC, run.At, val); perr != nil {
			reg.log.Debug("recording a collection in the history", "err", perr)
		}
	}
	b := &reg.book
	b.mu.Lock()
	b.gcRuns = append(b.gcRuns, run)
	if len(b.gcRuns) > maxGCRuns {
		b.gcRuns = b.gcRuns[len(b.gcRuns)-maxGCRuns:]
	}
	b.mu.Unlock()
}

func (b *statusBook) noteAudit(e auth.AuditEvent) {
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

// readSample reads the traffic counters and the disk use; ok is false
// without metrics.
func (reg *Registry) readSample() (sample, bool) {
	m := reg.opts.Metrics
	if m == nil {
		return sample{}, false
	}
	s := sample{at: time.Now(), fromCache: testutil.ToFloat64(m.BytesServed.WithLabelValues("cache")),
		fromUpstream: testutil.ToFloat64(m.UpstreamBytes), disk: -1}
	if reg.opts.StatusInfo != nil {
		s.disk = reg.opts.StatusInfo().StoreBytes
	}
	return s, true
}

// historyTraffic is the history kind of the one-a-minute traffic points.
const (
	historyTraffic = "traffic"
	historyGC      = "gc"
	trafficKept    = 25 * time.Hour
	gcKept         = 30 * 24 * time.Hour
)

// point is one minute of the charts: blob bytes served from the cache and
// downloaded from upstream in the minute before at, and the bytes the blob
// store held at at (-1: unknown).
type point struct {
	At       time.Time `json:"-"`
	Cache    float64   `json:"c"`
	Upstream float64   `json:"u"`
	Disk     int64     `json:"d"`
}

// Sample records a point of the charts; cmd calls it every minute. The
// point goes to the index's history (so that the charts outlive a restart
// and show every node of a cluster), and to memory, which the charts fall
// back on when the index cannot be read.
func (reg *Registry) Sample() {
	s, ok := reg.readSample()
	if !ok {
		return
	}
	b := &reg.book
	b.mu.Lock()
	prev := b.last
	b.last = s
	b.samples = append(b.samples, s)
	if len(b.samples) > maxSamples {
		b.samples = b.samples[1:]
	}
	trim := time.Since(b.trimmed) > time.Hour
	if trim {
		b.trimmed = time.Now()
	}
	b.mu.Unlock()
	if prev.at.IsZero() {
		return // the baseline: a point needs two readings
	}
	pt := point{Cache: max(0, s.fromCache-prev.fromCache), Upstream: max(0, s.fromUpstream-prev.fromUpstream), Disk: s.disk}
	val, _ := json.Marshal(pt)
	if err := reg.store.Records().PutHistory(historyTraffic, s.at, val); err != nil {
		reg.log.Debug("recording the traffic history", "err", err) // memory still has it
	}
	if trim {
		reg.store.Records().TrimHistory(historyTraffic, time.Now().Add(-trafficKept))
		reg.store.Records().TrimHistory(historyGC, time.Now().Add(-gcKept))
	}
}

// chartPoints is the last day's points, every node's summed by minute
// (the disk use is the largest a node saw: on a cluster they share one
// bucket); from memory when the index has none or cannot be read.
func (reg *Registry) chartPoints() []point {
	since := time.Now().Add(-24 * time.Hour)
	hist, err := reg.store.Records().History(historyTraffic, since)
	if err == nil && len(hist) > 0 {
		byMinute := map[int64]*point{}
		var minutes []int64
		for _, h := range hist {
			var pt point
			if json.Unmarshal(h.Val, &pt) != nil {
				continue
			}
			m := h.At.Unix() / 60
			agg := byMinute[m]
			if agg == nil {
				agg = &point{At: time.Unix(m*60, 0), Disk: -1}
				byMinute[m] = agg
				minutes = append(minutes, m)
			}
			agg.Cache += pt.Cache
			agg.Upstream += pt.Upstream
			agg.Disk = max(agg.Disk, pt.Disk)
		}
		sort.Slice(minutes, func(i, j int) bool { return minutes[i] < minutes[j] })
		out := make([]point, 0, len(minutes))
		for _, m := range minutes {
			out = append(out, *byMinute[m])
		}
		return out
	}
	reg.book.mu.Lock()
	samples := append([]sample(nil), reg.book.samples...)
	reg.book.mu.Unlock()
	var out []point
	for i := 1; i < len(samples); i++ {
		if samples[i].at.Before(since) {
			continue
		}
		out = append(out, point{At: samples[i].at, Cache: max(0, samples[i].fromCache-samples[i-1].fromCache),
			Upstream: max(0, samples[i].fromUpstream-samples[i-1].fromUpstream), Disk: samples[i].disk})
	}
	return out
}

type statusPage struct {
	Now                      string
	HitRatio                 string
	Hits, Misses             int
	FromCache, FromUp        string
	Saved                    string
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
