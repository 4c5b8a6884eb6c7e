package etcdindex

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/wharf-registry/wharf/cache/index"
	"github.com/wharf-registry/wharf/cache/index/indextest"
	"github.com/wharf-registry/wharf/internal/etcdtest"
	clientv3 "go.etcd.io/etcd/client/v3"
)

func openEtcd(t *testing.T, c *etcdtest.Cluster, prefix string, mod ...func(*Options)) *Index {
	t.Helper()
	o, err := ParseURL(c.URL(prefix))
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range mod {
		m(&o)
	}
	ix, err := Open(o)
	if err != nil {
		t.Fatal(err)
	}
	return ix
}

func TestParseEtcdURL(t *testing.T) {
	o, err := ParseURL("etcd://10.0.0.1:2379,10.0.0.2:2379/reg1?max-txn-ops=512&timeout=2s")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(o.Endpoints, []string{"10.0.0.1:2379", "10.0.0.2:2379"}) || o.Prefix != "reg1/" || o.MaxOps != 512 || o.Timeout != 2*time.Second || o.TLS {
		t.Errorf("parsed %+v", o)
	}
	if o, err := ParseURL("etcd://h:2379?ca=/etc/ca.pem"); err != nil || o.Prefix != "wharf/" || !o.TLS || o.CAFile != "/etc/ca.pem" {
		t.Errorf("parsed %+v, %v", o, err)
	}
	for _, bad := range []string{"http://h:2379", "etcd:///x", "etcd://h:2379?cert=c", "etcd://h:2379?max-txn-ops=2", "etcd://h:2379?colour=red"} {
		if _, err := ParseURL(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// TestEtcdIndexTransactions: the etcd index keeps Badger's contract —
// reads see the transaction's own writes, scans are ordered and paged,
// and of two transactions that read and write one key, one conflicts.
func TestEtcdIndexTransactions(t *testing.T) {
	c := etcdtest.Start(t, 1)
	ix := openEtcd(t, c, "txn")
	defer ix.Close()
	// More keys than one scan page.
	const n = scanPage*2 + 7
	for i := 0; i < n; i += ix.MaxOps() {
		if err := ix.Update(func(txn index.Txn) error {
			for j := i; j < min(n, i+ix.MaxOps()); j++ {
				if err := txn.Set(fmt.Appendf(nil, "k/%05d", j), fmt.Appendf(nil, "v%d", j)); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	var got []string
	if err := ix.View(func(txn index.Txn) error {
		return txn.Scan([]byte("k/"), []byte("k/00010"), false, func(k, v []byte) error {
			got = append(got, string(k)+"="+string(v))
			return nil
		})
	}); err != nil {
		t.Fatal(err)
	}
	if len(got) != n-10 || got[0] != "k/00010=v10" || got[len(got)-1] != fmt.Sprintf("k/%05d=v%d", n-1, n-1) || !sort.StringsAreSorted(got) {
		t.Fatalf("scan from k/00010: %d keys, first %q", len(got), got[0])
	}
	err := ix.Update(func(txn index.Txn) error {
		txn.Set([]byte("x"), []byte("1"))
		if v, err := txn.Get([]byte("x")); err != nil || string(v) != "1" {
			t.Errorf("own write: %q %v", v, err)
		}
		txn.Delete([]byte("x"))
		if _, err := txn.Get([]byte("x")); !errors.Is(err, index.ErrNotFound) {
			t.Errorf("own delete: %v", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// A write between another transaction's read and its commit.
	err = ix.Update(func(txn index.Txn) error {
		if _, err := txn.Get([]byte("k/00001")); err != nil {
			return err
		}
		if err := ix.Update(func(t2 index.Txn) error { return t2.Set([]byte("k/00001"), []byte("other")) }); err != nil {
			return err
		}
		return txn.Set([]byte("k/00001"), []byte("mine"))
	})
	if !errors.Is(err, index.ErrConflict) {
		t.Fatalf("lost update not detected: %v", err)
	}
	// A key read as absent that another transaction creates.
	err = ix.Update(func(txn index.Txn) error {
		if _, err := txn.Get([]byte("new")); !errors.Is(err, index.ErrNotFound) {
			return err
		}
		ix.Update(func(t2 index.Txn) error { return t2.Set([]byte("new"), []byte("other")) })
		return txn.Set([]byte("new"), []byte("mine"))
	})
	if !errors.Is(err, index.ErrConflict) {
		t.Fatalf("create race not detected: %v", err)
	}
	// More reads than one transaction may compare one by one: checked by
	// range, still conflicting on a change in a range read, and on a
	// deleted blob record.
	err = ix.Update(func(txn index.Txn) error {
		for i := range ix.maxOps + 10 {
			if _, err := txn.Get(fmt.Appendf(nil, "k/%05d", i)); err != nil {
				return err
			}
		}
		ix.Update(func(t2 index.Txn) error { return t2.Set([]byte("k/00100"), []byte("changed")) })
		return txn.Set([]byte("y"), []byte("1"))
	})
	if !errors.Is(err, index.ErrConflict) {
		t.Fatalf("range check missed a change: %v", err)
	}
	if err := ix.Update(func(txn index.Txn) error { return txn.Set([]byte("b/sha256:x"), []byte("rec")) }); err != nil {
		t.Fatal(err)
	}
	err = ix.Update(func(txn index.Txn) error {
		for i := range ix.maxOps + 10 {
			txn.Get(fmt.Appendf(nil, "k/%05d", i))
		}
		if _, err := txn.Get([]byte("b/sha256:x")); err != nil {
			return err
		}
		ix.Update(func(t2 index.Txn) error { return t2.Delete([]byte("b/sha256:x")) })
		return txn.Set([]byte("l/r\x00sha256:x"), []byte("link"))
	})
	if !errors.Is(err, index.ErrConflict) {
		t.Fatalf("a link to a blob record deleted meanwhile committed: %v", err)
	}
}

// TestEtcdCompaction: each compaction discards the history up to what the
// previous call saw, and another node's change feed goes on across it.
func TestEtcdCompaction(t *testing.T) {
	c := etcdtest.Start(t, 1)
	a, b := openEtcd(t, c, "compact"), openEtcd(t, c, "compact")
	defer a.Close()
	defer b.Close()
	seen := make(chan string, 16)
	b.Watch(func(key, val []byte, deleted bool) {
		if string(key) == "t/team/app\x00v1" {
			seen <- string(val)
		}
	}, func() { seen <- "lost" })
	put := func(v string) {
		t.Helper()
		if err := a.Update(func(txn index.Txn) error { return txn.Set([]byte("t/team/app\x00v1"), []byte(v)) }); err != nil {
			t.Fatal(err)
		}
	}
	if rev, err := a.CompactHistory(); err != nil || rev != 0 {
		t.Fatalf("first compaction: %d %v", rev, err)
	}
	put("before")
	rev, err := a.CompactHistory()
	if err != nil || rev == 0 {
		t.Fatalf("second compaction: %d %v", rev, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := a.cli.Get(ctx, "wharf", clientv3.WithRev(rev-1)); err == nil || !strings.Contains(err.Error(), "compacted") {
		t.Fatalf("history before revision %d still readable: %v", rev, err)
	}
	put("after")
	deadline := time.After(5 * time.Second)
	for {
		select {
		case v := <-seen:
			if v == "after" {
				return
			}
			if v == "lost" {
				t.Fatal("B's change feed was lost across a compaction")
			}
		case <-deadline:
			t.Fatal("B's change feed stopped after a compaction")
		}
	}
}

func TestConformance(t *testing.T) {
	c := etcdtest.Start(t, 1)
	n := 0
	indextest.Run(t, func(t *testing.T) index.Index {
		n++
		return openEtcd(t, c, fmt.Sprintf("conformance%d", n))
	})
}
