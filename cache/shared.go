package cache

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/uuid"
	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/opencontainers/go-digest"
)

// openShared opens a store on an index other than the data directory's
// Badger (opts.Index, etcd). The data directory still holds the ingest
// files, the local copies of blobs and the lock; the index's space is not
// the data directory's concern.
func openShared(opts Options, blobs Blobs, sp *space, lock *os.File) (*Store, error) {
	id, err := nodeID(opts.Dir)
	if err != nil {
		opts.Index.Close()
		lock.Close()
		return nil, err
	}
	s := &Store{idx: opts.Index, blobs: blobs, space: sp, opts: opts, log: opts.Logger, lock: lock, nodeID: id}
	s.tags, _ = lru.New[string, tagEntry](opts.ManifestCacheEntries)
	s.manifests, _ = lru.New[string, *Manifest](opts.ManifestCacheEntries)
	s.links, _ = lru.New[string, int64](4 * opts.ManifestCacheEntries)
	fail := func(err error) (*Store, error) {
		opts.Index.Close()
		lock.Close()
		return nil, err
	}
	if w, ok := opts.Index.(IndexWatcher); ok {
		// Before the origins are read: nothing written after that read
		// can be missed.
		s.shared = true
		w.Watch(s.changed, s.lostChanges)
	}
	if err := s.loadOrigins(); err != nil {
		return fail(fmt.Errorf("cache: reading repository origins: %w", err))
	}
	if err := s.CleanIngests(time.Now()); err != nil {
		return fail(err)
	}
	return s, nil
}

// changed keeps the in-memory caches true to a write that committed in
// the shared index, on any node (this one included).
func (s *Store) changed(key, val []byte, deleted bool) {
	if len(key) < 2 {
		return
	}
	p, rest := string(key[:2]), key[2:]
	repo, ref, _ := bytes.Cut(rest, []byte{0})
	switch p {
	case "t/", "m/":
		s.invalidate(string(repo), string(ref))
	case "l/":
		s.cacheMu.Lock()
		s.gens[stripe(string(rest))]++
		s.links.Remove(string(rest))
		s.cacheMu.Unlock()
	case "b/":
		if !deleted && recordState(val) == stateDeleting {
			s.dropLocalCopy(digest.Digest(rest))
		}
	case "o/":
		if o, ok := decodeOrigin(string(val)); ok && !deleted {
			s.setOrigin(string(rest), o)
		}
	}
}

// lostChanges drops every cache after the index's change feed broke off
// (changes may have been missed) and reads the origins again.
func (s *Store) lostChanges() {
	s.cacheMu.Lock()
	s.gen++
	s.tags.Purge()
	s.manifests.Purge()
	if s.links != nil {
		s.links.Purge()
	}
	s.cacheMu.Unlock()
	if err := s.loadOrigins(); err != nil {
		s.log.Warn("index: reading repository origins again after the change feed broke off", "err", err)
	}
}

// clusterID is the id of the cluster a shared index holds, made by the
// first node that asks: the owner of the cluster's object-store prefix.
func clusterID(ix Index) (string, error) {
	var id string
	err := ix.Update(func(txn Txn) error {
		v, err := txn.Get([]byte("s/cluster-id"))
		if errors.Is(err, errNotFound) {
			id = "cluster-" + uuid.NewString()
			return txn.Set([]byte("s/cluster-id"), []byte(id))
		}
		id = string(v)
		return err
	})
	if errors.Is(err, errConflict) { // another node made it meanwhile
		return clusterID(ix)
	}
	return id, err
}

// ErrCollectorElsewhere: another node of the cluster is collecting or
// evicting; this one skips its turn.
var ErrCollectorElsewhere = errors.New("another node of the cluster holds the collector's lock")

// IndexLocker is a shared index that holds named locks for its nodes,
// released when the holder dies.
type IndexLocker interface {
	TryLock(name string) (release func(), err error) // ErrCollectorElsewhere when held
}

// collectorLock serialises collections and evictions across a cluster's
// nodes (a no-op on a single box).
func (s *Store) collectorLock() (func(), error) {
	if l, ok := s.idx.(IndexLocker); ok {
		return l.TryLock("collector")
	}
	return func() {}, nil
}

// IndexMembers is a shared index that knows the cluster's live nodes.
type IndexMembers interface {
	Join(id, url string)
	Members() map[string]string
}

// NodeID is this node's id in its cluster (kept in <data>/node-id); ""
// on a single box.
func (s *Store) NodeID() string { return s.nodeID }

// Join announces this node to the cluster at url (what the other nodes
// dial), for as long as the store is open.
func (s *Store) Join(url string) {
	if m, ok := s.idx.(IndexMembers); ok {
		m.Join(s.nodeID, url)
	}
}

// Members lists the cluster's live nodes, id → URL; nil on a single box.
func (s *Store) Members() map[string]string {
	if m, ok := s.idx.(IndexMembers); ok {
		return m.Members()
	}
	return nil
}

// localCommitter keeps a blob another node stores as a local copy only.
type localCommitter interface {
	CommitLocal(id string, d digest.Digest) error
}

// storedWait bounds how long a node that received a blob from the node
// filling it waits for that node to store it before storing it itself.
const storedWait = 10 * time.Minute

// awaitStored waits until peer, which sent this node the bytes of d, has
// stored d (its record is live) and returns the record; false when peer
// left the cluster first (or the wait ran out): then this node stores d.
func (s *Store) awaitStored(d digest.Digest, peer string) ([]byte, bool) {
	if _, ok := s.blobs.(localCommitter); !ok {
		return nil, false
	}
	deadline := time.Now().Add(storedWait)
	for delay := 5 * time.Millisecond; time.Now().Before(deadline); delay = min(2*delay, 200*time.Millisecond) {
		var v []byte
		err := s.idx.View(func(txn Txn) (err error) {
			v, err = txn.Get(blobKey(d))
			return err
		})
		if err == nil && liveRecord(v) {
			return v, true
		}
		if _, alive := s.Members()[peer]; !alive || (err != nil && !errors.Is(err, errNotFound)) {
			return nil, false
		}
		time.Sleep(delay)
	}
	return nil, false
}

// nodeID reads or makes <data>/node-id.
func nodeID(dir string) (string, error) {
	file := filepath.Join(dir, "node-id")
	b, err := os.ReadFile(file)
	if err == nil && len(bytes.TrimSpace(b)) > 0 {
		return string(bytes.TrimSpace(b)), nil
	}
	id := strings.ReplaceAll(uuid.NewString(), "-", "")[:12]
	return id, os.WriteFile(file, []byte(id+"\n"), 0o640)
}

// Shared reports whether the index is shared with other nodes.
func (s *Store) Shared() bool { return s.shared }

// ClusterHealth is what the status page and the metrics show of a
// cluster: this node, the live members, the index and the object store.
type ClusterHealth struct {
	Node         string
	Members      map[string]string // id → URL
	Index        EtcdHealth
	BlobStore    string // the bucket
	BlobStoreErr string // "" while it answers
}

// ClusterHealth reports the cluster as this node sees it; ok is false on
// a single box.
func (s *Store) ClusterHealth() (h ClusterHealth, ok bool) {
	if !s.shared {
		return h, false
	}
	h.Node, h.Members = s.nodeID, s.Members()
	if e, ok := s.idx.(*EtcdIndex); ok {
		h.Index = e.Health()
	}
	if b, ok := s.blobs.(*S3Blobs); ok {
		h.BlobStore = b.o.String()
		if err := b.Ping(); err != nil {
			h.BlobStoreErr = err.Error()
		}
	}
	return h, true
}

// TrimLocalCopies keeps the local copies of blobs held in an object store
// within max bytes (least recently used go first); with a single box's
// files, nothing is a copy and nothing is freed.
func (s *Store) TrimLocalCopies(max int64) (int64, error) {
	if b, ok := s.blobs.(*S3Blobs); ok {
		return b.TrimLocal(max)
	}
	return 0, nil
}

// LocalCopiesBytes is how many bytes the local copies of an object
// store's blobs take (0 for a single box's files).
func (s *Store) LocalCopiesBytes() (int64, error) {
	b, ok := s.blobs.(*S3Blobs)
	if !ok {
		return 0, nil
	}
	var n int64
	err := b.local.Walk(func(i BlobInfo) error { n += i.Size; return nil })
	return n, err
}
