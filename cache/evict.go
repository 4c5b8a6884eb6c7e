package cache

import (
	"errors"
	"sort"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
)

// Touch records that mirrored tag (or digest) ref of repo was used. It is
// an in-memory update; FlushAccess writes the batch to the index. A key
// already known is one atomic store under a shared lock: a hot tag's GETs
// (tens of thousands a second) neither allocate nor queue.
func (s *Store) Touch(repo, ref string) {
	s.uses.get(refKey{repo, ref}).at.Store(time.Now().UnixNano())
}

// FlushAccess writes the uses and pulls recorded since the last flush:
// one record per reference (uses.go). Entries with nothing new are
// dropped from memory.
func (s *Maintenance) FlushAccess() error {
	err := s.flushUses()
	if terr := (*Records)(s).FlushTokenUses(); err == nil {
		err = terr
	}
	return err
}

// Size is the number of bytes the blob store holds, by its records.
func (s *Maintenance) Size() (int64, error) {
	var total int64
	err := s.idx.View(func(txn Txn) error {
		return txn.Scan([]byte("b/"), nil, false, func(_, v []byte) error {
			if liveRecord(v) {
				total += decodeSize(v)
			}
			return nil
		})
	})
	return total, err
}

// EvictOptions configures an eviction pass.
type EvictOptions struct {
	MaxBytes  int64         // quota; 0: no quota
	High, Low float64       // evict above High×MaxBytes down to Low×MaxBytes (0.95, 0.85)
	Retention time.Duration // mirrored tags unused this long go regardless of quota; 0: keep
	// Pinned says which mirrored tags are pinned: never evicted (by the
	// quota, --retention or a short disk). nil: none.
	Pinned func(repo, tag string) bool
	// Free asks for this many bytes to be freed whatever the quota says:
	// the filesystem is short of space (Store.SpaceDeficit).
	Free int64
	// GC configures the collections that free what evicted tags leave.
	// What eviction untags is collected at once (no grace); other mirrored
	// content keeps a short grace (a minute) and pushed content the full one.
	GC GCOptions
}

// EvictReport says what an eviction pass did.
type EvictReport struct {
	Tags        []string // "repo:tag" (or "repo@digest", a pull by digest) evicted, least recently used first
	Freed       int64    // net bytes the store shrank by (never negative)
	Before, Now int64
	// NotFreed is the Free asked for and not pursued: more than the whole
	// store, so evicting could not have given it.
	NotFreed int64
}

type lruEntry struct {
	repo, tag string
	digest    digest.Digest
	used      time.Time
}

// Evict removes least-recently-used mirrored tags, then collects what they
// leave, until the store is below the low-water mark (when above the
// high-water mark), and expires mirrored tags unused for longer than the
// retention. Only tags the mirror wrote are candidates (their recorded
// origin, whatever the repository's name); pushed content is never evicted.
// A blob being read stays readable to its reader.
func (s *Maintenance) Evict(o EvictOptions) (EvictReport, error) {
	var rep EvictReport
	release, err := s.collectorLock()
	if err != nil {
		return rep, err
	}
	defer release()
	if o.High <= 0 {
		o.High = 0.95
	}
	if o.Low <= 0 || o.Low > o.High {
		o.Low = 0.85
	}
	if o.GC.Now.IsZero() {
		o.GC.Now = time.Now()
	}
	if o.GC.MirroredGrace <= 0 {
		o.GC.MirroredGrace = time.Minute
	}
	if err := s.FlushAccess(); err != nil && !errors.Is(err, ErrStorageFull) {
		return rep, err
	}
	size, err := s.Size()
	if err != nil {
		return rep, err
	}
	rep.Before, rep.Now = size, size
	if o.Free > size {
		// Something else filled the filesystem: even with everything this
		// store holds gone it would stay short. Evicting would only send
		// every client upstream while nothing new can be stored: what is
		// cached is served read-only instead.
		rep.NotFreed, o.Free = o.Free, 0
	}
	entries, err := s.mirroredTags()
	if err != nil {
		return rep, err
	}
	var expired, rest []lruEntry
	for _, e := range entries {
		if o.Pinned != nil && e.tag != e.digest.String() && o.Pinned(e.repo, e.tag) {
			continue
		}
		if o.Retention > 0 && o.GC.Now.Sub(e.used) > o.Retention {
			expired = append(expired, e)
		} else {
			rest = append(rest, e)
		}
	}
	over := func() bool {
		return o.MaxBytes > 0 && float64(rep.Now) > o.Low*float64(o.MaxBytes) || o.Free > 0 && rep.Before-rep.Now < o.Free
	}
	if len(expired) == 0 && (o.MaxBytes == 0 || float64(size) <= o.High*float64(o.MaxBytes)) && o.Free <= 0 {
		return rep, nil
	}
	evict := func(batch []lruEntry) error {
		gc := o.GC
		gc.Released = map[string][]digest.Digest{}
		for _, e := range batch {
			if e.tag == e.digest.String() { // a pull by digest (pins.go)
				if err := s.forgetUse(e.repo, e.tag); err != nil {
					return err
				}
				rep.Tags = append(rep.Tags, e.repo+"@"+e.tag)
				gc.Released[e.repo] = append(gc.Released[e.repo], e.digest)
				continue
			}
			if err := s.st().DeleteManifest(e.repo, e.tag); err != nil && !errors.Is(err, ErrManifestUnknown) {
				return err
			}
			rep.Tags = append(rep.Tags, e.repo+":"+e.tag)
			gc.Released[e.repo] = append(gc.Released[e.repo], e.digest)
		}
		if _, err := s.gc(gc); err != nil {
			return err
		}
		now, err := s.Size()
		rep.Now = now
		return err
	}
	if len(expired) > 0 {
		if err := evict(expired); err != nil {
			return rep, err
		}
	}
	for len(rest) > 0 && over() {
		n := max(1, len(rest)/10)
		if err := evict(rest[:n]); err != nil {
			return rep, err
		}
		rest = rest[n:]
	}
	rep.Freed = max(0, rep.Before-rep.Now) // pushes during the pass can outgrow what it freed
	return rep, nil
}

// mirroredTags lists the tags the mirror wrote, in repositories not pushed
// to, by last use: the latest of their recorded access and their last check
// upstream; and the mirrored manifests pulled by digest, by their last use
// (pins.go).
func (s *Maintenance) mirroredTags() ([]lruEntry, error) {
	var out []lruEntry
	err := s.idx.View(func(txn Txn) error {
		var tags []lruEntry
		if err := txn.Scan([]byte("t/"), nil, false, func(k, v []byte) error {
			repo, tag := splitRepoKey(k, "t/")
			if o, _ := s.st().Origin(repo); !o.Mirrored() {
				return nil
			}
			if te := decodeTag(v); te.mirrored() {
				tags = append(tags, lruEntry{repo: repo, tag: tag, digest: te.digest, used: te.checked})
			}
			return nil
		}); err != nil {
			return err
		}
		used := map[string]time.Time{} // repo\x00ref → last use
		if err := txn.Scan([]byte("a/"), nil, false, func(k, v []byte) error {
			if at, ok := decodeUse(v).lastUse(); ok {
				used[string(k[2:])] = at
			}
			return nil
		}); err != nil {
			return err
		}
		for _, e := range tags {
			if at := used[refKey{e.repo, e.tag}.String()]; at.After(e.used) {
				e.used = at
			}
			out = append(out, e)
		}
		pins, err := s.digestUses(txn, used)
		out = append(out, pins...)
		return err
	})
	sort.Slice(out, func(i, j int) bool {
		if !out[i].used.Equal(out[j].used) {
			return out[i].used.Before(out[j].used)
		}
		return strings.Compare(out[i].repo+out[i].tag, out[j].repo+out[j].tag) < 0
	})
	return out, err
}
