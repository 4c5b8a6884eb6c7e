package cache

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/wharf-registry/wharf/cache/blobs/fileblobs"
	"github.com/wharf-registry/wharf/cache/index"
	"github.com/wharf-registry/wharf/cache/index/etcdindex"
	"github.com/wharf-registry/wharf/internal/etcdtest"
)

func openEtcd(t *testing.T, c *etcdtest.Cluster, prefix string, mod ...func(*etcdindex.Options)) *etcdindex.Index {
	t.Helper()
	o, err := etcdindex.ParseURL(c.URL(prefix))
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range mod {
		m(&o)
	}
	ix, err := etcdindex.Open(o)
	if err != nil {
		t.Fatal(err)
	}
	return ix
}

// clusterNode opens a store on its own data directory with the index in
// etcd under prefix and the blobs in the shared directory blobs (what an
// object store is to real nodes).
func clusterNode(t *testing.T, c *etcdtest.Cluster, prefix, blobs string, mod ...func(*etcdindex.Options)) *Store {
	t.Helper()
	fb, err := fileblobs.New(blobs, fileblobs.Options{})
	if err != nil {
		t.Fatal(err)
	}
	s, err := testOpen(Options{Dir: t.TempDir(), Index: openEtcd(t, c, prefix, mod...), Blobs: fb})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// TestStoreOnEtcd: two nodes on one etcd index: a push on A is pullable
// from B as soon as A's call returned, a moved tag reaches B's caches
// through the change feed, and origins follow.
func TestStoreOnEtcd(t *testing.T) {
	c := etcdtest.Start(t, 1)
	blobs := t.TempDir()
	a := clusterNode(t, c, "two", blobs)
	b := clusterNode(t, c, "two", blobs)
	if !a.Cluster().Shared() || !b.Cluster().Shared() {
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
		if err := nodes[0].Uploads().PutBlob("team/race", digest.FromBytes(l), int64(len(l)), bytes.NewReader(l)); err != nil {
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
// digest) and refuses writes with index.ErrUnavailable within its timeout;
// once etcd is back, writes go on and the change feed catches up.
func TestEtcdOutage(t *testing.T) {
	c := etcdtest.Start(t, 3)
	blobs := t.TempDir()
	// The default timeout: a lost leader's election (1.5–3 s with
	// etcdtest's settings) fits in it, so one member down changes nothing.
	short := func(o *etcdindex.Options) { o.Timeout = 5 * time.Second }
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
	err := b.Uploads().PutBlob("team/app", digest.FromBytes(layer), int64(len(layer)), bytes.NewReader(layer))
	if !errors.Is(err, index.ErrUnavailable) {
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
	o, err := etcdindex.ParseURL(strings.Split(c.URL("tls"), "?")[0] + "?ca=" + files.CA + "&timeout=2s")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := etcdindex.Open(o); !errors.Is(err, index.ErrUnavailable) {
		t.Fatalf("without a client certificate: %v", err)
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
	short := func(o *etcdindex.Options) { o.Timeout, o.LeaseTTL = 2*time.Second, 2*time.Second }
	a := clusterNode(t, c, "longoutage", blobs, short)
	b := clusterNode(t, c, "longoutage", blobs, short)
	a.Cluster().Join("http://127.0.0.1:1")
	b.Cluster().Join("http://127.0.0.1:2")
	release, err := a.Maintenance().collectorLock()
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
			_, err := b.Maintenance().collectorLock()
			return err
		})
		if !errors.Is(err, index.ErrUnavailable) {
			t.Fatalf("lock %d with etcd down: %v", i, err)
		}
	}
	layer := []byte("a push while etcd is down")
	err = within(t, 15*time.Second, "a push with etcd down", func() error {
		return a.Uploads().PutBlob("team/app", digest.FromBytes(layer), int64(len(layer)), bytes.NewReader(layer))
	})
	if !errors.Is(err, index.ErrUnavailable) {
		t.Fatalf("push with etcd down: %v", err)
	}
	within(t, 5*time.Second, "Health with etcd down", func() error {
		if h := a.idx.(*etcdindex.Index).Health(); h.Healthy {
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
				rel, err := s.Maintenance().collectorLock()
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
		m := b.Cluster().Members()
		if got == d && len(m) == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the outage: B resolves %s (want %s), members %v", got, d, m)
		}
	}
	if h := a.idx.(*etcdindex.Index).Health(); !h.Healthy {
		t.Errorf("not healthy after the outage: %s", h.LastError)
	}
	within(t, 15*time.Second, "Close after the outage", func() error { return b.idx.Close() })
}
