package cache

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
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
	// or deleted deliberately (eviction, an operator's delete): they, their
	// child manifests and the links only they use get no grace.
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

// snapshot is the part of the index a collection marks from.
type snapshot struct {
	tags      map[string][]digest.Digest                   // repo → tagged manifests
	manifests map[string]map[digest.Digest]*Manifest       // repo → manifests
	links     map[string]map[digest.Digest]time.Time       // repo → blob → linked at
	referrers map[string]map[digest.Digest][]digest.Digest // repo → subject → referrers
	used      map[string]map[digest.Digest]time.Time       // repo → manifest → last pulled by digest (pins.go)
}

func splitRepoKey(k []byte, prefix string) (repo, rest string) {
	s := string(k[len(prefix):])
	repo, rest, _ = strings.Cut(s, "\x00")
	return repo, rest
}

func (s *Store) snapshot(pace *pacer) (*snapshot, error) {
	sn := &snapshot{tags: map[string][]digest.Digest{}, manifests: map[string]map[digest.Digest]*Manifest{},
		links: map[string]map[digest.Digest]time.Time{}, referrers: map[string]map[digest.Digest][]digest.Digest{},
		used: map[string]map[digest.Digest]time.Time{}}
	err := s.idx.View(func(txn Txn) error {
		scan := func(prefix string, fn func(k, v []byte) error) error {
			return txn.Scan([]byte(prefix), nil, false, func(k, v []byte) error {
				pace.step()
				return fn(k, v)
			})
		}
		if err := scan("t/", func(k, v []byte) error {
			repo, _ := splitRepoKey(k, "t/")
			sn.tags[repo] = append(sn.tags[repo], decodeTag(v).digest)
			return nil
		}); err != nil {
			return err
		}
		if err := scan("m/", func(k, v []byte) error {
			repo, d := splitRepoKey(k, "m/")
			var m Manifest
			if err := json.Unmarshal(v, &m); err != nil {
				return err
			}
			m.Digest = digest.Digest(d)
			if sn.manifests[repo] == nil {
				sn.manifests[repo] = map[digest.Digest]*Manifest{}
			}
			sn.manifests[repo][m.Digest] = &m
			return nil
		}); err != nil {
			return err
		}
		if err := scan("l/", func(k, v []byte) error {
			repo, d := splitRepoKey(k, "l/")
			if sn.links[repo] == nil {
				sn.links[repo] = map[digest.Digest]time.Time{}
			}
			sn.links[repo][digest.Digest(d)] = linkTime(v)
			return nil
		}); err != nil {
			return err
		}
		if err := sn.scanUses(txn, pace); err != nil {
			return err
		}
		return scan("r/", func(k, v []byte) error {
			repo, rest := splitRepoKey(k, "r/")
			subject, d, _ := strings.Cut(rest, "\x00")
			if sn.referrers[repo] == nil {
				sn.referrers[repo] = map[digest.Digest][]digest.Digest{}
			}
			sn.referrers[repo][digest.Digest(subject)] = append(sn.referrers[repo][digest.Digest(subject)], digest.Digest(d))
			return nil
		})
	})
	return sn, err
}

// released is what the released manifests of repo reach: manifests and
// blobs (through index entries and referrers).
func (sn *snapshot) released(repo string, roots []digest.Digest) (map[digest.Digest]bool, map[digest.Digest]bool) {
	if len(roots) == 0 {
		return nil, nil
	}
	return sn.reach(repo, roots)
}

// reach walks repo's manifests from roots, through index entries and
// referrers, and returns the manifests and blobs it reaches.
func (sn *snapshot) reach(repo string, queue []digest.Digest) (map[digest.Digest]bool, map[digest.Digest]bool) {
	mans, blobs := map[digest.Digest]bool{}, map[digest.Digest]bool{}
	for len(queue) > 0 {
		d := queue[0]
		queue = queue[1:]
		m, ok := sn.manifests[repo][d]
		if !ok || mans[d] {
			continue
		}
		mans[d] = true
		for _, ref := range m.Refs {
			if _, isManifest := sn.manifests[repo][ref]; isManifest {
				queue = append(queue, ref)
			} else {
				blobs[ref] = true
			}
		}
		queue = append(queue, sn.referrers[repo][d]...)
	}
	return mans, blobs
}

// kept marks, in one repository, the manifests reachable from its tags
// (through index entries and referrers), from its pins (mirrored content
// pulled by digest, pins.go) or younger than the grace period (freshM; a
// platform manifest's age is that of its last pull by digest), and the
// blobs those manifests reference.
func (sn *snapshot) kept(repo string, mirrored bool, freshM func(digest.Digest, time.Time) bool) (map[digest.Digest]bool, map[digest.Digest]bool) {
	var queue []digest.Digest
	queue = append(queue, sn.tags[repo]...)
	var childUse map[digest.Digest]time.Time
	if mirrored {
		var pinned []digest.Digest
		pinned, childUse = sn.pins(repo)
		queue = append(queue, pinned...)
	}
	for d, m := range sn.manifests[repo] {
		at := m.Pushed
		if u := childUse[d]; u.After(at) {
			at = u
		}
		if freshM(d, at) {
			queue = append(queue, d)
		}
	}
	return sn.reach(repo, queue)
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
func (s *Store) GC(o GCOptions) (GCReport, error) {
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

func (s *Store) gc(o GCOptions) (GCReport, error) {
	if o.Grace <= 0 {
		o.Grace = time.Hour
	}
	if o.Now.IsZero() {
		o.Now = time.Now()
	}
	freshFor := func(grace time.Duration) func(time.Time) bool {
		return func(t time.Time) bool { return !t.IsZero() && o.Now.Sub(t) < grace }
	}
	var rep GCReport
	pace := newPacer(o.Duty)
	sn, err := s.snapshot(pace)
	if err != nil {
		return rep, err
	}
	if o.DryRun && len(o.Without) > 0 {
		o.Released = s.pretendDeleted(sn, o.Without, o.Released)
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
		origin, _ := s.Origin(repo)
		if o.MirroredGrace > 0 && origin.Mirrored() {
			fresh = freshFor(o.MirroredGrace)
		}
		relM, relB := sn.released(repo, o.Released[repo])
		if extra := o.ReleasedBlobs[repo]; len(extra) > 0 {
			if relB == nil {
				relB = map[digest.Digest]bool{}
			}
			for _, d := range extra {
				relB[d] = true
			}
		}
		freshM := func(d digest.Digest, t time.Time) bool { return !relM[d] && fresh(t) }
		freshL := func(d digest.Digest, t time.Time) bool { return !relB[d] && fresh(t) }
		mans, blobs := sn.kept(repo, origin.Mirrored(), freshM)
		for d, m := range sn.manifests[repo] {
			pace.step()
			if mans[d] {
				continue
			}
			rep.Manifests++
			rep.add("manifest %s@%s (untagged)", repo, d)
			planned[string(manifestKey(repo, d))] = true
			if !o.DryRun {
				if err := s.dropManifest(repo, d, m.Subject, freshM); err != nil {
					return rep, err
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
			if !o.DryRun {
				if err := s.dropLink(repo, d, freshL); err != nil {
					return rep, err
				}
			}
		}
	}
	if err := s.sweepBlobs(&rep, o, planned); err != nil {
		return rep, err
	}
	return rep, s.sweepOrphans(&rep, o)
}

// pretendDeleted removes from the snapshot the tags that deleting refs
// (repository → tags or digests) would remove, and returns released with
// the manifests they named added.
func (s *Store) pretendDeleted(sn *snapshot, refs map[string][]string, released map[string][]digest.Digest) map[string][]digest.Digest {
	out := map[string][]digest.Digest{}
	for repo, ds := range released {
		out[repo] = append([]digest.Digest(nil), ds...)
	}
	for repo, rs := range refs {
		for _, ref := range rs {
			d, err := digest.Parse(ref)
			all := err == nil // a digest: every tag naming it goes with it
			if !all {
				if d, err = s.ResolveTag(repo, ref); err != nil {
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
func (s *Store) dropManifest(repo string, d, subject digest.Digest, fresh func(digest.Digest, time.Time) bool) error {
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
		if err := txn.Delete(accessKey(cacheKey(repo, d.String()))); err != nil {
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
func (s *Store) dropLink(repo string, d digest.Digest, fresh func(digest.Digest, time.Time) bool) error {
	defer s.forgetLink(repo, d)
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

// sweepBlobs removes the records, then the files, of blobs no repository
// links. The referenced set is computed from a snapshot without any lock;
// every link made meanwhile is noted (noteLinked, under the content lock of
// its digest). Then, under all content locks — a pause for commits as long
// as one small transaction, never for reads or uploads — the records of the
// candidates that nothing linked since are deleted. Each file is removed
// under its digest's lock only if its record is still gone.
func (s *Store) sweepBlobs(rep *GCReport, o GCOptions, planned map[string]bool) error {
	if s.shared {
		return s.sweepShared(rep, o, planned)
	}
	s.track.begin()
	defer s.track.end()
	var doomed []digest.Digest
	sizes := map[digest.Digest]int64{}
	err := s.idx.View(func(txn Txn) error {
		used, err := usedDigests(txn, o, planned)
		if err != nil {
			return err
		}
		return txn.Scan([]byte("b/"), nil, false, func(k, v []byte) error {
			if d := digest.Digest(k[2:]); !used[d] {
				doomed, sizes[d] = append(doomed, d), decodeSize(v)
			}
			return nil
		})
	})
	if err != nil {
		return err
	}
	if !o.DryRun && len(doomed) > 0 {
		var kept []digest.Digest
		for len(doomed) > 0 {
			n := min(len(doomed), s.idx.MaxOps())
			batch, err := s.dropBlobRecords(doomed[:n])
			if err != nil {
				return err
			}
			kept, doomed = append(kept, batch...), doomed[n:]
		}
		doomed = kept
	}
	for _, d := range doomed {
		rep.Blobs++
		rep.Bytes += sizes[d]
		rep.add("blob %s (%d bytes, no repository links it)", d, sizes[d])
		if o.DryRun {
			continue
		}
		if err := s.removeUnrecorded(d); err != nil {
			return err
		}
	}
	return nil
}

// usedDigests is every digest a link or manifest record names (less, in a
// dry run, those the run would have removed).
func usedDigests(txn Txn, o GCOptions, planned map[string]bool) (map[digest.Digest]bool, error) {
	used := map[digest.Digest]bool{}
	for _, p := range []string{"l/", "m/"} {
		if err := txn.Scan([]byte(p), nil, true, func(k, _ []byte) error {
			if o.DryRun && planned[string(k)] {
				return nil
			}
			_, d := splitRepoKey(k, p)
			used[digest.Digest(d)] = true
			return nil
		}); err != nil {
			return nil, err
		}
	}
	return used, nil
}

// dropBlobRecords deletes, under all content locks, the records of the
// given blobs that nothing linked since the sweep began, and returns those.
func (s *Store) dropBlobRecords(doomed []digest.Digest) ([]digest.Digest, error) {
	for i := range s.contentLocks {
		s.contentLocks[i].Lock()
	}
	doomed = s.track.without(doomed)
	err := s.release(func(txn Txn) error {
		for _, d := range doomed {
			if err := txn.Delete(blobKey(d)); err != nil {
				return err
			}
		}
		return nil
	})
	for i := range s.contentLocks {
		s.contentLocks[i].Unlock()
	}
	if err != nil {
		return nil, err
	}
	if s.afterSweepRecords != nil {
		s.afterSweepRecords(doomed)
	}
	return doomed, nil
}

// linkTracker notes the digests that got a new link while a collection
// computes what nothing links.
type linkTracker struct {
	mu     sync.Mutex
	active int
	seen   map[digest.Digest]bool
}

func (t *linkTracker) begin() {
	t.mu.Lock()
	if t.active == 0 {
		t.seen = map[digest.Digest]bool{}
	}
	t.active++
	t.mu.Unlock()
}

func (t *linkTracker) end() {
	t.mu.Lock()
	if t.active--; t.active == 0 {
		t.seen = nil
	}
	t.mu.Unlock()
}

// without drops from ds the digests linked since begin.
func (t *linkTracker) without(ds []digest.Digest) []digest.Digest {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := ds[:0]
	for _, d := range ds {
		if !t.seen[d] {
			out = append(out, d)
		}
	}
	return out
}

// noteLinked records that d got a new link. Call it under d's content
// lock, after the transaction that made the link committed.
func (s *Store) noteLinked(d digest.Digest) {
	s.track.mu.Lock()
	if s.track.active > 0 {
		s.track.seen[d] = true
	}
	s.track.mu.Unlock()
}

// removeUnrecorded deletes blob file d under its lock if the index has no
// record of it.
func (s *Store) removeUnrecorded(d digest.Digest) error {
	mu := s.contentLock(d)
	mu.Lock()
	defer mu.Unlock()
	if s.shared {
		// Claim the deletion with a tombstone where there is no record:
		// a push of d on another node then waits or retries.
		tomb := sharedRecord(0, stateDeleting)
		claimed := false
		if err := s.retry(func(txn Txn) error {
			ok, err := exists(txn, blobKey(d))
			if claimed = err == nil && !ok; !claimed {
				return err
			}
			return txn.Set(blobKey(d), tomb)
		}); err != nil || !claimed {
			return err
		}
		return s.finishDeleting(d, tomb)
	}
	var recorded bool
	if err := s.idx.View(func(txn Txn) (err error) {
		recorded, err = exists(txn, blobKey(d))
		return err
	}); err != nil || recorded {
		return err
	}
	return s.blobs.Delete(d)
}

// sweepOrphans removes blob files older than the grace period that the
// index never recorded (a crash between rename and index commit).
func (s *Store) sweepOrphans(rep *GCReport, o GCOptions) error {
	recorded := map[digest.Digest]bool{}
	if err := s.idx.View(func(txn Txn) error {
		return txn.Scan([]byte("b/"), nil, true, func(k, _ []byte) error {
			recorded[digest.Digest(k[2:])] = true
			return nil
		})
	}); err != nil {
		return err
	}
	return s.blobs.Walk(func(b BlobInfo) error {
		d := b.Digest
		if d == "" || recorded[d] || o.Now.Sub(b.ModTime) < o.Grace {
			return nil
		}
		rep.Orphans++
		rep.Bytes += b.Size
		rep.add("orphan file %s (%d bytes, never indexed)", d, b.Size)
		if o.DryRun {
			return nil
		}
		return s.removeUnrecorded(d)
	})
}
