package cache

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/opencontainers/go-digest"
)

// FsckReport lists what a check found.
type FsckReport struct {
	Blobs    int      // blob files checked
	Bytes    int64    // bytes rehashed
	Orphans  int      // intact files the index never recorded (crash leftovers GC reclaims); not problems
	Problems []string // one line per problem
	Repaired int      // problems fixed with repair
}

// Clean reports that nothing was found.
func (r *FsckReport) Clean() bool { return len(r.Problems) == 0 }

// Fsck rehashes every blob file, checks every blob record against a
// present, correctly sized file and every link against a record, and
// reports files the index does not know. With repair, corrupt files are
// moved to <data>/quarantine/ and every index entry that needs them is
// removed (records, links, manifests and the tags and referrers of those
// manifests); orphan files are removed. Run it with the server stopped.
func (s *Maintenance) Fsck(repair bool) (FsckReport, error) {
	var rep FsckReport
	records := map[digest.Digest]int64{}
	if err := s.idx.View(func(txn Txn) error {
		return txn.Scan([]byte("b/"), nil, false, func(k, v []byte) error {
			if liveRecord(v) {
				records[digest.Digest(k[2:])] = decodeSize(v)
			}
			return nil
		})
	}); err != nil {
		return rep, err
	}
	bad := map[digest.Digest]bool{}
	onDisk := map[digest.Digest]bool{}
	err := s.blobs.Walk(func(b BlobInfo) error {
		rep.Blobs++
		d := b.Digest
		if d == "" {
			rep.Problems = append(rep.Problems, fmt.Sprintf("stray file %s", b.Name))
			return nil
		}
		onDisk[d] = true
		rc, _, err := s.blobs.Open(d)
		if errors.Is(err, ErrBlobUnknown) {
			return nil // removed while walking
		} else if err != nil {
			return err
		}
		got, err := d.Algorithm().FromReader(rc)
		rc.Close()
		if err != nil {
			return err
		}
		rep.Bytes += b.Size
		size, recorded := records[d]
		switch {
		case got != d:
			rep.Problems = append(rep.Problems, fmt.Sprintf("corrupt blob %s: content hashes to %s", d, got))
			bad[d] = true
		case recorded && size != b.Size:
			rep.Problems = append(rep.Problems, fmt.Sprintf("blob %s: %d bytes on disk, %d recorded", d, b.Size, size))
			bad[d] = true
		case !recorded:
			rep.Orphans++
			if repair && s.removeUnrecorded(d) == nil {
				rep.Repaired++
			}
		}
		return nil
	})
	if err != nil {
		return rep, err
	}
	for d := range records {
		if !onDisk[d] {
			rep.Problems = append(rep.Problems, fmt.Sprintf("blob %s is indexed but its file is missing", d))
			bad[d] = true
		}
	}
	dangling, err := s.danglingLinks(records, bad)
	if err != nil {
		return rep, err
	}
	rep.Problems = append(rep.Problems, dangling...)
	if !repair {
		return rep, nil
	}
	for d := range bad {
		if onDisk[d] {
			if err := s.blobs.Quarantine(d); err != nil {
				return rep, err
			}
		}
	}
	n, err := s.unindex(records, bad)
	rep.Repaired += n
	return rep, err
}

// danglingLinks lists links and manifests whose content is unrecorded or bad.
func (s *Maintenance) danglingLinks(records map[digest.Digest]int64, bad map[digest.Digest]bool) ([]string, error) {
	var out []string
	err := s.idx.View(func(txn Txn) error {
		for _, p := range []string{"l/", "m/"} {
			if err := txn.Scan([]byte(p), nil, true, func(k, _ []byte) error {
				repo, ds := splitRepoKey(k, p)
				d := digest.Digest(ds)
				if _, ok := records[d]; !ok {
					out = append(out, fmt.Sprintf("%s %s@%s refers to content that is not indexed", map[string]string{"l/": "blob link", "m/": "manifest"}[p], repo, d))
				} else if bad[d] {
					out = append(out, fmt.Sprintf("%s@%s refers to bad content %s", repo, d, d))
				}
				return nil
			}); err != nil {
				return err
			}
		}
		return nil
	})
	return out, err
}

// unindex removes every index entry that needs content that is bad or not
// recorded: records and links of it, manifests made of it or referencing
// it, and the tags and referrer entries of those manifests.
func (s *Maintenance) unindex(records map[digest.Digest]int64, bad map[digest.Digest]bool) (int, error) {
	gone := func(d digest.Digest) bool { _, ok := records[d]; return !ok || bad[d] }
	var keys [][]byte
	dropped := map[string]bool{} // "repo\x00digest" of manifests removed
	err := s.idx.View(func(txn Txn) error {
		for d := range bad {
			keys = append(keys, blobKey(d))
		}
		var serr error
		scan := func(prefix string, fn func(k, v []byte)) {
			if serr == nil {
				serr = txn.Scan([]byte(prefix), nil, false, func(k, v []byte) error {
					fn(append([]byte(nil), k...), v)
					return nil
				})
			}
		}
		scan("l/", func(k, _ []byte) {
			if _, d := splitRepoKey(k, "l/"); gone(digest.Digest(d)) {
				keys = append(keys, k)
			}
		})
		scan("m/", func(k, v []byte) {
			repo, d := splitRepoKey(k, "m/")
			var m Manifest
			broken := gone(digest.Digest(d)) || json.Unmarshal(v, &m) != nil
			for _, ref := range m.Refs {
				broken = broken || gone(ref)
			}
			if broken {
				keys, dropped[repo+"\x00"+d] = append(keys, k), true
			}
		})
		scan("t/", func(k, v []byte) {
			repo, _ := splitRepoKey(k, "t/")
			if dropped[repo+"\x00"+decodeTag(v).digest.String()] {
				keys = append(keys, k)
			}
		})
		scan("r/", func(k, _ []byte) {
			repo, rest := splitRepoKey(k, "r/")
			if _, d, _ := strings.Cut(rest, "\x00"); dropped[repo+"\x00"+d] {
				keys = append(keys, k)
			}
		})
		return serr
	})
	if err != nil {
		return 0, err
	}
	for _, k := range keys {
		if err := s.release(func(txn Txn) error { return txn.Delete(k) }); err != nil {
			return 0, err
		}
	}
	s.cacheMu.Lock()
	s.tags.Purge()
	s.manifests.Purge()
	if s.links != nil {
		s.links.Purge()
	}
	s.gen++
	s.cacheMu.Unlock()
	return len(keys), nil
}
