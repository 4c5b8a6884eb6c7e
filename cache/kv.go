package cache

import (
	"errors"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/wharf-registry/wharf/cache/index"
)

// kv is the index as the store writes it: transactions retried on
// conflicts, the free-space rules of an index on the data directory, and
// the in-memory caches of tags, manifests and links that writes keep true.
type kv struct {
	idx   Index
	disk  index.OnDisk // the index, when it is on the data directory's filesystem
	space *space

	tags      *clock[refKey, tagEntry]  // (repo, tag) → digest, checked
	manifests *clock[refKey, *Manifest] // (repo, digest) → manifest
	// links (shared index only) caches blob links, (repo, digest) → size:
	// a blob GET needs no index round trip, and serves on while the index
	// is unreachable. The index's change feed removes changed entries.
	links *clock[refKey, int64]
	// cacheMu and gen keep a reader from putting a value it read before a
	// write back into the LRU after that write invalidated it.
	// gen counts purges of every cache, gens the invalidations by stripe
	// of keys: a write to one key does not keep other reads from caching
	// (on a shared index, writes of every node arrive here).
	cacheMu sync.Mutex
	gen     uint64
	gens    [cacheStripes]uint64
	// writes counts the index writes that committed (on a shared index,
	// every node's, from the change feed): a collection's snapshot taken
	// at the same count is still the index's state (gcpreview.go).
	writes atomic.Uint64
}

// update runs fn in a read-write transaction, retrying on conflicts. It is
// refused with ErrStorageFull when the index has no room (see space.go).
func (s *kv) update(fn func(txn Txn) error) error {
	if err := s.indexWrite(false); err != nil {
		return err
	}
	return s.retry(fn)
}

// indexWrite is space.indexWrite for an index on the data directory's
// filesystem; a remote index takes its writes elsewhere.
func (s *kv) indexWrite(release bool) error {
	if s.disk == nil {
		return nil
	}
	return s.space.indexWrite(release)
}

// release is update for deletions: they free space, so they go on when
// other writes are refused.
func (s *kv) release(fn func(txn Txn) error) error {
	if err := s.indexWrite(true); err != nil {
		return err
	}
	return s.retry(fn)
}

func (s *kv) retry(fn func(txn Txn) error) error { return s.retryCounting(fn, true) }

// retryCounting is retry; count false leaves the write out of the count of
// content changes (queues, which change no content).
func (s *kv) retryCounting(fn func(txn Txn) error, count bool) error {
	for i := 0; ; i++ {
		err := s.idx.Update(fn)
		if err == nil && count {
			s.writes.Add(1)
		}
		if !errors.Is(err, errConflict) || i == 20 {
			return err
		}
	}
}

// keyValue is one write of setAll.
type keyValue struct{ key, val []byte }

// setAll writes kvs in transactions of at most MaxOps writes each, in
// order: not atomic as a whole.
func (s *kv) setAll(kvs []keyValue) error {
	return s.batched(len(kvs), false, true, func(txn Txn, i int) error { return txn.Set(kvs[i].key, kvs[i].val) })
}

// batched runs op for 0..n-1 in transactions of at most MaxOps each, in
// order (not atomic as a whole). release: the writes free space (they go
// on when the disk is full); count: they change content (retryCounting).
func (s *kv) batched(n int, release, count bool, op func(txn Txn, i int) error) error {
	if err := s.indexWrite(release); err != nil {
		return err
	}
	for from := 0; from < n; {
		to := min(n, from+s.idx.MaxOps())
		if err := s.retryCounting(func(txn Txn) error {
			for i := from; i < to; i++ {
				if err := op(txn, i); err != nil {
					return err
				}
			}
			return nil
		}, count); err != nil {
			return err
		}
		from = to
	}
	return nil
}

// invalidate drops cached entries after a write to the index committed.
func (s *kv) invalidate(repo string, refs ...string) {
	s.cacheMu.Lock()
	for _, r := range refs {
		key := refKey{repo, r}
		s.gens[stripe(key)]++
		if strings.Contains(r, ":") {
			s.manifests.Remove(key)
		} else {
			s.tags.Remove(key)
		}
	}
	s.cacheMu.Unlock()
}

const cacheStripes = 64

// stripe is the slot of key in Store.gens (FNV-1a of repo, NUL, ref).
func stripe(key refKey) int {
	h := uint32(2166136261)
	for _, s := range [2]string{key.repo, key.ref} {
		for i := 0; i < len(s); i++ {
			h = (h ^ uint32(s[i])) * 16777619
		}
		h *= 16777619 // the NUL between them
	}
	return int(h % cacheStripes)
}

// generation is the cache generation of key: it changes whenever an entry
// of key's stripe, or every entry, is invalidated.
func (s *kv) generation(key refKey) uint64 {
	s.cacheMu.Lock()
	defer s.cacheMu.Unlock()
	return s.gen + s.gens[stripe(key)]
}

// remember caches a value of key read at generation g unless a write that
// could have changed it came since.
func (s *kv) remember(key refKey, g uint64, add func()) {
	s.cacheMu.Lock()
	if s.gen+s.gens[stripe(key)] == g {
		add()
	}
	s.cacheMu.Unlock()
}
