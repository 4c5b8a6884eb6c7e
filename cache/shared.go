package cache

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/opencontainers/go-digest"
	"github.com/wharf-registry/wharf/cache/blobs"
	"github.com/wharf-registry/wharf/cache/index"
)

// changed keeps the in-memory caches true to a write that committed in
// the shared index, on any node (this one included).
func (s *Cluster) changed(key, val []byte, deleted bool) {
	if len(key) < 2 || string(key[:2]) == "n/" { // queues (queue.go) change no content
		return
	}
	s.writes.Add(1)
	p, rest := string(key[:2]), key[2:]
	repo, ref, _ := bytes.Cut(rest, []byte{0})
	switch p {
	case "t/", "m/":
		s.invalidate(string(repo), string(ref))
	case "l/":
		s.cacheMu.Lock()
		k := refKey{string(repo), string(ref)}
		s.gens[stripe(k)]++
		s.links.Remove(k)
		s.cacheMu.Unlock()
	case "b/":
		if !deleted && recordState(val) == stateDeleting {
			s.dropLocalCopy(digest.Digest(rest))
		}
	case "k/":
		s.tokens.forget(string(rest))
	case "i/":
		s.people.forget(string(rest))
	case "o/":
		if o, ok := decodeOrigin(string(val)); ok && !deleted {
			s.origins.set(string(rest), o)
		}
	}
}

// lostChanges drops every cache after the index's change feed broke off
// (changes may have been missed) and reads the origins again.
func (s *Cluster) lostChanges() {
	s.writes.Add(1)
	s.tokens.forgetAll()
	s.people.forgetAll()
	s.cacheMu.Lock()
	s.gen++
	s.tags.Purge()
	s.manifests.Purge()
	if s.links != nil {
		s.links.Purge()
	}
	s.cacheMu.Unlock()
	if err := s.st().loadOrigins(); err != nil {
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
var ErrCollectorElsewhere = index.ErrLockHeld

// collectorLock serialises collections and evictions across a cluster's
// nodes (a no-op on a single box).
func (s *Maintenance) collectorLock() (func(), error) {
	if l, ok := s.idx.(index.Locker); ok {
		return l.TryLock("collector")
	}
	return func() {}, nil
}

// NodeID is this node's id in its cluster (kept in <data>/node-id); ""
// on a single box.
func (s *Cluster) NodeID() string { return s.nodeID }

// Join announces this node to the cluster at url (what the other nodes
// dial), for as long as the store is open.
func (s *Cluster) Join(url string) {
	if m, ok := s.idx.(index.Members); ok {
		m.Join(s.nodeID, url)
	}
}

// Members lists the cluster's live nodes, id → URL; nil on a single box.
func (s *Cluster) Members() map[string]string {
	if m, ok := s.idx.(index.Members); ok {
		return m.Members()
	}
	return nil
}

// storedWait bounds how long a node that received a blob from the node
// filling it waits for that node to store it before storing it itself.
const storedWait = 10 * time.Minute

// awaitStored waits until peer, which sent this node the bytes of d, has
// stored d (its record is live) and returns the record; false when peer
// left the cluster first (or the wait ran out): then this node stores d.
func (s *Cluster) awaitStored(d digest.Digest, peer string) ([]byte, bool) {
	if _, ok := s.blobs.(blobs.LocalCommitter); !ok {
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
func (s *Cluster) Shared() bool { return s.shared }

// ClusterHealth is what the status page and the metrics show of a
// cluster: this node, the live members, the index and the object store.
type ClusterHealth struct {
	Node         string
	Members      map[string]string // id → URL
	Index        index.Health
	BlobStore    string // the bucket
	BlobStoreErr string // "" while it answers
}

// ClusterHealth reports the cluster as this node sees it; ok is false on
// a single box.
func (s *Cluster) ClusterHealth() (h ClusterHealth, ok bool) {
	if !s.shared {
		return h, false
	}
	h.Node, h.Members = s.nodeID, s.Members()
	if e, ok := s.idx.(index.Healther); ok {
		h.Index = e.Health()
	}
	if b, ok := s.blobs.(blobs.Remote); ok {
		h.BlobStore = b.String()
		if err := b.Ping(); err != nil {
			h.BlobStoreErr = err.Error()
		}
	}
	return h, true
}

// TrimLocalCopies keeps the local copies of blobs held in an object store
// within max bytes (least recently used go first); with a single box's
// files, nothing is a copy and nothing is freed.
func (s *Maintenance) TrimLocalCopies(max int64) (int64, error) {
	if b, ok := s.blobs.(blobs.LocalCopies); ok {
		return b.TrimLocal(max)
	}
	return 0, nil
}

// LocalCopiesBytes is how many bytes the local copies of an object
// store's blobs take (0 for a single box's files).
func (s *Maintenance) LocalCopiesBytes() (int64, error) {
	if b, ok := s.blobs.(blobs.LocalCopies); ok {
		return b.LocalBytes()
	}
	return 0, nil
}
