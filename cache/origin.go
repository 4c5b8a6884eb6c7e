package cache

import (
	"encoding/binary"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
)

// Origin is where a repository's content came from: pushed here, or
// mirrored from an upstream registry. It is recorded when content is
// written (on the repository, and on each tag, manifest and link) and read
// back for every decision: routing, access, eviction, listings.
type Origin struct {
	// Registry is the upstream the content was mirrored from ("docker.io");
	// empty for content pushed to Wharf.
	Registry string
}

// Pushed is the origin of content pushed to Wharf.
var Pushed = Origin{}

// MirroredFrom is the origin of content fetched from registry.
func MirroredFrom(registry string) Origin { return Origin{Registry: registry} }

// Mirrored reports content fetched from an upstream registry.
func (o Origin) Mirrored() bool { return o.Registry != "" }

func (o Origin) String() string {
	if o.Mirrored() {
		return "mirrored from " + o.Registry
	}
	return "pushed"
}

// encode is the stored form: "pushed" or "mirror:<registry>".
func (o Origin) encode() string {
	if o.Mirrored() {
		return "mirror:" + o.Registry
	}
	return "pushed"
}

func decodeOrigin(s string) (Origin, bool) {
	if s == "pushed" {
		return Pushed, true
	}
	if r, ok := strings.CutPrefix(s, "mirror:"); ok && r != "" {
		return MirroredFrom(r), true
	}
	return Origin{}, false
}

// merge is a repository's origin after content of origin o is written to
// it: pushed content makes it a pushed repository for good (it is then never
// evicted nor read from upstream); mirrored content keeps a mirrored one.
func (o Origin) merge(with Origin) Origin {
	if !o.Mirrored() || !with.Mirrored() {
		return Pushed
	}
	return with
}

func originKey(repo string) []byte { return []byte("o/" + repo) }

// provenanceMarker records that every repository has an o/ record (written
// once by the migration of a data directory from before origins were kept).
var provenanceMarker = []byte("s/provenance")

// origins is the in-memory copy of the o/ records; every repository's
// origin is answered from it without touching the index. The map is
// immutable once published: a read is one atomic load and no lock; a
// change (a repository's first write, rare) publishes a copy.
type origins struct {
	mu sync.Mutex // serializes the writers
	p  atomic.Pointer[map[string]Origin]
}

// Origin returns the recorded origin of repo; ok is false for a repository
// that was never written. Safe for concurrent use; no index read, no lock.
func (s *Store) Origin(repo string) (o Origin, ok bool) {
	if m := s.origins.p.Load(); m != nil {
		o, ok = (*m)[repo]
	}
	return o, ok
}

// recordOrigin writes repo's origin record in txn when content of origin o
// changes it, and returns the function that publishes the change in memory
// once the transaction committed (nil when nothing changed).
func (s *Store) recordOrigin(txn Txn, repo string, o Origin) (func(), error) {
	if cur, known := s.Origin(repo); known && cur.merge(o) == cur {
		return nil, nil // the hot path: nothing changes, no index read
	}
	// Read the record in the transaction, so that two first writes of
	// different origins to one repository conflict (and retry) instead of
	// the last one winning.
	next := o
	if v, err := txn.Get(originKey(repo)); err == nil {
		if stored, ok := decodeOrigin(string(v)); ok {
			if next = stored.merge(o); next == stored {
				return func() { s.origins.set(repo, stored) }, nil
			}
		}
	} else if !errors.Is(err, errNotFound) {
		return nil, err
	}
	if err := txn.Set(originKey(repo), []byte(next.encode())); err != nil {
		return nil, err
	}
	return func() { s.origins.set(repo, next) }, nil
}

// set publishes a committed origin record in memory.
func (g *origins) set(repo string, o Origin) {
	g.mu.Lock()
	defer g.mu.Unlock()
	var cur map[string]Origin
	if p := g.p.Load(); p != nil {
		cur = *p
	}
	if c, ok := cur[repo]; ok {
		if o = c.merge(o); o == c {
			return // nothing changes: no copy
		}
	}
	next := make(map[string]Origin, len(cur)+1)
	for k, v := range cur {
		next[k] = v
	}
	next[repo] = o
	g.p.Store(&next)
}

// updateWithOrigin runs fn in a read-write transaction that also records
// that repo received content of origin o, and publishes the origin after
// the commit.
func (s *Store) updateWithOrigin(repo string, o Origin, fn func(txn Txn) error) error {
	var publish func()
	err := s.update(func(txn Txn) error {
		if err := fn(txn); err != nil {
			return err
		}
		var err error
		publish, err = s.recordOrigin(txn, repo, o)
		return err
	})
	if err == nil && publish != nil {
		publish()
	}
	return err
}

// loadOrigins reads the o/ records into memory. A data directory written
// before origins were recorded is migrated first, once: a repository with a
// tag that was checked upstream, or whose only content sits under a
// registry-named path, was mirrored (its registry is the first component of
// its local name, which is how mirrored copies were named); everything else
// was pushed.
func (s *Store) loadOrigins() error {
	migrated := false
	err := s.idx.View(func(txn Txn) error {
		ok, err := exists(txn, provenanceMarker)
		migrated = ok
		return err
	})
	if err != nil {
		return err
	}
	if !migrated {
		if err := s.Maintenance().migrateOrigins(); err != nil {
			return err
		}
	}
	m := map[string]Origin{}
	if err := s.idx.View(func(txn Txn) error {
		return txn.Scan([]byte("o/"), nil, false, func(k, v []byte) error {
			if o, ok := decodeOrigin(string(v)); ok {
				m[string(k[2:])] = o
			}
			return nil
		})
	}); err != nil {
		return err
	}
	s.origins.mu.Lock()
	if p := s.origins.p.Load(); p != nil {
		for repo, o := range *p { // published meanwhile (a watch)
			if c, ok := m[repo]; ok {
				o = c.merge(o)
			}
			m[repo] = o
		}
	}
	s.origins.p.Store(&m)
	s.origins.mu.Unlock()
	return nil
}

func (s *Maintenance) migrateOrigins() error {
	type facts struct{ checkedTag, pushedTag, any bool }
	repos := map[string]*facts{}
	err := s.idx.View(func(txn Txn) error {
		for _, p := range []string{"t/", "m/", "l/"} {
			if err := txn.Scan([]byte(p), nil, p != "t/", func(k, v []byte) error {
				repo, _ := splitRepoKey(k, p)
				f := repos[repo]
				if f == nil {
					f = &facts{}
					repos[repo] = f
				}
				f.any = true
				if p == "t/" {
					if decodeTag(v).checked.IsZero() {
						f.pushedTag = true
					} else {
						f.checkedTag = true
					}
				}
				return nil
			}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	if err := s.indexWrite(false); err != nil {
		return err
	}
	var kvs []keyValue
	for repo, f := range repos {
		o := Pushed
		host, _, _ := strings.Cut(repo, "/")
		legacyMirrorName := strings.ContainsAny(host, ".:") || host == "localhost"
		if !f.pushedTag && legacyMirrorName && (f.checkedTag || f.any) {
			o = MirroredFrom(host)
		}
		kvs = append(kvs, keyValue{originKey(repo), []byte(o.encode())})
	}
	// The marker last: an interrupted migration runs again.
	kvs = append(kvs, keyValue{provenanceMarker, binary.BigEndian.AppendUint32(nil, 1)})
	if err := s.setAll(kvs); err != nil {
		return err
	}
	if len(repos) > 0 {
		s.log.Info("recorded the origin of existing repositories (once, for this data directory)", "repositories", len(repos))
	}
	return nil
}
