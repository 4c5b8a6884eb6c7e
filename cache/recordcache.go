package cache

import (
	"encoding/json"
	"errors"
	"sync"

	"github.com/wharf-registry/wharf/cache/index"
)

// recordCache keeps the JSON records of one key prefix read from the
// index (access tokens, people), so that a sign-in costs no index read;
// writes here and the change feed (every node's writes) drop entries.
type recordCache[T any] struct {
	mu      sync.Mutex
	records map[string]T
	// absent are names the index did not hold (a guesser's, or a user
	// of another kind): asked again only after a write names them.
	absent map[string]bool
	// gen counts forgets: a read that raced a write (the index answered
	// before the write, the cache forgot after) stores nothing.
	gen uint64
}

// maxAbsent bounds the names remembered as absent (all are dropped when
// it is reached).
const maxAbsent = 4096

func (c *recordCache[T]) forget(name string) {
	c.mu.Lock()
	delete(c.records, name)
	delete(c.absent, name)
	c.gen++
	c.mu.Unlock()
}

func (c *recordCache[T]) forgetAll() {
	c.mu.Lock()
	c.records, c.absent = nil, nil
	c.gen++
	c.mu.Unlock()
}

// read returns the record at key, from the cache or the index; ok is
// false when there is none.
func (c *recordCache[T]) read(idx Index, name string, key []byte) (rec T, ok bool, err error) {
	c.mu.Lock()
	rec, ok = c.records[name]
	gone, gen := c.absent[name], c.gen
	c.mu.Unlock()
	if ok || gone {
		return rec, ok, nil
	}
	var raw []byte
	err = idx.View(func(txn Txn) error {
		v, err := txn.Get(key)
		raw = v
		return err
	})
	if errors.Is(err, errNotFound) {
		c.mu.Lock()
		if c.gen == gen {
			if c.absent == nil || len(c.absent) >= maxAbsent {
				c.absent = map[string]bool{}
			}
			c.absent[name] = true
		}
		c.mu.Unlock()
		return rec, false, nil
	}
	if err != nil {
		return rec, false, err
	}
	if err := json.Unmarshal(raw, &rec); err != nil {
		return rec, false, err
	}
	c.mu.Lock()
	if c.gen == gen {
		if c.records == nil {
			c.records = map[string]T{}
		}
		c.records[name] = rec
	}
	c.mu.Unlock()
	return rec, true, nil
}

// scanRecords reads every JSON record under prefix (those that do not
// decode are left out).
func scanRecords[T any](idx Index, prefix string) ([]T, error) {
	var out []T
	err := idx.View(func(txn Txn) error {
		return txn.Scan([]byte(prefix), nil, false, func(_, v []byte) error {
			var rec T
			if json.Unmarshal(v, &rec) == nil {
				out = append(out, rec)
			}
			return nil
		})
	})
	return out, err
}

// Claim takes the named duty for this node (Queue.Claim), for the records'
// own duties (rechecking people).
func (s *Records) Claim(name string) (release func(), ok bool, err error) { return claim(s.idx, name) }

// claim takes the named duty: on a cluster one node at a time holds it
// (until release, or until the node dies); on a single box it is always
// this one's. ok is false while another node holds it.
func claim(idx Index, name string) (release func(), ok bool, err error) {
	l, shared := idx.(index.Locker)
	if !shared {
		return func() {}, true, nil
	}
	release, err = l.TryLock(name)
	if errors.Is(err, index.ErrLockHeld) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	return release, true, nil
}
