package cache

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
)

// Content in use is kept. A mirrored manifest pulled by digest (a
// Kubernetes pod spec, a Helm chart, a FROM x@sha256: pin) is named by no
// tag, yet it is as much in use as a tagged one. The puller's Touch of the
// digest is flushed as an access record ("a/repo\x00sha256:…", the same
// record a tag's use writes: no extra index write per request), and a
// collection reads it back:
//   - a manifest pulled by digest that no other manifest of its repository
//     references (an image or an index pinned by digest) is pinned: a root
//     of the collection exactly like a tag, until eviction takes its use
//     (least recently used first, under the quota or past --retention);
//   - a manifest that another one references (a platform manifest of an
//     index, fetched by digest as every client does) is spared while its
//     last use is within the grace, as if it were new: it stays while its
//     index is kept, and when the index goes (a tag moved upstream, an
//     eviction) it follows once unused for the grace, instead of being
//     pinned forever by the pull that went through the index.

// scanUses reads the digest uses of the index into sn.used.
func (sn *snapshot) scanUses(txn Txn, pace *pacer) error {
	return txn.Scan([]byte("a/"), nil, false, func(k, v []byte) error {
		pace.step()
		repo, ref, ok := strings.Cut(string(k[2:]), "\x00")
		at, used := decodeUse(v).lastUse()
		if !ok || !used || !strings.Contains(ref, ":") {
			return nil // a tag's use (the tag is the root), or pulls alone
		}
		d, err := digest.Parse(ref)
		if err != nil {
			return nil
		}
		if sn.used[repo] == nil {
			sn.used[repo] = map[digest.Digest]time.Time{}
		}
		sn.used[repo][d] = at
		return nil
	})
}

// pins returns the manifests of repo pinned by a pull by digest, and when
// each manifest that another one references was last used by digest.
func (sn *snapshot) pins(repo string) (pinned []digest.Digest, childUse map[digest.Digest]time.Time) {
	used := sn.used[repo]
	if len(used) == 0 {
		return nil, nil
	}
	child := map[digest.Digest]bool{}
	for _, m := range sn.manifests[repo] {
		for _, r := range m.Refs {
			if _, ok := sn.manifests[repo][r]; ok {
				child[r] = true
			}
		}
	}
	childUse = map[digest.Digest]time.Time{}
	for d, at := range used {
		if _, ok := sn.manifests[repo][d]; !ok {
			continue
		}
		if child[d] {
			childUse[d] = at
		} else {
			pinned = append(pinned, d)
		}
	}
	return pinned, childUse
}

// digestUses lists, for eviction, the mirrored manifests pinned by a pull
// by digest, by their last use (lruEntry.tag is the digest). uses maps
// repo\x00ref to its last use, as mirroredTags read it. Platform
// manifests of an index are not pinned (pins above): their index is.
func (s *Maintenance) digestUses(txn Txn, uses map[string]time.Time) ([]lruEntry, error) {
	var out []lruEntry
	children := map[string]map[digest.Digest]bool{} // by repo, read once each
	for k, at := range uses {
		repo, ref, _ := strings.Cut(k, "\x00")
		d, err := digest.Parse(ref)
		if err != nil {
			continue
		}
		if o, _ := s.st().Origin(repo); !o.Mirrored() {
			continue
		}
		if children[repo] == nil {
			if children[repo], err = childManifests(txn, repo); err != nil {
				return nil, err
			}
		}
		if children[repo][d] {
			continue
		}
		if _, err := txn.Get(manifestKey(repo, d)); err != nil {
			if errors.Is(err, errNotFound) {
				continue
			}
			return nil, err
		}
		out = append(out, lruEntry{repo: repo, tag: ref, digest: d, used: at})
	}
	return out, nil
}

// forgetUse drops the access record of ref of repo: eviction of a pull by
// digest. A use after it records it again.
func (s *Maintenance) forgetUse(repo, ref string) error {
	k := refKey{repo, ref}
	if u := s.uses.load(k); u != nil {
		s.uses.dropIdle(k, u) // used since: the flush records it again
	}
	return s.release(func(txn Txn) error { return forgetUse(txn, useKey(repo, ref)) })
}

// ForgetUses drops the records of every pull by digest of repo (an
// operator's eviction of the whole repository) and returns the digests
// they named, recorded as released (released.go) in the same
// transactions.
func (s *Maintenance) ForgetUses(repo string) ([]digest.Digest, error) {
	prefix := useKey(repo, "")
	var keys [][]byte
	var ds []digest.Digest
	s.uses.each(func(k refKey, u *use) { // uses not flushed yet are forgotten
		if k.repo == repo && strings.Contains(k.ref, ":") {
			u.at.Store(u.flushed.Load())
			s.uses.dropIdle(k, u)
		}
	})
	if err := s.idx.View(func(txn Txn) error {
		return txn.Scan(prefix, nil, false, func(k, v []byte) error {
			if _, used := decodeUse(v).lastUse(); !used {
				return nil // pulls alone: nothing pinned
			}
			if d, err := digest.Parse(string(k[len(prefix):])); err == nil {
				keys, ds = append(keys, append([]byte(nil), k...)), append(ds, d)
			}
			return nil
		})
	}); err != nil {
		return nil, err
	}
	for len(keys) > 0 {
		n := min(len(keys), s.idx.MaxOps()/2)
		batch := ds[len(ds)-len(keys):][:n]
		if err := s.release(func(txn Txn) error {
			for i, k := range keys[:n] {
				if err := forgetUse(txn, k); err != nil { // its pulls stay
					return err
				}
				if err := putReleased(txn, repo, batch[i], nil, time.Now()); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			return nil, err
		}
		keys = keys[n:]
	}
	return ds, nil
}

// childManifests lists what the indexes of repo reference.
func childManifests(txn Txn, repo string) (map[digest.Digest]bool, error) {
	out := map[digest.Digest]bool{}
	err := txn.Scan([]byte("m/"+repo+"\x00"), nil, false, func(_, v []byte) error {
		if !bytes.Contains(v, []byte("index")) && !bytes.Contains(v, []byte("manifest.list")) {
			return nil // not an index: no need to decode it
		}
		var m Manifest
		if err := json.Unmarshal(v, &m); err != nil || !IsIndex(m.MediaType) {
			return nil
		}
		for _, r := range m.Refs {
			out[r] = true
		}
		return nil
	})
	return out, err
}
