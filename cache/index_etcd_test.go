package cache

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/wharf-registry/wharf/internal/etcdtest"
	clientv3 "go.etcd.io/etcd/client/v3"
)

func openEtcd(t *testing.T, c *etcdtest.Cluster, prefix string, mod ...func(*EtcdOptions)) *EtcdIndex {
	t.Helper()
	o, err := ParseEtcdURL(c.URL(prefix))
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range mod {
		m(&o)
	}
	ix, err := OpenEtcdIndex(o)
	if err != nil {
		t.Fatal(err)
	}
	return ix
}

// clusterNode opens a store on its own data directory with the index in
// etcd under prefix and the blobs in the shared directory blobs (what an
// object store is to real nodes).
func clusterNode(t *testing.T, c *etcdtest.Cluster, prefix, blobs string, mod ...func(*EtcdOptions)) *Store {
	t.Helper()
	fb, err := NewFileBlobs(blobs)
	if err != nil {
		t.Fatal(err)
	}
	s, err := Open(Options{Dir: t.TempDir(), Index: openEtcd(t, c, prefix, mod...), Blobs: fb})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestParseEtcdURL(t *testing.T) {
	o, err := ParseEtcdURL("etcd://10.0.0.1:2379,10.0.0.2:2379/reg1?max-txn-ops=512&timeout=2s")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(o.Endpoints, []string{"10.0.0.1:2379", "10.0.0.2:2379"}) || o.Prefix != "reg1/" || o.MaxOps != 512 || o.Timeout != 2*time.Second || o.TLS {
		t.Errorf("parsed %+v", o)
	}
	if o, err := ParseEtcdURL("etcd://h:2379?ca=/etc/ca.pem"); err != nil || o.Prefix != "wharf/" || !o.TLS || o.CAFile != "/etc/ca.pem" {
		t.Errorf("parsed %+v, %v", o, err)
	}
	for _, bad := range []string{"http://h:2379", "etcd:///x", "etcd://h:2379?cert=c", "etcd://h:2379?max-txn-ops=2", "etcd://h:2379?colour=red"} {
		if _, err := ParseEtcdURL(bad); err == nil {
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
		if err := ix.Update(func(txn Txn) error {
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
	if err := ix.View(func(txn Txn) error {
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
	err := ix.Update(func(txn Txn) error {
		txn.Set([]byte("x"), []byte("1"))
		if v, err := txn.Get([]byte("x")); err != nil || string(v) != "1" {
			t.Errorf("own write: %q %v", v, err)
		}
		txn.Delete([]byte("x"))
		if _, err := txn.Get([]byte("x")); !errors.Is(err, errNotFound) {
			t.Errorf("own delete: %v", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// A write between another transaction's read and its commit.
	err = ix.Update(func(txn Txn) error {
		if _, err := txn.Get([]byte("k/00001")); err != nil {
			return err
		}
		if err := ix.Update(func(t2 Txn) error { return t2.Set([]byte("k/00001"), []byte("other")) }); err != nil {
			return err
		}
		return txn.Set([]byte("k/00001"), []byte("mine"))
	})
	if !errors.Is(err, errConflict) {
		t.Fatalf("lost update not detected: %v", err)
	}
	// A key read as absent that another transaction creates.
	err = ix.Update(func(txn Txn) error {
		if _, err := txn.Get([]byte("new")); !errors.Is(err, errNotFound) {
			return err
		}
		ix.Update(func(t2 Txn) error { return t2.Set([]byte("new"), []byte("other")) })
		return txn.Set([]byte("new"), []byte("mine"))
	})
	if !errors.Is(err, errConflict) {
		t.Fatalf("create race not detected: %v", err)
	}
	// More reads than one transaction may compare one by one: checked by
	// range, still conflicting on a change in a range read, and on a
	// deleted blob record.
	err = ix.Update(func(txn Txn) error {
		for i := range ix.maxOps + 10 {
			if _, err := txn.Get(fmt.Appendf(nil, "k/%05d", i)); err != nil {
				return err
			}
		}
		ix.Update(func(t2 Txn) error { return t2.Set([]byte("k/00100"), []byte("changed")) })
		return txn.Set([]byte("y"), []byte("1"))
	})
	if !errors.Is(err, errConflict) {
		t.Fatalf("range check missed a change: %v", err)
	}
	if err := ix.Update(func(txn Txn) error { return txn.Set([]byte("b/sha256:x"), []byte("rec")) }); err != nil {
		t.Fatal(err)
	}
	err = ix.Update(func(txn Txn) error {
		for i := range ix.maxOps + 10 {
			txn.Get(fmt.Appendf(nil, "k/%05d", i))
		}
		if _, err := txn.Get([]byte("b/sha256:x")); err != nil {
			return err
		}
		ix.Update(func(t2 Txn) error { return t2.Delete([]byte("b/sha256:x")) })
		return txn.Set([]byte("l/r\x00sha256:x"), []byte("link"))
	})
	if !errors.Is(err, errConflict) {
		t.Fatalf("a link to a blob record deleted meanwhile committed: %v", err)
	}
}

// TestStoreOnEtcd: two nodes on one etcd index: a push on A is pullable
// from B as soon as A's call returned, a moved tag reaches B's caches
// through the change feed, and origins follow.
func TestStoreOnEtcd(t *testing.T) {
	c := etcdtest.Start(t, 1)
	blobs := t.TempDir()
	a := clusterNode(t, c, "two", blobs)
	b := clusterNode(t, c, "two", blobs)
	if !a.Shared() || !b.Shared() {
		t.Fatal("stores on etcd do not say they share their index")
	}
	d1 := pushImage(t, a, "team/app", "v1", []byte("layer one"))
	// Pullable from B at once: a miss reads the index linearizably.
	if d, err := b.ResolveTag("team/app", "v1"); err != nil || d != d1 {
		t.Fatalf("B resolves v1 to %s, %v; A pushed %s", d, err, d1)
	}
	m, err := b.GetManifest("team/app", d1.String())
	if err != nil {
		t.Fatal(err)
	}
	var parsed struct{ Layers []Descriptor }
	json.Unmarshal(m.Body, &parsed)
	if got := readBlob(t, b, "team/app", parsed.Layers[0].Digest); string(got) != "layer one" {
		t.Fatalf("B reads the layer as %q", got)
	}
	if o, ok := b.Origin("team/app"); !ok || o != Pushed {
		t.Errorf("B's origin of team/app: %v %v", o, ok)
	}
	// B now caches v1; A moves it, 50 times: B follows each move.
	var delays []time.Duration
	for i := range 50 {
		d := pushImage(t, a, "team/app", "v1", fmt.Appendf(nil, "layer %d", i))
		start := time.Now()
		for {
			got, err := b.ResolveTag("team/app", "v1")
			if err != nil {
				t.Fatal(err)
			}
			if got == d {
				break
			}
			if time.Since(start) > 5*time.Second {
				t.Fatalf("B still resolves v1 to %s 5s after A moved it to %s", got, d)
			}
			time.Sleep(100 * time.Microsecond)
		}
		delays = append(delays, time.Since(start))
	}
	slices.Sort(delays)
	t.Logf("tag move on A seen by B's cache: p50 %v, p99 %v", delays[len(delays)/2], delays[len(delays)*99/100])
	// A delete on A: B's caches let go of the manifest and the tag.
	if err := a.DeleteManifest("team/app", "v1"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := b.ResolveTag("team/app", "v1"); errors.Is(err, ErrManifestUnknown) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("B still resolves a tag A deleted")
		}
		time.Sleep(time.Millisecond)
	}
}

// TestSameTagRacesOnTwoNodes: 200 pushes of one tag, half on each node at
// once, leave one tag that both nodes resolve alike to one of the pushed
// manifests; 200 distinct tags pushed the same way are all there.
func TestSameTagRacesOnTwoNodes(t *testing.T) {
	c := etcdtest.Start(t, 1)
	blobs := t.TempDir()
	nodes := []*Store{clusterNode(t, c, "race", blobs), clusterNode(t, c, "race", blobs)}
	layer := []byte("race layer")
	cfg := []byte(`{"os":"linux"}`)
	for _, l := range [][]byte{layer, cfg} {
		if err := nodes[0].PutBlob("team/race", digest.FromBytes(l), int64(len(l)), bytes.NewReader(l)); err != nil {
			t.Fatal(err)
		}
	}
	manifest := func(i int) []byte {
		body, _ := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": MediaTypeOCIManifest,
			"config":      map[string]any{"mediaType": "application/octet-stream", "digest": digest.FromBytes(cfg), "size": len(cfg)},
			"layers":      []any{map[string]any{"mediaType": "application/octet-stream", "digest": digest.FromBytes(layer), "size": len(layer)}},
			"annotations": map[string]string{"n": fmt.Sprint(i)}})
		return body
	}
	const n = 200
	pushed := map[digest.Digest]bool{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	errs := make(chan error, 2*n)
	for i := range n {
		body := manifest(i)
		mu.Lock()
		pushed[digest.FromBytes(body)] = true
		mu.Unlock()
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := nodes[i%2]
			if _, err := s.PutManifest("team/race", digest.FromBytes(body), []string{"latest"}, MediaTypeOCIManifest, body); err != nil {
				errs <- err
			}
			if _, err := s.PutManifest("team/race", digest.FromBytes(body), []string{fmt.Sprintf("t%d", i)}, MediaTypeOCIManifest, body); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("a racing push failed: %v", err)
	}
	var final digest.Digest
	if err := nodes[0].idx.View(func(txn Txn) error {
		v, err := txn.Get(tagKey("team/race", "latest"))
		final = decodeTag(v).digest
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if !pushed[final] {
		t.Fatalf("latest points at %s, which nobody pushed", final)
	}
	deadline := time.Now().Add(5 * time.Second)
	for _, s := range nodes {
		for {
			d, err := s.ResolveTag("team/race", "latest")
			if err == nil && d == final {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("a node resolves latest to %s (%v); the index says %s", d, err, final)
			}
			time.Sleep(time.Millisecond)
		}
	}
	tags, _, err := nodes[1].Tags("team/race", -1, "")
	if err != nil {
		t.Fatal(err)
	}
	if len(tags) != n+1 {
		t.Fatalf("%d tags after %d distinct tag pushes and latest", len(tags), n)
	}
}

// TestEtcdOutage: with one member of three stopped nothing changes; with
// all stopped, a node serves what it has cached (tags, manifests, blobs by
// digest) and refuses writes with ErrIndexUnavailable within its timeout;
// once etcd is back, writes go on and the change feed catches up.
func TestEtcdOutage(t *testing.T) {
	c := etcdtest.Start(t, 3)
	blobs := t.TempDir()
	// The default timeout: a lost leader's election (1.5–3 s with
	// etcdtest's settings) fits in it, so one member down changes nothing.
	short := func(o *EtcdOptions) { o.Timeout = 5 * time.Second }
	a := clusterNode(t, c, "outage", blobs, short)
	b := clusterNode(t, c, "outage", blobs, short)
	d := pushImage(t, a, "team/app", "v1", []byte("cached layer"))
	warm := func(s *Store) []byte {
		t.Helper()
		m, err := s.GetManifest("team/app", "v1")
		if err != nil || m.Digest != d {
			t.Fatalf("manifest v1: %v", err)
		}
		var parsed struct{ Layers []Descriptor }
		json.Unmarshal(m.Body, &parsed)
		return readBlob(t, s, "team/app", parsed.Layers[0].Digest)
	}
	warm(b)
	// A read racing the change feed of A's push is not cached (the feed
	// may still invalidate what it read); once the feed is quiet, it is.
	time.Sleep(100 * time.Millisecond)
	warm(b)
	c.Members[0].Stop()
	pushImage(t, b, "team/app", "v2", []byte("pushed with a member down"))
	if got, err := a.ResolveTag("team/app", "v2"); err != nil || got == "" {
		t.Fatalf("v2 on A with a member down: %v", err)
	}
	c.StopAll()
	if got := warm(b); string(got) != "cached layer" {
		t.Fatalf("cached blob with etcd down: %q", got)
	}
	start := time.Now()
	layer := []byte("a push while etcd is down")
	err := b.PutBlob("team/app", digest.FromBytes(layer), int64(len(layer)), bytes.NewReader(layer))
	if !errors.Is(err, ErrIndexUnavailable) {
		t.Fatalf("push with etcd down: %v", err)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("the refused push took %v", took)
	}
	for _, m := range c.Members {
		m.Restart(t)
	}
	c.WaitHealthy(t, 30*time.Second)
	d3 := pushImage(t, a, "team/app", "v1", []byte("after the outage"))
	deadline := time.Now().Add(10 * time.Second)
	for {
		if got, _ := b.ResolveTag("team/app", "v1"); got == d3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("B's cache did not follow a move made after etcd came back")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestEtcdOverTLS: the index reaches members that take only TLS with a
// client certificate (ca=, cert=, key= in the URL); without the client
// certificate it is refused as unavailable.
func TestEtcdOverTLS(t *testing.T) {
	c, files := etcdtest.StartTLS(t, 1)
	blobs := t.TempDir()
	a, b := clusterNode(t, c, "tls", blobs), clusterNode(t, c, "tls", blobs)
	d := pushImage(t, a, "team/app", "v1", []byte("over TLS"))
	if got, err := b.ResolveTag("team/app", "v1"); err != nil || got != d {
		t.Fatalf("over TLS: %s %v", got, err)
	}
	o, err := ParseEtcdURL(strings.Split(c.URL("tls"), "?")[0] + "?ca=" + files.CA + "&timeout=2s")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := OpenEtcdIndex(o); !errors.Is(err, ErrIndexUnavailable) {
		t.Fatalf("without a client certificate: %v", err)
	}
}

// TestEtcdCompaction: each Compact discards the history up to what the
// previous call saw, and another node's change feed goes on across it.
func TestEtcdCompaction(t *testing.T) {
	c := etcdtest.Start(t, 1)
	blobs := t.TempDir()
	a, b := clusterNode(t, c, "compact", blobs), clusterNode(t, c, "compact", blobs)
	ix := a.idx.(*EtcdIndex)
	if rev, err := ix.Compact(); err != nil || rev != 0 {
		t.Fatalf("first compaction: %d %v", rev, err)
	}
	pushImage(t, a, "team/app", "v1", []byte("before"))
	rev, err := ix.Compact()
	if err != nil || rev == 0 {
		t.Fatalf("second compaction: %d %v", rev, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := ix.cli.Get(ctx, "wharf", clientv3.WithRev(rev-1)); err == nil || !strings.Contains(err.Error(), "compacted") {
		t.Fatalf("history before revision %d still readable: %v", rev, err)
	}
	b.ResolveTag("team/app", "v1")
	d := pushImage(t, a, "team/app", "v1", []byte("after"))
	deadline := time.Now().Add(5 * time.Second)
	for {
		if got, _ := b.ResolveTag("team/app", "v1"); got == d {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("B's cache stopped following after a compaction")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// within runs fn and fails the test when it has not returned after d (a
// deadlock shows as this failure, not as a hung test).
func within(t *testing.T, d time.Duration, what string, fn func() error) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- fn() }()
	select {
	case err := <-done:
		return err
	case <-time.After(d):
		t.Fatalf("%s did not return within %s", what, d)
		return nil
	}
}

// TestEtcdOutageLongerThanLease: with etcd gone for longer than the
// nodes' leases, requests fail within their timeout (never hang), and once
// etcd is back every node recovers by itself: the collector's lock,
// membership, pushes and the change feed, and Close returns.
func TestEtcdOutageLongerThanLease(t *testing.T) {
	c := etcdtest.Start(t, 1)
	blobs := t.TempDir()
	short := func(o *EtcdOptions) { o.Timeout, o.LeaseTTL = 2*time.Second, 2*time.Second }
	a := clusterNode(t, c, "longoutage", blobs, short)
	b := clusterNode(t, c, "longoutage", blobs, short)
	a.Join("http://127.0.0.1:1")
	b.Join("http://127.0.0.1:2")
	release, err := a.collectorLock()
	if err != nil {
		t.Fatal(err)
	}
	release()
	pushImage(t, a, "team/app", "v1", []byte("before the outage"))

	c.StopAll()
	time.Sleep(5 * time.Second) // both leases (2 s) expire meanwhile
	// Each of these used to hang for good once a lease was lost.
	for i := range 3 {
		err := within(t, 15*time.Second, "the collector's lock with etcd down", func() error {
			_, err := b.collectorLock()
			return err
		})
		if !errors.Is(err, ErrIndexUnavailable) {
			t.Fatalf("lock %d with etcd down: %v", i, err)
		}
	}
	layer := []byte("a push while etcd is down")
	err = within(t, 15*time.Second, "a push with etcd down", func() error {
		return a.PutBlob("team/app", digest.FromBytes(layer), int64(len(layer)), bytes.NewReader(layer))
	})
	if !errors.Is(err, ErrIndexUnavailable) {
		t.Fatalf("push with etcd down: %v", err)
	}
	within(t, 5*time.Second, "Health with etcd down", func() error {
		if h := a.idx.(*EtcdIndex).Health(); h.Healthy {
			t.Errorf("healthy with etcd down")
		}
		return nil
	})

	for _, m := range c.Members {
		m.Restart(t)
	}
	c.WaitHealthy(t, 30*time.Second)
	back := time.Now()
	for _, s := range []*Store{a, b} {
		for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(200 * time.Millisecond) {
			err := within(t, 15*time.Second, "the collector's lock after the outage", func() error {
				rel, err := s.collectorLock()
				if err == nil {
					rel()
				}
				return err
			})
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the collector's lock after etcd came back: %v", err)
			}
		}
	}
	t.Logf("both nodes took the collector's lock %s after etcd was healthy", time.Since(back).Round(time.Millisecond))
	d := pushImage(t, a, "team/app", "v1", []byte("after the outage"))
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		got, _ := b.ResolveTag("team/app", "v1")
		m := b.Members()
		if got == d && len(m) == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the outage: B resolves %s (want %s), members %v", got, d, m)
		}
	}
	if h := a.idx.(*EtcdIndex).Health(); !h.Healthy {
		t.Errorf("not healthy after the outage: %s", h.LastError)
	}
	within(t, 15*time.Second, "Close after the outage", func() error { return b.idx.Close() })
}
