// Package index declares the content store's ordered, transactional
// key-value index and the capabilities an implementation may add. It
// imports nothing of Wharf: the store (package cache) uses it, and each
// backend (badgerindex, etcdindex) implements it; cmd chooses one.
//
// indextest holds the conformance suite every implementation runs.
package index

import (
	"errors"
	"fmt"
)

// Index is the store's ordered, transactional key-value index (the key
// layout is in cache/doc.go).
//
// Transactions are snapshot-isolated and optimistic: a read-write
// transaction whose point reads (Get) changed before it committed fails with
// ErrConflict, and the store retries it. Scans see the snapshot but are not
// checked for conflicts, as in Badger.
type Index interface {
	View(fn func(Txn) error) error
	Update(fn func(Txn) error) error
	// MaxOps bounds the writes (and point reads) one transaction may hold;
	// bulk deletions are batched to it.
	MaxOps() int
	Close() error
}

// Txn is one index transaction. Values returned or passed to a scan's
// function are the caller's to keep only when said so.
type Txn interface {
	// Get returns a copy of key's value, or ErrNotFound.
	Get(key []byte) ([]byte, error)
	Set(key, val []byte) error
	Delete(key []byte) error
	// Scan calls fn, in key order, with every key that begins with prefix
	// and is not before from (nil: the whole prefix); with keysOnly, val is
	// nil. key and val are valid only during the call. fn returning
	// ErrStopScan ends the scan without error.
	Scan(prefix, from []byte, keysOnly bool, fn func(key, val []byte) error) error
}

var (
	ErrNotFound = errors.New("cache: index: key not found")
	ErrConflict = errors.New("cache: index: transaction conflict")
	ErrStopScan = errors.New("cache: index: stop scan")
)

// ErrUnavailable wraps the failures of an index on the network (etcd
// without a quorum, unreachable, timing out): the request may succeed
// later; the mirror answers 503 with Retry-After.
var ErrUnavailable = errors.New("the index (etcd) is unavailable")

// ErrReplayNeeded: a local index holds writes from an unclean stop that
// only a writable open replays (it was opened read-only).
var ErrReplayNeeded = errors.New("the index has writes from an unclean stop to replay")

// ErrLockHeld: another node of the cluster holds the lock (Locker).
var ErrLockHeld = errors.New("another node of the cluster holds the collector's lock")

// Err wraps an index failure of op that is not one of the sentinels.
func Err(op string, err error) error {
	return fmt.Errorf("cache: index %s: %w", op, err)
}

// The capabilities below are what an index may add; the store asks for
// them once, when it opens.

// Watcher is an index shared with other processes: the store learns of
// their writes (and its own) through it, to keep its in-memory caches
// true. Changes arrive in commit order, shortly after the commit.
type Watcher interface {
	// Watch calls fn with each changed key and its new value (deleted:
	// removed) until Close; lost, when the watch had to restart and
	// changes may have been missed, is called instead so that every cache
	// is dropped.
	Watch(fn func(key, val []byte, deleted bool), lost func())
}

// Locker is a shared index that holds named locks for its nodes, released
// when the holder dies.
type Locker interface {
	TryLock(name string) (release func(), err error) // ErrLockHeld when held
}

// Members is a shared index that knows the cluster's live nodes.
type Members interface {
	Join(id, url string)
	Members() map[string]string // id → URL
}

// Compacter reclaims the index's own space: Badger's value log, etcd's
// history. Compact returns nil when there was nothing to reclaim.
type Compacter interface {
	Compact() error
}

// OnDisk is an index kept on the data directory's filesystem: the store's
// free-space rules (a floor for writes, a reserve, a clean close) apply to
// it. Allocate makes its memory-mapped write-ahead logs safe to write on a
// nearly full filesystem (see cache/space.go); the store calls it after
// opening and whenever it reads the free space.
type OnDisk interface {
	Allocate()
}

// Health is what the status page and metrics show of a networked index.
type Health struct {
	Endpoints []string
	Healthy   bool
	LastError string
	Events    int64 // changes received on the watch
	Restarts  int64 // watch restarts (a member lost, compaction)
	// Requests this node sent: reads (one per Get, one per scanned page)
	// and write transactions, and the writes that lost a compare.
	Reads, Writes, Conflicts int64
}

// Healther reports a networked index's health.
type Healther interface {
	Health() Health
}
