package cache

import (
	"sync"
	"sync/atomic"
)

// clock is a bounded cache whose reads take a shared lock only: recency is
// a flag each read sets on its entry (CLOCK, the second-chance
// approximation of LRU), not a move to the front of a list, which would
// make every read of a hot key an exclusive lock. A full cache replaces
// the first entry, going round from a hand, not read since the hand last
// passed it.
type clock[K comparable, V any] struct {
	mu   sync.RWMutex
	m    map[K]*clockEntry[K, V]
	ring []*clockEntry[K, V] // slots; nil: free
	free []int               // free slots
	hand int
}

type clockEntry[K comparable, V any] struct {
	key  K
	val  V // never changed: Add of a known key makes a new entry
	slot int
	used atomic.Bool
}

func newClock[K comparable, V any](n int) *clock[K, V] {
	c := &clock[K, V]{m: make(map[K]*clockEntry[K, V], n), ring: make([]*clockEntry[K, V], max(1, n))}
	c.Purge()
	return c
}

// Get returns k's value and marks it used.
func (c *clock[K, V]) Get(k K) (V, bool) {
	c.mu.RLock()
	e := c.m[k]
	c.mu.RUnlock()
	if e == nil {
		var zero V
		return zero, false
	}
	if !e.used.Load() { // a store only when it changes: no shared cache line written per read
		e.used.Store(true)
	}
	return e.val, true
}

// Add sets k's value, replacing an entry not used lately when full.
func (c *clock[K, V]) Add(k K, v V) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if old := c.m[k]; old != nil {
		e := &clockEntry[K, V]{key: k, val: v, slot: old.slot}
		e.used.Store(true)
		c.ring[old.slot], c.m[k] = e, e
		return
	}
	var slot int
	if n := len(c.free); n > 0 {
		slot, c.free = c.free[n-1], c.free[:n-1]
	} else {
		for { // at most two turns: the first clears every flag
			e := c.ring[c.hand]
			if !e.used.Load() {
				delete(c.m, e.key)
				slot = c.hand
				c.hand = (c.hand + 1) % len(c.ring)
				break
			}
			e.used.Store(false)
			c.hand = (c.hand + 1) % len(c.ring)
		}
	}
	e := &clockEntry[K, V]{key: k, val: v, slot: slot}
	c.ring[slot], c.m[k] = e, e
}

// Remove drops k.
func (c *clock[K, V]) Remove(k K) {
	c.mu.Lock()
	if e := c.m[k]; e != nil {
		delete(c.m, k)
		c.ring[e.slot] = nil
		c.free = append(c.free, e.slot)
	}
	c.mu.Unlock()
}

// Purge drops everything.
func (c *clock[K, V]) Purge() {
	c.mu.Lock()
	clear(c.m)
	clear(c.ring)
	c.free = c.free[:0]
	for i := len(c.ring) - 1; i >= 0; i-- {
		c.free = append(c.free, i)
	}
	c.hand = 0
	c.mu.Unlock()
}

// Len is the number of entries.
func (c *clock[K, V]) Len() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.m)
}
