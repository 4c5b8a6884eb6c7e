package cache

import (
	"bytes"
	"encoding/json"
	"errors"
	"time"

	"github.com/opencontainers/go-digest"
)

// Content released deliberately. A deliberate delete of a tag or a
// manifest (DeleteReleasing: an operator's, a client's DELETE) and the
// eviction of a repository's pins (ForgetUses) write, in their own
// transaction, a d/ record naming the manifest it
// released and what a deleted manifest referenced. The next collection
// gives them no grace and removes the records it acted on. Being in the
// index, they survive a restart and are shared by a cluster's nodes: any
// node's collection frees what another node's delete released.

// releasedKey is the record of manifest d of repo, released deliberately.
func releasedKey(repo string, d digest.Digest) []byte {
	return []byte("d/" + repo + "\x00" + d.String())
}

// releasedRecord is a d/ record's value: what the deleted manifest
// referenced (its record is gone, so the collection cannot read them
// there); empty for an untagged manifest.
type releasedRecord struct {
	Refs []digest.Digest `json:"r,omitempty"`
	// At is when the released manifest was pushed (linked into the
	// repository); the release takes the grace from it and from what was
	// linked no later. Content linked or pushed after it has its grace as
	// usual: a push racing the delete keeps what it linked, whether before
	// or after the delete.
	At time.Time `json:"at"`
}

// putReleased writes the record of d, pushed at pushed, in txn.
func putReleased(txn Txn, repo string, d digest.Digest, refs []digest.Digest, pushed time.Time) error {
	if pushed.IsZero() {
		pushed = time.Now()
	}
	v, err := json.Marshal(releasedRecord{Refs: refs, At: pushed})
	if err != nil {
		return err
	}
	return txn.Set(releasedKey(repo, d), v)
}

// releasedSet is the d/ records a collection read: what they release and
// when, and the records themselves (key → value), to remove once
// collected.
type releasedSet struct {
	manifests map[string]map[digest.Digest]time.Time // repo → released manifests (and their children)
	blobs     map[string]map[digest.Digest]time.Time // repo → what deleted manifests referenced
	records   map[string][]byte
}

// note adds d of repo, released at at, to m (the latest release wins).
func note(m map[string]map[digest.Digest]time.Time, repo string, d digest.Digest, at time.Time) {
	if m[repo] == nil {
		m[repo] = map[digest.Digest]time.Time{}
	}
	if at.After(m[repo][d]) {
		m[repo][d] = at
	}
}

// scanReleased reads every d/ record.
func scanReleased(txn Txn) (releasedSet, error) {
	rs := releasedSet{manifests: map[string]map[digest.Digest]time.Time{}, blobs: map[string]map[digest.Digest]time.Time{}, records: map[string][]byte{}}
	err := txn.Scan([]byte("d/"), nil, false, func(k, v []byte) error {
		repo, d := splitRepoKey(k, "d/")
		var rec releasedRecord
		if json.Unmarshal(v, &rec) != nil {
			rec = releasedRecord{}
		}
		rs.records[string(k)] = append([]byte(nil), v...)
		// A deleted index's children are released manifests too; an
		// image's references are blobs (the collection tells them apart).
		note(rs.manifests, repo, digest.Digest(d), rec.At)
		for _, r := range rec.Refs {
			note(rs.manifests, repo, r, rec.At)
			note(rs.blobs, repo, r, rec.At)
		}
		return nil
	})
	return rs, err
}

// forgetReleased removes the records a collection acted on, each only if
// no delete rewrote it since.
func (s *Maintenance) forgetReleased(records map[string][]byte) error {
	keys := make([]string, 0, len(records))
	for k := range records {
		keys = append(keys, k)
	}
	for len(keys) > 0 {
		n := min(len(keys), s.idx.MaxOps()/2)
		if err := s.release(func(txn Txn) error {
			for _, k := range keys[:n] {
				v, err := txn.Get([]byte(k))
				if errors.Is(err, errNotFound) {
					continue
				} else if err != nil {
					return err
				}
				if bytes.Equal(v, records[k]) {
					if err := txn.Delete([]byte(k)); err != nil {
						return err
					}
				}
			}
			return nil
		}); err != nil {
			return err
		}
		keys = keys[n:]
	}
	return nil
}

// Released reports whether deliberate deletes released content that no
// collection freed yet: the scheduler collects soon after one.
func (s *Maintenance) Released() (bool, error) {
	var found bool
	err := s.idx.View(func(txn Txn) (err error) {
		found, err = scanFirst(txn, []byte("d/"))
		return err
	})
	return found, err
}

// CollectReleased runs a collection (o) when deliberate deletes released
// content since the last one, so that its space comes back within the
// scheduler's period instead of after the grace; ran is false when there
// was nothing to do.
func (s *Maintenance) CollectReleased(o GCOptions) (rep GCReport, ran bool, err error) {
	if ok, err := s.Released(); err != nil || !ok {
		return rep, false, err
	}
	rep, err = s.GC(o)
	return rep, true, err
}
