package admin

import (
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/wharf-registry/wharf/cache"
	"github.com/wharf-registry/wharf/policy"
)

const (
	maxAudits  = 200
	maxErrors  = 100
	MaxGCRuns  = 20
	maxSamples = 24 * 60 // a day of minutes
)

// HistoryTraffic is the history kind of the one-a-minute traffic points.
const (
	HistoryTraffic = "traffic"
	historyGC      = "gc"
	trafficKept    = 25 * time.Hour
	gcKept         = 30 * 24 * time.Hour
)

type StatusPage struct {
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
	Upstreams                []UpstreamRow
	Notifications            []NotifyRow
	Errors                   []ShownError
	Cluster                  *ClusterView
}

// ShownError is a recent error as the console shows it.
type ShownError struct {
	At   time.Time
	Text string
	repo string // "" for none
}

// ClusterView is the status page's cluster section.
type ClusterView struct {
	Node              string
	Members           []MemberRow
	Index, IndexState string
	IndexOK           bool
	Store, StoreState string
	StoreOK           bool
	Fills             []FillRow
}

type MemberRow struct {
	ID, URL string
	Self    bool
}

type FillRow struct {
	Digest, Repos, Progress, From, Owner string
}

// NotifyRow is one notification endpoint on the overview.
type NotifyRow struct {
	Name, State, Figures string
	OK                   bool
}

type UpstreamRow struct {
	Name, Endpoint, State, Limit, LastError string
	OK                                      bool
}

func HumanBytes(n float64) string {
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

// Status is what the console's overview shows everyone (what the
// status page showed): traffic, disk, upstreams, cluster, the images and
// recent errors subject may see.
func (svc *Service) Status(subject policy.Subject) StatusPage {
	p := StatusPage{Now: time.Now().Format("2006-01-02 15:04:05")}
	if svc.opts.Traffic != nil {
		t := svc.opts.Traffic()
		p.Hits, p.Misses = int(t.Hits), int(t.Misses)
		p.HitRatio = "–"
		if t.Hits+t.Misses > 0 {
			p.HitRatio = fmt.Sprintf("%.0f%%", 100*t.Hits/(t.Hits+t.Misses))
		}
		p.FromCache, p.FromUp, p.Saved = HumanBytes(t.FromCache), HumanBytes(t.FromUpstream), HumanBytes(t.FromCache)
	}
	svc.book.mu.Lock()
	booked := append([]bookedError(nil), svc.book.errors...)
	svc.book.mu.Unlock()
	// A viewer sees the errors of repositories they may pull, and those of
	// no repository: private names stay private.
	pol := svc.gate.Policy()
	for i := len(booked) - 1; i >= 0 && len(p.Errors) < 12; i-- { // newest first
		if e := booked[i]; e.repo == "" || pol.Allowed(subject, e.repo, policy.Pull, svc.origin(e.repo).Mirrored()) {
			p.Errors = append(p.Errors, ShownError{At: e.at, Text: e.text})
		}
	}
	if svc.opts.StatusInfo != nil {
		info := svc.opts.StatusInfo()
		p.StoreBytes, p.StoreBytesN, p.Quota = HumanBytes(float64(info.StoreBytes)), info.StoreBytes, "no quota"
		if info.QuotaBytes > 0 {
			p.Quota = HumanBytes(float64(info.QuotaBytes))
			p.UsedPct = min(100, 100*float64(info.StoreBytes)/float64(info.QuotaBytes))
		}
		for _, u := range info.Upstreams {
			row := UpstreamRow{Name: u.Name, Endpoint: u.Endpoint, OK: u.Up && time.Now().After(u.RateLimitedUntil), Limit: "not reported", LastError: u.LastError}
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
	if svc.opts.StatusInfo != nil {
		info := svc.opts.StatusInfo()
		if info.Cluster != nil {
			p.Cluster = svc.ClusterView(*info.Cluster, subject, pol)
		}
		for _, n := range info.Notifications {
			row := NotifyRow{Name: n.Name, State: "delivering", OK: true,
				Figures: fmt.Sprintf("%d sent · %d pending · %d failed attempts · %d dropped", n.Sent, n.Pending, n.Failed, n.Dropped)}
			switch {
			case n.Disabled:
				row.State = "disabled"
			case n.LastError != "":
				row.State, row.OK = "failing: "+n.LastError, false
			}
			p.Notifications = append(p.Notifications, row)
		}
	}
	repos, _, _ := svc.gate.Visible(subject, 1000, "", svc.store.Catalog, func(repo string) bool { return svc.origin(repo).Mirrored() })
	for _, repo := range repos {
		if svc.origin(repo).Mirrored() {
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

// ClusterView renders the cluster: members, index and object store
// health, and the downloads in flight with the node that owns each (only
// those of repositories the viewer may pull).
func (svc *Service) ClusterView(h cache.ClusterHealth, subject policy.Subject, pol *policy.Policy) *ClusterView {
	v := &ClusterView{Node: h.Node, Index: strings.Join(h.Index.Endpoints, ", "), Store: h.BlobStore, IndexOK: h.Index.Healthy, StoreOK: h.BlobStoreErr == ""}
	v.IndexState = fmt.Sprintf("answering; %d changes followed, %d watch restarts", h.Index.Events, h.Index.Restarts)
	if !h.Index.Healthy {
		v.IndexState = "unavailable: " + h.Index.LastError
	}
	v.StoreState = "answering"
	if !v.StoreOK {
		v.StoreState = h.BlobStoreErr
	}
	for id, u := range h.Members {
		v.Members = append(v.Members, MemberRow{ID: id, URL: u, Self: id == h.Node})
	}
	sort.Slice(v.Members, func(i, j int) bool { return v.Members[i].ID < v.Members[j].ID })
	if svc.opts.Fills != nil {
		for _, f := range svc.opts.Fills() {
			visible := false
			for _, repo := range f.Repos {
				visible = visible || pol.Allowed(subject, repo, policy.Pull, true)
			}
			if !visible {
				continue
			}
			row := FillRow{Digest: f.Digest.String(), Repos: strings.Join(f.Repos, ", "), From: "upstream"}
			if f.From != "" {
				row.From = "node " + f.From
			}
			if f.Size > 0 {
				row.Progress = fmt.Sprintf("%s of %s", HumanBytes(float64(f.Written)), HumanBytes(float64(f.Size)))
			} else {
				row.Progress = HumanBytes(float64(f.Written))
			}
			if svc.opts.BlobOwner != nil {
				row.Owner = svc.opts.BlobOwner(h.Members, f.Digest)
			}
			v.Fills = append(v.Fills, row)
		}
	}
	return v
}
