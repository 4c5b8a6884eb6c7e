package cache

import (
	"errors"
	"fmt"
)

// Index is the store's ordered, transactional key-value index (the key
// layout is in doc.go). Badger under the data directory is the default
// (badgerIndex); a cluster's nodes share one in etcd (EtcdIndex).
//
// Transactions are snapshot-isolated and optimistic: a read-write
// transaction whose point reads (Get) changed before it committed fails with
// errConflict, and Store retries it. Scans see the snapshot but are not
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
	// Get returns a copy of key's value, or errNotFound.
	Get(key []byte) ([]byte, error)
	Set(key, val []byte) error
	Delete(key []byte) error
	// Scan calls fn, in key order, with every key that begins with prefix
	// and is not before from (nil: the whole prefix); with keysOnly, val is
	// nil. key and val are valid only during the call. fn returning
	// errStopScan ends the scan without error.
	Scan(prefix, from []byte, keysOnly bool, fn func(key, val []byte) error) error
}

var (
	errNotFound = errors.New("cache: index: key not found")
	errConflict = errors.New("cache: index: transaction conflict")
	errStopScan = errors.New("cache: index: stop scan")
)

// ErrIndexUnavailable wraps the failures of an index on the network (etcd
// without a quorum, unreachable, timing out): the request may succeed
// later; the mirror answers 503 with Retry-After.
var ErrIndexUnavailable = errors.New("the index (etcd) is unavailable")

// IndexWatcher is an Index shared with other processes: the store learns
// of their writes (and its own) through it, to keep its in-memory caches
// true. Changes arrive in commit order, shortly after the commit.
type IndexWatcher interface {
	// Watch calls fn with each changed key and its new value (deleted:
	// removed) until Close;
	// lost, when the watch had to restart and changes may have been
	// missed, is called instead so that every cache is dropped.
	Watch(fn func(key, val []byte, deleted bool), lost func())
}

// exists reports whether key is in the index.
func exists(txn Txn, key []byte) (bool, error) {
	_, err := txn.Get(key)
	if errors.Is(err, errNotFound) {
		return false, nil
	}
	return err == nil, err
}

// scanFirst reports whether any key begins with prefix.
func scanFirst(txn Txn, prefix []byte) (bool, error) {
	found := false
	err := txn.Scan(prefix, nil, true, func([]byte, []byte) error {
		found = true
		return errStopScan
	})
	return found, err
}

func indexErr(op string, err error) error {
	return fmt.Errorf("cache: index %s: %w", op, err)
}
