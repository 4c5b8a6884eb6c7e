// Package indextest is the conformance suite of index.Index: every
// implementation runs Run against a fresh, empty index.
package indextest

import (
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/wharf-registry/wharf/cache/index"
)

// Run checks the contract the content store relies on. open returns a
// new, empty index; Run closes it.
func Run(t *testing.T, open func(t *testing.T) index.Index) {
	cases := []struct {
		name string
		fn   func(*testing.T, index.Index)
	}{
		{"GetSetDelete", getSetDelete},
		{"OwnWrites", ownWrites},
		{"AbortedUpdate", abortedUpdate},
		{"SnapshotReads", snapshotReads},
		{"LostUpdateConflicts", lostUpdate},
		{"CreateRaceConflicts", createRace},
		{"ScanOrderAndStart", scanOrder},
		{"ScanStop", scanStop},
		{"TransactionSize", txnSize},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ix := open(t)
			defer ix.Close()
			c.fn(t, ix)
		})
	}
}

func set(t *testing.T, ix index.Index, kv ...string) {
	t.Helper()
	if err := ix.Update(func(txn index.Txn) error {
		for i := 0; i < len(kv); i += 2 {
			if err := txn.Set([]byte(kv[i]), []byte(kv[i+1])); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

func get(t *testing.T, ix index.Index, key string) (string, error) {
	t.Helper()
	var v []byte
	err := ix.View(func(txn index.Txn) (err error) {
		v, err = txn.Get([]byte(key))
		return err
	})
	return string(v), err
}

func getSetDelete(t *testing.T, ix index.Index) {
	if _, err := get(t, ix, "t/absent"); !errors.Is(err, index.ErrNotFound) {
		t.Fatalf("absent key: %v, want ErrNotFound", err)
	}
	set(t, ix, "t/a", "1")
	if v, err := get(t, ix, "t/a"); err != nil || v != "1" {
		t.Fatalf("after set: %q %v", v, err)
	}
	set(t, ix, "t/a", "2")
	if v, _ := get(t, ix, "t/a"); v != "2" {
		t.Fatalf("overwritten: %q", v)
	}
	if err := ix.Update(func(txn index.Txn) error { return txn.Delete([]byte("t/a")) }); err != nil {
		t.Fatal(err)
	}
	if _, err := get(t, ix, "t/a"); !errors.Is(err, index.ErrNotFound) {
		t.Fatalf("deleted key: %v", err)
	}
	if err := ix.Update(func(txn index.Txn) error { return txn.Delete([]byte("t/never")) }); err != nil {
		t.Fatalf("deleting an absent key: %v", err)
	}
	// A value returned is the caller's: changing it changes nothing.
	set(t, ix, "t/b", "keep")
	ix.View(func(txn index.Txn) error {
		v, _ := txn.Get([]byte("t/b"))
		if len(v) > 0 {
			v[0] = 'X'
		}
		return nil
	})
	if v, _ := get(t, ix, "t/b"); v != "keep" {
		t.Fatalf("a returned value aliases the index: %q", v)
	}
}

func ownWrites(t *testing.T, ix index.Index) {
	set(t, ix, "t/x", "old")
	if err := ix.Update(func(txn index.Txn) error {
		txn.Set([]byte("t/x"), []byte("new"))
		if v, err := txn.Get([]byte("t/x")); err != nil || string(v) != "new" {
			t.Errorf("own write: %q %v", v, err)
		}
		txn.Delete([]byte("t/x"))
		if _, err := txn.Get([]byte("t/x")); !errors.Is(err, index.ErrNotFound) {
			t.Errorf("own delete: %v", err)
		}
		return txn.Set([]byte("t/y"), []byte("y"))
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := get(t, ix, "t/x"); !errors.Is(err, index.ErrNotFound) {
		t.Fatalf("committed delete: %v", err)
	}
}

func abortedUpdate(t *testing.T, ix index.Index) {
	boom := errors.New("boom")
	err := ix.Update(func(txn index.Txn) error {
		txn.Set([]byte("t/aborted"), []byte("1"))
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("Update returned %v, want the function's error", err)
	}
	if _, err := get(t, ix, "t/aborted"); !errors.Is(err, index.ErrNotFound) {
		t.Fatalf("a write of a failed transaction landed: %v", err)
	}
}

func snapshotReads(t *testing.T, ix index.Index) {
	set(t, ix, "t/s", "before", "t/s2", "before")
	err := ix.View(func(txn index.Txn) error {
		if v, err := txn.Get([]byte("t/s")); err != nil || string(v) != "before" {
			return fmt.Errorf("first read: %q %v", v, err)
		}
		set(t, ix, "t/s", "after", "t/s2", "after", "t/s3", "new")
		if v, err := txn.Get([]byte("t/s2")); err != nil || string(v) != "before" {
			return fmt.Errorf("a read after another commit sees it: %q %v", v, err)
		}
		if _, err := txn.Get([]byte("t/s3")); !errors.Is(err, index.ErrNotFound) {
			return fmt.Errorf("a key created after the snapshot: %v", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := get(t, ix, "t/s2"); v != "after" {
		t.Fatalf("after the view: %q", v)
	}
}

func lostUpdate(t *testing.T, ix index.Index) {
	set(t, ix, "t/c", "0")
	err := ix.Update(func(txn index.Txn) error {
		if _, err := txn.Get([]byte("t/c")); err != nil {
			return err
		}
		set(t, ix, "t/c", "other")
		return txn.Set([]byte("t/c"), []byte("mine"))
	})
	if !errors.Is(err, index.ErrConflict) {
		t.Fatalf("lost update: %v, want ErrConflict", err)
	}
	if v, _ := get(t, ix, "t/c"); v != "other" {
		t.Fatalf("after the conflict: %q", v)
	}
}

func createRace(t *testing.T, ix index.Index) {
	err := ix.Update(func(txn index.Txn) error {
		if _, err := txn.Get([]byte("t/new")); !errors.Is(err, index.ErrNotFound) {
			return err
		}
		set(t, ix, "t/new", "other")
		return txn.Set([]byte("t/new"), []byte("mine"))
	})
	if !errors.Is(err, index.ErrConflict) {
		t.Fatalf("two creations of one key: %v, want ErrConflict", err)
	}
}

func scanOrder(t *testing.T, ix index.Index) {
	keys := []string{"l/b\x00z", "l/a\x00m", "l/a\x00a", "l/a\x00b", "l/ab", "m/a\x00x", "l/"}
	var kv []string
	for _, k := range keys {
		kv = append(kv, k, "v:"+k)
	}
	set(t, ix, kv...)
	scan := func(prefix, from string, keysOnly bool) (got []string) {
		t.Helper()
		var f []byte
		if from != "" {
			f = []byte(from)
		}
		if err := ix.View(func(txn index.Txn) error {
			return txn.Scan([]byte(prefix), f, keysOnly, func(k, v []byte) error {
				if keysOnly && v != nil {
					t.Errorf("keys-only scan gave a value for %q", k)
				}
				if !keysOnly && string(v) != "v:"+string(k) {
					t.Errorf("value of %q: %q", k, v)
				}
				got = append(got, string(k))
				return nil
			})
		}); err != nil {
			t.Fatal(err)
		}
		return got
	}
	if got, want := scan("l/a\x00", "", false), []string{"l/a\x00a", "l/a\x00b", "l/a\x00m"}; !slices.Equal(got, want) {
		t.Errorf("scan of a prefix: %q, want %q", got, want)
	}
	if got, want := scan("l/", "", true), []string{"l/", "l/a\x00a", "l/a\x00b", "l/a\x00m", "l/ab", "l/b\x00z"}; !slices.Equal(got, want) {
		t.Errorf("keys-only scan: %q, want %q", got, want)
	}
	if got, want := scan("l/a\x00", "l/a\x00b", false), []string{"l/a\x00b", "l/a\x00m"}; !slices.Equal(got, want) {
		t.Errorf("scan from a key: %q, want %q", got, want)
	}
	if got, want := scan("l/a\x00", "l/a\x00c", false), []string{"l/a\x00m"}; !slices.Equal(got, want) {
		t.Errorf("scan from between keys: %q, want %q", got, want)
	}
	if got := scan("l/a\x00", "l/a\x00n", false); len(got) != 0 {
		t.Errorf("scan from past the last key: %q", got)
	}
	if got, want := scan("l/a\x00", "a", false), []string{"l/a\x00a", "l/a\x00b", "l/a\x00m"}; !slices.Equal(got, want) {
		t.Errorf("scan from before the prefix: %q, want %q", got, want)
	}
	if got := scan("x/", "", false); len(got) != 0 {
		t.Errorf("scan of an empty prefix: %q", got)
	}
}

func scanStop(t *testing.T, ix index.Index) {
	set(t, ix, "t/1", "a", "t/2", "b", "t/3", "c")
	var n int
	err := ix.View(func(txn index.Txn) error {
		return txn.Scan([]byte("t/"), nil, false, func(k, v []byte) error {
			n++
			return index.ErrStopScan
		})
	})
	if err != nil || n != 1 {
		t.Fatalf("stopped scan: %d calls, %v", n, err)
	}
	boom := errors.New("boom")
	err = ix.View(func(txn index.Txn) error {
		return txn.Scan([]byte("t/"), nil, true, func(k, v []byte) error { return boom })
	})
	if !errors.Is(err, boom) {
		t.Fatalf("a scan function's error: %v", err)
	}
}

func txnSize(t *testing.T, ix index.Index) {
	n := ix.MaxOps()
	if n < 32 {
		t.Fatalf("MaxOps %d: the store batches by it and needs at least 32", n)
	}
	if err := ix.Update(func(txn index.Txn) error {
		for i := range n {
			if err := txn.Set(fmt.Appendf(nil, "k/%06d", i), []byte("v")); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatalf("a transaction of MaxOps (%d) writes: %v", n, err)
	}
	var got int
	ix.View(func(txn index.Txn) error {
		return txn.Scan([]byte("k/"), nil, true, func(k, v []byte) error { got++; return nil })
	})
	if got != n {
		t.Fatalf("%d of %d keys written", got, n)
	}
	// Deleting them all is one transaction too.
	if err := ix.Update(func(txn index.Txn) error {
		for i := range n {
			if err := txn.Delete(fmt.Appendf(nil, "k/%06d", i)); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatalf("deleting MaxOps keys: %v", err)
	}
}
