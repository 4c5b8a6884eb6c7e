package cache

import (
	"bytes"
	"errors"

	"github.com/dgraph-io/badger/v4"
)

// badgerIndex is the single-box index: Badger under <data>/index.
type badgerIndex struct{ db *badger.DB }

func (b badgerIndex) View(fn func(Txn) error) error {
	return b.db.View(func(txn *badger.Txn) error { return fn(badgerTxn{txn}) })
}

func (b badgerIndex) Update(fn func(Txn) error) error {
	err := b.db.Update(func(txn *badger.Txn) error { return fn(badgerTxn{txn}) })
	if errors.Is(err, badger.ErrConflict) {
		return errConflict
	}
	return err
}

// MaxOps: Badger refuses a transaction larger than a fraction of its
// memtable (2 MiB here, see badgerOptions).
func (b badgerIndex) MaxOps() int { return 1000 }

func (b badgerIndex) Close() error { return b.db.Close() }

type badgerTxn struct{ t *badger.Txn }

func (t badgerTxn) Get(key []byte) ([]byte, error) {
	item, err := t.t.Get(key)
	if errors.Is(err, badger.ErrKeyNotFound) {
		return nil, errNotFound
	} else if err != nil {
		return nil, err
	}
	return item.ValueCopy(nil)
}

func (t badgerTxn) Set(key, val []byte) error { return t.t.Set(key, val) }
func (t badgerTxn) Delete(key []byte) error   { return t.t.Delete(key) }

func (t badgerTxn) Scan(prefix, from []byte, keysOnly bool, fn func(key, val []byte) error) error {
	it := t.t.NewIterator(badger.IteratorOptions{PrefetchValues: !keysOnly, Prefix: prefix})
	defer it.Close()
	if from == nil || bytes.Compare(from, prefix) < 0 {
		from = prefix
	}
	for it.Seek(from); it.Valid(); it.Next() {
		item := it.Item()
		var err error
		if keysOnly {
			err = fn(item.Key(), nil)
		} else {
			err = item.Value(func(v []byte) error { return fn(item.Key(), v) })
		}
		if errors.Is(err, errStopScan) {
			return nil
		} else if err != nil {
			return err
		}
	}
	return nil
}
