package cache

import (
	"sync"

	"github.com/opencontainers/go-digest"
)

// sweepBlobs removes the records, then the files, of blobs no repository
// links. The referenced set is computed from a snapshot without any lock;
// every link made meanwhile is noted (noteLinked, under the content lock of
// its digest). Then, under all content locks — a pause for commits as long
// as one small transaction, never for reads or uploads — the records of the
// candidates that nothing linked since are deleted. Each file is removed
// under its digest's lock only if its record is still gone.
func (s *Maintenance) sweepBlobs(rep *GCReport, o GCOptions, planned map[string]bool) error {
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
func (s *Maintenance) dropBlobRecords(doomed []digest.Digest) ([]digest.Digest, error) {
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
func (s *Maintenance) removeUnrecorded(d digest.Digest) error {
	mu := s.contentLocks.of(d)
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
func (s *Maintenance) sweepOrphans(rep *GCReport, o GCOptions) error {
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
