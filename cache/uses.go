package cache

import (
	"encoding/binary"
	"errors"
	"sync"
	"sync/atomic"
	"time"
)

// refKey names a reference (a tag or a digest, "" for the repository as a
// whole) of a repository: the in-memory caches' key. A struct, not a
// concatenated string, so that a lookup allocates nothing.
type refKey struct{ repo, ref string }

// String is the key's form in the index: repo\x00ref.
func (k refKey) String() string { return k.repo + "\x00" + k.ref }

// use is what the data path learns of one reference between flushes, in
// one entry: its last use (Touch: the LRU and pins of mirrored content)
// and its pulls (NotePull: the console's counts). Updates are atomic
// stores and adds on an entry found under a shared lock.
type use struct {
	at, flushed atomic.Int64 // last use (unix nanoseconds), and what the index has
	n, pulledAt atomic.Int64 // pulls not yet added to the index, and the latest
}

// idle reports an entry with nothing left to flush.
func (u *use) idle() bool { return u.at.Load() == u.flushed.Load() && u.n.Load() == 0 }

// uses is the one map of uses, flushed by FlushAccess into one record per
// reference (a/ keys, useRecord).
type uses struct {
	mu sync.RWMutex
	m  map[refKey]*use
}

// get returns k's entry, made on first use.
func (u *uses) get(k refKey) *use {
	u.mu.RLock()
	e := u.m[k]
	u.mu.RUnlock()
	if e != nil {
		return e
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	if e = u.m[k]; e == nil {
		if u.m == nil {
			u.m = map[refKey]*use{}
		}
		e = &use{}
		u.m[k] = e
	}
	return e
}

// load returns k's entry, if any.
func (u *uses) load(k refKey) *use {
	u.mu.RLock()
	defer u.mu.RUnlock()
	return u.m[k]
}

// each calls fn with every entry (a snapshot: fn may take the lock).
func (u *uses) each(fn func(refKey, *use)) {
	u.mu.RLock()
	keys := make([]refKey, 0, len(u.m))
	vals := make([]*use, 0, len(u.m))
	for k, v := range u.m {
		keys, vals = append(keys, k), append(vals, v)
	}
	u.mu.RUnlock()
	for i, k := range keys {
		fn(k, vals[i])
	}
}

// dropIdle removes k's entry when it is e and has nothing to flush: a
// later use adds it again.
func (u *uses) dropIdle(k refKey, e *use) {
	u.mu.Lock()
	if u.m[k] == e && e.idle() {
		delete(u.m, k)
	}
	u.mu.Unlock()
}

// useKey is the index key of a reference's use record: a/<repo>\x00<ref>.
func useKey(repo, ref string) []byte { return []byte("a/" + repo + "\x00" + ref) }

// useRecord is one reference's use, as the index keeps it (a/ keys): its
// last use (unix nanoseconds; 0: none, or a pin an eviction forgot while
// its pulls are kept) and its pulls. Records from before pulls were kept
// here hold the last use alone (8 bytes).
type useRecord struct {
	at    int64
	pulls PullStat
}

func decodeUse(v []byte) useRecord {
	var u useRecord
	if len(v) >= 8 {
		u.at = int64(binary.BigEndian.Uint64(v))
	}
	if len(v) == 24 {
		u.pulls = decodePullStat(v[8:])
	}
	return u
}

func (u useRecord) encode() []byte {
	return append(binary.BigEndian.AppendUint64(nil, uint64(u.at)), encodePullStat(u.pulls)...)
}

// lastUse is the record's last use (ok false: none).
func (u useRecord) lastUse() (time.Time, bool) {
	if u.at == 0 {
		return time.Time{}, false
	}
	return time.Unix(0, u.at), true
}

// forgetUse clears the last use of the record at key (a pin an eviction
// releases), keeping its pulls; a record with no pulls goes.
func forgetUse(txn Txn, key []byte) error {
	v, err := txn.Get(key)
	if errors.Is(err, errNotFound) {
		return nil
	} else if err != nil {
		return err
	}
	u := decodeUse(v)
	if u.pulls.Count == 0 {
		return txn.Delete(key)
	}
	u.at = 0
	return txn.Set(key, u.encode())
}

// flushUses writes the uses and pulls learnt since the last flush: one
// record per reference, read, merged and written in transactions of at
// most half MaxOps references. What a failed write did not record stays
// in memory for the next flush.
func (s *Maintenance) flushUses() error {
	type entry struct {
		k          refKey
		u          *use
		at, before int64 // the last use now, and what the index had
		n, pulled  int64
	}
	var batch []entry
	s.uses.each(func(k refKey, u *use) {
		at, before := u.at.Load(), u.flushed.Load()
		n := u.n.Swap(0)
		if at == before && n == 0 {
			s.uses.dropIdle(k, u)
			return
		}
		batch = append(batch, entry{k, u, at, before, n, u.pulledAt.Load()})
	})
	if len(batch) == 0 {
		return nil
	}
	giveBack := func(es []entry) {
		for _, e := range es {
			e.u.n.Add(e.n)
		}
	}
	if err := s.indexWrite(false); err != nil {
		giveBack(batch)
		return err // kept: the next flush writes them
	}
	step := max(1, s.idx.MaxOps()/2)
	for i := 0; i < len(batch); i += step {
		chunk := batch[i:min(len(batch), i+step)]
		err := s.retry(func(txn Txn) error {
			for _, e := range chunk {
				key := useKey(e.k.repo, e.k.ref)
				var rec useRecord
				if v, err := txn.Get(key); err == nil {
					rec = decodeUse(v)
				} else if !errors.Is(err, errNotFound) {
					return err
				}
				if e.at != e.before {
					rec.at = e.at
				}
				rec.pulls = rec.pulls.add(e.n, e.pulled)
				if err := txn.Set(key, rec.encode()); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			giveBack(batch[i:])
			return err
		}
		for _, e := range chunk {
			e.u.flushed.Store(e.at)
		}
	}
	return nil
}

// pullsMerged marks a data directory whose pull counts were moved into
// the use records (they were p/<repo>\x00<ref> keys).
var pullsMerged = []byte("s/pulls-merged")

// mergePulls moves the pull counts of a data directory from before the
// use records kept them into those records, once.
func (s *Maintenance) mergePulls() error {
	done := false
	if err := s.idx.View(func(txn Txn) error {
		ok, err := exists(txn, pullsMerged)
		done = ok
		return err
	}); err != nil || done {
		return err
	}
	var keys [][]byte
	if err := s.idx.View(func(txn Txn) error {
		return txn.Scan([]byte("p/"), nil, true, func(k, _ []byte) error {
			keys = append(keys, append([]byte(nil), k...))
			return nil
		})
	}); err != nil {
		return err
	}
	step := max(1, s.idx.MaxOps()/3)
	for len(keys) > 0 {
		n := min(len(keys), step)
		if err := s.retry(func(txn Txn) error {
			for _, k := range keys[:n] {
				v, err := txn.Get(k)
				if errors.Is(err, errNotFound) {
					continue // another node moved it
				} else if err != nil {
					return err
				}
				key := append([]byte("a/"), k[2:]...)
				var rec useRecord
				if old, err := txn.Get(key); err == nil {
					rec = decodeUse(old)
				} else if !errors.Is(err, errNotFound) {
					return err
				}
				p := decodePullStat(v)
				var last int64
				if !p.Last.IsZero() {
					last = p.Last.UnixNano()
				}
				rec.pulls = rec.pulls.add(p.Count, last)
				if err := txn.Set(key, rec.encode()); err != nil {
					return err
				}
				if err := txn.Delete(k); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			return err
		}
		keys = keys[n:]
	}
	return s.retry(func(txn Txn) error { return txn.Set(pullsMerged, []byte("1")) })
}
