package cache

import (
	"time"

	"github.com/opencontainers/go-digest"
)

// Previews (what a collection would free now; what deleting these tags
// would free) come from the last collection's snapshot of the index, not
// from a dry run per question: the snapshot is kept while no write has
// committed since it was read (kv.writes counts them, every node's on a
// shared index), and a preview is the collection's marking and sweep
// computed over it in memory. A stale snapshot answers nothing: the caller
// asks the maintenance scheduler for a dry run, which takes a new one.

// lastCollection is the last collection's snapshot and what it alone
// found out (orphan files: the blob store's walk).
type lastCollection struct {
	sn            *snapshot
	writes        uint64    // kv.writes when it was read
	at            time.Time // the collection's clock
	grace         time.Duration
	mirroredGrace time.Duration
	orphans       GCReport
}

// Preview is what a dry run with o would report, computed from the last
// collection's snapshot; ok is false when there is none, or the index
// changed since it was read. o's zero grace is the last collection's. at
// is when the snapshot was read.
func (s *Maintenance) Preview(o GCOptions) (rep GCReport, at time.Time, ok bool) {
	last := s.last.Load()
	if last == nil || last.writes != s.writes.Load() {
		return rep, at, false
	}
	if o.Grace <= 0 {
		o.Grace, o.MirroredGrace = last.grace, last.mirroredGrace
	}
	if o.Now.IsZero() {
		o.Now = time.Now()
	}
	o.DryRun = true
	sn := last.sn.clone()
	if len(o.Without) > 0 {
		o.Released = s.pretendDeleted(sn, o.Without, o.Released)
	}
	planned, err := s.mark(&rep, sn, o, nil, false)
	if err != nil { // a dry mark writes nothing and cannot fail
		return GCReport{}, at, false
	}
	sn.sweep(&rep, planned)
	rep.Orphans, rep.Bytes = last.orphans.Orphans, rep.Bytes+last.orphans.Bytes
	rep.Items = append(rep.Items, last.orphans.Items...)
	return rep, last.at, true
}

// sweep is sweepBlobs's dry run over the snapshot: the blobs no link or
// manifest record names once planned keys are gone.
func (sn *snapshot) sweep(rep *GCReport, planned map[string]bool) {
	used := map[digest.Digest]bool{}
	for repo, ls := range sn.links {
		for d := range ls {
			if !planned[string(linkKey(repo, d))] {
				used[d] = true
			}
		}
	}
	for repo, ms := range sn.manifests {
		for d := range ms {
			if !planned[string(manifestKey(repo, d))] {
				used[d] = true
			}
		}
	}
	for d, size := range sn.blobs {
		if !used[d] {
			rep.Blobs++
			rep.Bytes += size
			rep.add("blob %s (%d bytes, no repository links it)", d, size)
		}
	}
}

// clone copies what a collection changes in its snapshot (the tags that a
// dry run pretends deleted, the released set it adds to); the rest is
// shared, read only.
func (sn *snapshot) clone() *snapshot {
	c := *sn
	c.tags = make(map[string][]digest.Digest, len(sn.tags))
	for repo, ds := range sn.tags {
		c.tags[repo] = ds
	}
	copyTimes := func(m map[string]map[digest.Digest]time.Time) map[string]map[digest.Digest]time.Time {
		out := make(map[string]map[digest.Digest]time.Time, len(m))
		for repo, ds := range m {
			out[repo] = make(map[digest.Digest]time.Time, len(ds))
			for d, t := range ds {
				out[repo][d] = t
			}
		}
		return out
	}
	c.deletes.manifests, c.deletes.blobs = copyTimes(sn.deletes.manifests), copyTimes(sn.deletes.blobs)
	return &c
}
