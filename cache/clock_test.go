package cache

import (
	"fmt"
	"sync"
	"testing"
)

// TestClock: a full cache replaces an entry not read since the hand last
// passed; a read entry gets a second chance; Remove and Purge free slots;
// Add of a known key replaces its value in place.
func TestClock(t *testing.T) {
	c := newClock[string, int](3)
	c.Add("a", 1)
	c.Add("b", 2)
	c.Add("c", 3)
	// The first full Add clears every flag (all were set by nothing yet:
	// entries start unused) and replaces the first.
	c.Add("d", 4)
	if _, ok := c.Get("a"); ok {
		t.Fatal("a survived, want the oldest unused entry replaced")
	}
	c.Get("b") // b is read: it gets a second chance
	c.Add("e", 5)
	if _, ok := c.Get("b"); !ok {
		t.Fatal("b was read but replaced")
	}
	if _, ok := c.Get("c"); ok {
		t.Fatal("c, unread, survived while b was kept")
	}
	c.Add("b", 20)
	if v, _ := c.Get("b"); v != 20 || c.Len() != 3 {
		t.Fatalf("b = %d, len %d after replacing its value", v, c.Len())
	}
	c.Remove("b")
	c.Add("f", 6)
	if _, ok := c.Get("d"); !ok {
		t.Fatal("an Add into a removed entry's slot replaced another")
	}
	c.Purge()
	if c.Len() != 0 {
		t.Fatalf("%d entries after Purge", c.Len())
	}
	for i := range 10 {
		c.Add(fmt.Sprint(i), i)
	}
	if c.Len() != 3 {
		t.Fatalf("len %d, want the bound 3", c.Len())
	}
}

// TestClockConcurrent: readers and writers together (run with -race).
func TestClockConcurrent(t *testing.T) {
	c := newClock[refKey, int](64)
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 2000 {
				k := refKey{"r", fmt.Sprint((i * (w + 1)) % 200)}
				if v, ok := c.Get(k); ok && v != len(k.ref) {
					t.Errorf("%v = %d", k, v)
					return
				}
				c.Add(k, len(k.ref))
				if i%97 == 0 {
					c.Remove(k)
				}
			}
		}()
	}
	wg.Wait()
	if n := c.Len(); n > 64 {
		t.Fatalf("len %d over the bound", n)
	}
}
