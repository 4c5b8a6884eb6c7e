package cache

import (
	"errors"

	"github.com/wharf-registry/wharf/cache/index"
)

// Index and Txn are the index the store is over (package index); a
// backend implements them.
type (
	Index = index.Index
	Txn   = index.Txn
)

var (
	errNotFound = index.ErrNotFound
	errConflict = index.ErrConflict
	errStopScan = index.ErrStopScan
)

// ErrIndexUnavailable wraps the failures of an index on the network (etcd
// without a quorum, unreachable, timing out): the request may succeed
// later; the mirror answers 503 with Retry-After.
var ErrIndexUnavailable = index.ErrUnavailable

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
