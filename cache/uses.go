package cache

import (
	"sync"
	"sync/atomic"
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

// uses is the one map of uses, flushed by FlushAccess (a/ keys) and
// FlushPulls (p/ keys).
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
