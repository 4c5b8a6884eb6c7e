package cache

import (
	"encoding/json"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
)

// snapshot is the part of the index a collection marks from.
type snapshot struct {
	tags      map[string][]digest.Digest                   // repo → tagged manifests
	manifests map[string]map[digest.Digest]*Manifest       // repo → manifests
	links     map[string]map[digest.Digest]time.Time       // repo → blob → linked at
	referrers map[string]map[digest.Digest][]digest.Digest // repo → subject → referrers
	used      map[string]map[digest.Digest]time.Time       // repo → manifest → last pulled by digest (pins.go)
	deletes   releasedSet                                  // what deliberate deletes released (released.go)
	blobs     map[digest.Digest]int64                      // live blob records → size (for previews)
}

func splitRepoKey(k []byte, prefix string) (repo, rest string) {
	s := string(k[len(prefix):])
	repo, rest, _ = strings.Cut(s, "\x00")
	return repo, rest
}

func (s *Maintenance) snapshot(pace *pacer) (*snapshot, error) {
	sn := &snapshot{tags: map[string][]digest.Digest{}, manifests: map[string]map[digest.Digest]*Manifest{},
		links: map[string]map[digest.Digest]time.Time{}, referrers: map[string]map[digest.Digest][]digest.Digest{},
		used: map[string]map[digest.Digest]time.Time{}, blobs: map[digest.Digest]int64{}}
	err := s.idx.View(func(txn Txn) error {
		scan := func(prefix string, fn func(k, v []byte) error) error {
			return txn.Scan([]byte(prefix), nil, false, func(k, v []byte) error {
				pace.step()
				return fn(k, v)
			})
		}
		if err := scan("t/", func(k, v []byte) error {
			repo, _ := splitRepoKey(k, "t/")
			sn.tags[repo] = append(sn.tags[repo], decodeTag(v).digest)
			return nil
		}); err != nil {
			return err
		}
		if err := scan("m/", func(k, v []byte) error {
			repo, d := splitRepoKey(k, "m/")
			var m Manifest
			if err := json.Unmarshal(v, &m); err != nil {
				return err
			}
			m.Digest = digest.Digest(d)
			if sn.manifests[repo] == nil {
				sn.manifests[repo] = map[digest.Digest]*Manifest{}
			}
			sn.manifests[repo][m.Digest] = &m
			return nil
		}); err != nil {
			return err
		}
		if err := scan("l/", func(k, v []byte) error {
			repo, d := splitRepoKey(k, "l/")
			if sn.links[repo] == nil {
				sn.links[repo] = map[digest.Digest]time.Time{}
			}
			sn.links[repo][digest.Digest(d)] = linkTime(v)
			return nil
		}); err != nil {
			return err
		}
		if err := scan("b/", func(k, v []byte) error {
			if liveRecord(v) {
				sn.blobs[digest.Digest(k[2:])] = decodeSize(v)
			}
			return nil
		}); err != nil {
			return err
		}
		if err := sn.scanUses(txn, pace); err != nil {
			return err
		}
		var err error
		if sn.deletes, err = scanReleased(txn); err != nil {
			return err
		}
		return scan("r/", func(k, v []byte) error {
			repo, rest := splitRepoKey(k, "r/")
			subject, d, _ := strings.Cut(rest, "\x00")
			if sn.referrers[repo] == nil {
				sn.referrers[repo] = map[digest.Digest][]digest.Digest{}
			}
			sn.referrers[repo][digest.Digest(subject)] = append(sn.referrers[repo][digest.Digest(subject)], digest.Digest(d))
			return nil
		})
	})
	return sn, err
}

// releasedAt is what the released manifests of repo (roots, with the time
// of their release) reach, manifests and blobs (through index entries and
// referrers), each with the latest release that reaches it; blobs adds the
// references of deleted manifests.
func (sn *snapshot) releasedAt(repo string, roots, blobs map[digest.Digest]time.Time) (map[digest.Digest]time.Time, map[digest.Digest]time.Time) {
	if len(roots)+len(blobs) == 0 {
		return nil, nil
	}
	relM, relB := map[digest.Digest]time.Time{}, map[digest.Digest]time.Time{}
	later := func(m map[digest.Digest]time.Time, d digest.Digest, at time.Time) {
		if at.After(m[d]) {
			m[d] = at
		}
	}
	for root, at := range roots {
		mans, bs := sn.reach(repo, []digest.Digest{root})
		later(relM, root, at)
		for d := range mans {
			later(relM, d, at)
		}
		for d := range bs {
			later(relB, d, at)
		}
	}
	for d, at := range blobs {
		later(relB, d, at)
	}
	return relM, relB
}

// reach walks repo's manifests from roots, through index entries and
// referrers, and returns the manifests and blobs it reaches.
func (sn *snapshot) reach(repo string, queue []digest.Digest) (map[digest.Digest]bool, map[digest.Digest]bool) {
	mans, blobs := map[digest.Digest]bool{}, map[digest.Digest]bool{}
	for len(queue) > 0 {
		d := queue[0]
		queue = queue[1:]
		m, ok := sn.manifests[repo][d]
		if !ok || mans[d] {
			continue
		}
		mans[d] = true
		for _, ref := range m.Refs {
			if _, isManifest := sn.manifests[repo][ref]; isManifest {
				queue = append(queue, ref)
			} else {
				blobs[ref] = true
			}
		}
		queue = append(queue, sn.referrers[repo][d]...)
	}
	return mans, blobs
}

// kept marks, in one repository, the manifests reachable from its tags
// (through index entries and referrers), from its pins (mirrored content
// pulled by digest, pins.go) or younger than the grace period (freshM; a
// platform manifest's age is that of its last pull by digest), and the
// blobs those manifests reference.
func (sn *snapshot) kept(repo string, mirrored bool, freshM func(digest.Digest, time.Time) bool) (map[digest.Digest]bool, map[digest.Digest]bool) {
	var queue []digest.Digest
	queue = append(queue, sn.tags[repo]...)
	var childUse map[digest.Digest]time.Time
	if mirrored {
		var pinned []digest.Digest
		pinned, childUse = sn.pins(repo)
		queue = append(queue, pinned...)
	}
	for d, m := range sn.manifests[repo] {
		at := m.Pushed
		if u := childUse[d]; u.After(at) {
			at = u
		}
		if freshM(d, at) {
			queue = append(queue, d)
		}
	}
	return sn.reach(repo, queue)
}
