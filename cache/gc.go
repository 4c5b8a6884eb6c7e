package cache

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/opencontainers/go-digest"
)

// GCOptions configures a collection.
type GCOptions struct {
	// DryRun reports what would be freed and changes nothing.
	DryRun bool
	// Grace spares manifests and links younger than this: a push links its
	// blobs, and a multi-platform push its platform manifests, before the
	// tag that makes them reachable (1h).
	Grace time.Duration
	// Now is the collection's clock (time.Now).
	Now time.Time
	// MirroredGrace, when set, is the grace of repositories whose recorded
	// origin is an upstream registry: nothing is pushed there.
	MirroredGrace time.Duration
	// Released names manifests (repository → digests) that were untagged
	// or deleted deliberately besides those the store recorded (every
	// delete through it records what it released, released.go): they,
	// their child manifests and the links only they use get no grace.
	Released map[string][]digest.Digest
	// ReleasedBlobs names blobs (repository → digests) that manifests
	// deleted deliberately referenced (their records are gone, so Released
	// cannot reach them): their links get no grace either.
	ReleasedBlobs map[string][]digest.Digest
	// Without, in a dry run, treats these references (repository → tags
	// or digests) as deleted deliberately: the report is then what
	// deleting them would free, besides what is collectable anyway.
	Without map[string][]string
	// Duty, between 0 and 1, paces a background collection: it works that
	// share of the time and sleeps the rest, so serving keeps the CPU.
	// 0 or 1: full speed.
	Duty float64
}

// pacer sleeps between chunks of work to keep to a duty cycle.
type pacer struct {
	duty  float64
	n     int
	since time.Time
}

func newPacer(duty float64) *pacer { return &pacer{duty: duty, since: time.Now()} }

// step counts one unit of work; every 256 it sleeps off the surplus.
func (p *pacer) step() {
	if p == nil || p.duty <= 0 || p.duty >= 1 {
		return
	}
	if p.n++; p.n%256 != 0 {
		return
	}
	worked := time.Since(p.since)
	time.Sleep(time.Duration(float64(worked) * (1 - p.duty) / p.duty))
	p.since = time.Now()
}

// GCReport says what a collection removed (or, dry, would remove).
type GCReport struct {
	Manifests int      // untagged, unreachable manifest links
	Links     int      // blob links no kept manifest references
	Blobs     int      // blobs no repository references any more
	Orphans   int      // blob files the index never knew (crash leftovers)
	Bytes     int64    // bytes of the removed blobs and orphans
	Items     []string // one line per removal, for --dry-run
}

func (r *GCReport) add(format string, args ...any) {
	r.Items = append(r.Items, fmt.Sprintf(format, args...))
}

// GC removes, while the store serves, untagged manifests nothing reachable
// refers to, blob links no kept manifest references, then blobs that no
// repository links any more, and blob files the index never recorded.
// Fresh manifests and links (younger than Grace) are spared; every removal
// is re-checked in its own transaction, and blob files are removed under
// the same per-digest lock that commits take, so a push or mount racing
// the collector never loses a blob.
//
// On a shared index one node of the cluster collects at a time: GC
// returns ErrCollectorElsewhere when another holds the collector's lock.
func (s *Maintenance) GC(o GCOptions) (GCReport, error) {
	release, err := s.collectorLock()
	if err != nil {
		return GCReport{}, err
	}
	defer release()
	// Uses by digest still in memory are roots too (pins.go).
	if err := s.FlushAccess(); err != nil && !errors.Is(err, ErrStorageFull) {
		return GCReport{}, err
	}
	return s.gc(o)
}

func (s *Maintenance) gc(o GCOptions) (GCReport, error) {
	if o.Grace <= 0 {
		o.Grace = time.Hour
	}
	if o.Now.IsZero() {
		o.Now = time.Now()
	}
	var rep GCReport
	pace := newPacer(o.Duty)
	writes := s.writes.Load() // before the snapshot: a write meanwhile makes it stale
	sn, err := s.snapshot(pace)
	if err != nil {
		return rep, err
	}
	kept := sn.clone() // the index as read, for previews (gcpreview.go)
	if o.DryRun && len(o.Without) > 0 {
		o.Released = s.pretendDeleted(sn, o.Without, o.Released)
	}
	planned, err := s.mark(&rep, sn, o, pace, !o.DryRun)
	if err != nil {
		return rep, err
	}
	if err := s.sweepBlobs(&rep, o, planned); err != nil {
		return rep, err
	}
	var orphans GCReport
	if err := s.sweepOrphans(&orphans, o); err != nil {
		return rep, err
	}
	rep.Orphans, rep.Bytes, rep.Items = orphans.Orphans, rep.Bytes+orphans.Bytes, append(rep.Items, orphans.Items...)
	s.last.Store(&lastCollection{sn: kept, writes: writes, at: o.Now, grace: o.Grace, mirroredGrace: o.MirroredGrace, orphans: orphans})
	if o.DryRun {
		return rep, nil
	}
	return rep, s.forgetReleased(sn.deletes.records)
}

// SetUntaggedGrace sets how long untagged manifests of each pushed
// repository (and the links only they use) are kept: the retention
// policies' untagged-after. A grace under GCOptions.Grace does not
// shorten it. nil: GCOptions.Grace for all.
func (s *Maintenance) SetUntaggedGrace(fn func(repo string) time.Duration) {
	if fn == nil {
		s.untaggedGrace.Store(nil)
		return
	}
	s.untaggedGrace.Store(&fn)
}

// mark decides, from snapshot sn, which manifests and links of every
// repository go (drop: and removes them, each re-checked in its own
// transaction), counts them in rep, and returns their keys.
func (s *Maintenance) mark(rep *GCReport, sn *snapshot, o GCOptions, pace *pacer, drop bool) (map[string]bool, error) {
	freshFor := func(grace time.Duration) func(time.Time) bool {
		return func(t time.Time) bool { return !t.IsZero() && o.Now.Sub(t) < grace }
	}
	// What the options name is released now; what the store recorded,
	// when its delete ran.
	for repo, ds := range o.Released {
		for _, d := range ds {
			note(sn.deletes.manifests, repo, d, o.Now)
		}
	}
	for repo, ds := range o.ReleasedBlobs {
		for _, d := range ds {
			note(sn.deletes.blobs, repo, d, o.Now)
		}
	}
	repos := map[string]bool{}
	for r := range sn.manifests {
		repos[r] = true
	}
	for r := range sn.links {
		repos[r] = true
	}
	planned := map[string]bool{} // keys a dry run would have deleted
	for repo := range repos {
		fresh := freshFor(o.Grace)
		origin, _ := s.st().Origin(repo)
		if o.MirroredGrace > 0 && origin.Mirrored() {
			fresh = freshFor(o.MirroredGrace)
		} else if fn := s.untaggedGrace.Load(); fn != nil && !origin.Mirrored() {
			if g := (*fn)(repo); g > o.Grace { // never shorter: it protects pushes in flight
				fresh = freshFor(g)
			}
		}
		relM, relB := sn.releasedAt(repo, sn.deletes.manifests[repo], sn.deletes.blobs[repo])
		// Released content has no grace, unless it was pushed or linked
		// again after its release.
		freshM := func(d digest.Digest, t time.Time) bool {
			if at, ok := relM[d]; ok && !t.After(at) {
				return false
			}
			return fresh(t)
		}
		freshL := func(d digest.Digest, t time.Time) bool {
			if at, ok := relB[d]; ok && !t.After(at) {
				return false
			}
			return fresh(t)
		}
		mans, blobs := sn.kept(repo, origin.Mirrored(), freshM)
		for d, m := range sn.manifests[repo] {
			pace.step()
			if mans[d] {
				continue
			}
			rep.Manifests++
			rep.add("manifest %s@%s (untagged)", repo, d)
			planned[string(manifestKey(repo, d))] = true
			if drop {
				if err := s.dropManifest(repo, d, m.Subject, freshM); err != nil {
					return planned, err
				}
			}
		}
		for d, at := range sn.links[repo] {
			pace.step()
			if blobs[d] || freshL(d, at) {
				continue
			}
			rep.Links++
			rep.add("link %s@%s (no kept manifest references it)", repo, d)
			planned[string(linkKey(repo, d))] = true
			if drop {
				if err := s.dropLink(repo, d, freshL); err != nil {
					return planned, err
				}
			}
		}
	}
	return planned, nil
}

// pretendDeleted removes from the snapshot the tags that deleting refs
// (repository → tags or digests) would remove, and returns released with
// the manifests they named added.
func (s *Maintenance) pretendDeleted(sn *snapshot, refs map[string][]string, released map[string][]digest.Digest) map[string][]digest.Digest {
	out := map[string][]digest.Digest{}
	for repo, ds := range released {
		out[repo] = append([]digest.Digest(nil), ds...)
	}
	for repo, rs := range refs {
		for _, ref := range rs {
			d, err := digest.Parse(ref)
			all := err == nil // a digest: every tag naming it goes with it
			if !all {
				if d, err = s.st().ResolveTag(repo, ref); err != nil {
					continue
				}
			}
			tags := sn.tags[repo][:0:0]
			for i, t := range sn.tags[repo] {
				if t == d && (all || len(tags) == i) {
					continue // only the first, for one tag
				}
				tags = append(tags, t)
			}
			sn.tags[repo] = tags
			out[repo] = append(out[repo], d)
		}
	}
	return out
}

// dropManifest removes an unreachable manifest link unless, in the
// meantime, it was pushed again or a tag came to point at it.
func (s *Maintenance) dropManifest(repo string, d, subject digest.Digest, fresh func(digest.Digest, time.Time) bool) error {
	dropped := false
	err := s.release(func(txn Txn) error {
		dropped = false
		v, err := txn.Get(manifestKey(repo, d))
		if errors.Is(err, errNotFound) {
			return nil
		} else if err != nil {
			return err
		}
		var m Manifest
		if err := json.Unmarshal(v, &m); err != nil || fresh(d, m.Pushed) {
			return err
		}
		tagged := false
		if err := txn.Scan(tagPrefix(repo), nil, false, func(_, v []byte) error {
			if tagged = decodeTag(v).digest == d; tagged {
				return errStopScan
			}
			return nil
		}); err != nil || tagged {
			return err
		}
		if subject != "" {
			if err := txn.Delete(referrerKey(repo, subject, d)); err != nil {
				return err
			}
		}
		dropped = true
		if err := forgetUse(txn, useKey(repo, d.String())); err != nil {
			return err
		}
		return txn.Delete(manifestKey(repo, d))
	})
	if err == nil && dropped {
		s.invalidate(repo, d.String()) // after the commit: a reader cannot re-cache the old record
	}
	return err
}

// dropLink removes a blob link unless it was refreshed meanwhile.
func (s *Maintenance) dropLink(repo string, d digest.Digest, fresh func(digest.Digest, time.Time) bool) error {
	defer s.st().forgetLink(repo, d)
	return s.release(func(txn Txn) error {
		v, err := txn.Get(linkKey(repo, d))
		if errors.Is(err, errNotFound) || (err == nil && fresh(d, linkTime(v))) {
			return nil
		} else if err != nil {
			return err
		}
		return txn.Delete(linkKey(repo, d))
	})
}
