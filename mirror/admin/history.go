package admin

import (
	"encoding/json"
	"sort"
	"time"

	"github.com/wharf-registry/wharf/cache"
)

// GCRun is one collection, for the console's GC page.
type GCRun struct {
	At      time.Time
	Trigger string // "schedule", "after deletes", "console", "api"
	User    string
	Node    string // on a cluster, the node that collected
	Report  cache.GCReport
	Took    time.Duration
	Err     string
}

// GCRuns is the last n collections, newest first: the index's history
// (every node's), else this process's memory.
func (svc *Service) GCRuns(n int) []GCRun {
	var runs []GCRun
	if hist, err := svc.store.Records().History(historyGC, time.Now().Add(-gcKept)); err == nil && len(hist) > 0 {
		for _, h := range hist {
			var run GCRun
			if json.Unmarshal(h.Val, &run) == nil {
				runs = append(runs, run)
			}
		}
	} else {
		svc.book.mu.Lock()
		runs = append(runs, svc.book.gcRuns...)
		svc.book.mu.Unlock()
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
func (svc *Service) NoteGC(trigger, user string, rep cache.GCReport, took time.Duration, err error) {
	run := GCRun{At: time.Now(), Trigger: trigger, User: user, Report: rep, Took: took, Node: svc.store.Cluster().NodeID()}
	run.Report.Items = nil
	if err != nil {
		run.Err = err.Error()
	}
	if val, jerr := json.Marshal(run); jerr == nil {
		if perr := svc.store.Records().PutHistory(historyGC, run.At, val); perr != nil {
			svc.log.Debug("recording a collection in the history", "err", perr)
		}
	}
	b := &svc.book
	b.mu.Lock()
	b.gcRuns = append(b.gcRuns, run)
	if len(b.gcRuns) > MaxGCRuns {
		b.gcRuns = b.gcRuns[len(b.gcRuns)-MaxGCRuns:]
	}
	b.mu.Unlock()
}

type sample struct {
	at                      time.Time
	fromCache, fromUpstream float64 // cumulative blob bytes
	disk                    int64   // bytes the blob store holds (-1: unknown)
}

// readSample reads the traffic counters and the disk use; ok is false
// without them.
func (svc *Service) readSample() (sample, bool) {
	if svc.opts.Traffic == nil {
		return sample{}, false
	}
	t := svc.opts.Traffic()
	s := sample{at: time.Now(), fromCache: t.FromCache, fromUpstream: t.FromUpstream, disk: -1}
	if svc.opts.StatusInfo != nil {
		s.disk = svc.opts.StatusInfo().StoreBytes
	}
	return s, true
}

// Point is one minute of the charts: blob bytes served from the cache and
// downloaded from upstream in the minute before at, and the bytes the blob
// store held at at (-1: unknown).
type Point struct {
	At       time.Time `json:"-"`
	Cache    float64   `json:"c"`
	Upstream float64   `json:"u"`
	Disk     int64     `json:"d"`
}

// Sample records a Point of the charts; cmd calls it every minute. The
// Point goes to the index's history (so that the charts outlive a restart
// and show every node of a cluster), and to memory, which the charts fall
// back on when the index cannot be read.
func (svc *Service) Sample() {
	s, ok := svc.readSample()
	if !ok {
		return
	}
	b := &svc.book
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
		return // the baseline: a Point needs two readings
	}
	pt := Point{Cache: max(0, s.fromCache-prev.fromCache), Upstream: max(0, s.fromUpstream-prev.fromUpstream), Disk: s.disk}
	val, _ := json.Marshal(pt)
	if err := svc.store.Records().PutHistory(HistoryTraffic, s.at, val); err != nil {
		svc.log.Debug("recording the traffic history", "err", err) // memory still has it
	}
	if trim {
		svc.store.Records().TrimHistory(HistoryTraffic, time.Now().Add(-trafficKept))
		svc.store.Records().TrimHistory(historyGC, time.Now().Add(-gcKept))
	}
}

// ChartPoints is the last day's points, every node's summed by minute
// (the disk use is the largest a node saw: on a cluster they share one
// bucket); from memory when the index has none or cannot be read.
func (svc *Service) ChartPoints() []Point {
	since := time.Now().Add(-24 * time.Hour)
	hist, err := svc.store.Records().History(HistoryTraffic, since)
	if err == nil && len(hist) > 0 {
		byMinute := map[int64]*Point{}
		var minutes []int64
		for _, h := range hist {
			var pt Point
			if json.Unmarshal(h.Val, &pt) != nil {
				continue
			}
			m := h.At.Unix() / 60
			agg := byMinute[m]
			if agg == nil {
				agg = &Point{At: time.Unix(m*60, 0), Disk: -1}
				byMinute[m] = agg
				minutes = append(minutes, m)
			}
			agg.Cache += pt.Cache
			agg.Upstream += pt.Upstream
			agg.Disk = max(agg.Disk, pt.Disk)
		}
		sort.Slice(minutes, func(i, j int) bool { return minutes[i] < minutes[j] })
		out := make([]Point, 0, len(minutes))
		for _, m := range minutes {
			out = append(out, *byMinute[m])
		}
		return out
	}
	svc.book.mu.Lock()
	samples := append([]sample(nil), svc.book.samples...)
	svc.book.mu.Unlock()
	var out []Point
	for i := 1; i < len(samples); i++ {
		if samples[i].at.Before(since) {
			continue
		}
		out = append(out, Point{At: samples[i].at, Cache: max(0, samples[i].fromCache-samples[i-1].fromCache),
			Upstream: max(0, samples[i].fromUpstream-samples[i-1].fromUpstream), Disk: samples[i].disk})
	}
	return out
}
