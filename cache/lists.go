package cache

import (
	"bytes"
	"encoding/json"
	"slices"

	"github.com/opencontainers/go-digest"
)

// Tags lists repo's tags in lexical order after last, at most n of them (n <
// 0: all). more reports whether tags were left out. A repository that never
// held anything gives ErrNameUnknown; one emptied by deletes lists no tags
// (as CNCF Distribution does: cleanup scripts list before and after).
func (s *Store) Tags(repo string, n int, last string) (tags []string, more bool, err error) {
	tags = []string{}
	err = s.idx.View(func(txn Txn) error {
		known, err := scanFirst(txn, []byte("m/"+repo+"\x00"))
		if err != nil {
			return err
		}
		prefix := tagPrefix(repo)
		if err := txn.Scan(prefix, append(append([]byte{}, prefix...), last...), true, func(k, _ []byte) error {
			known = true
			tag := string(k[len(prefix):])
			if last != "" && tag <= last {
				return nil
			}
			if n >= 0 && len(tags) == n {
				more = true
				return errStopScan
			}
			tags = append(tags, tag)
			return nil
		}); err != nil {
			return err
		}
		if _, written := s.Origin(repo); !known && !written {
			return ErrNameUnknown
		}
		return nil
	})
	return tags, more, err
}

// Catalog lists repositories holding at least one manifest, in lexical order
// after last, at most n of them (n < 0: all); more as for Tags.
func (s *Store) Catalog(n int, last string) (repos []string, more bool, err error) {
	repos = []string{}
	err = s.idx.View(func(txn Txn) error {
		// Skip past every key of a repository: "m/r\x00..." < "m/r\x01".
		from := []byte("m/" + last + "\x01")
		for {
			var repo string
			if err := txn.Scan([]byte("m/"), from, true, func(k, _ []byte) error {
				k = k[2:]
				repo = string(k[:bytes.IndexByte(k, 0)])
				return errStopScan
			}); err != nil || repo == "" {
				return err
			}
			if n >= 0 && len(repos) == n {
				more = true
				return nil
			}
			repos = append(repos, repo)
			from = []byte("m/" + repo + "\x01")
		}
	})
	return repos, more, err
}

// Referrers lists the manifests of repo whose subject is d (the mirror's
// writeReferrers filters them by artifactType).
func (s *Store) Referrers(repo string, d digest.Digest) ([]Descriptor, error) {
	out := []Descriptor{}
	err := s.idx.View(func(txn Txn) error {
		return txn.Scan(referrerPrefix(repo, d), nil, false, func(_, v []byte) error {
			var desc Descriptor
			if err := json.Unmarshal(v, &desc); err != nil {
				return err
			}
			out = append(out, desc)
			return nil
		})
	})
	return out, err
}

// ReferencedBlob reports whether a manifest repo holds references blob d
// (as config, layer or any descriptor that is not a manifest), with the
// size that descriptor gives. It reads the manifests of repo that name d.
func (s *Store) ReferencedBlob(repo string, d digest.Digest) (size int64, ok bool, err error) {
	var naming []digest.Digest
	prefix := []byte("m/" + repo + "\x00")
	err = s.idx.View(func(txn Txn) error {
		return txn.Scan(prefix, nil, false, func(k, v []byte) error {
			var m Manifest
			if err := json.Unmarshal(v, &m); err != nil {
				return nil
			}
			if !IsIndex(m.MediaType) && slices.Contains(m.Refs, d) {
				naming = append(naming, digest.Digest(k[len(prefix):]))
				if len(naming) == 4 { // the first one that parses answers; a few in case one does not
					return errStopScan
				}
			}
			return nil
		})
	})
	if err != nil {
		return 0, false, err
	}
	for _, md := range naming {
		m, err := s.GetManifest(repo, md.String())
		if err != nil {
			continue
		}
		var doc manifestDoc
		if json.Unmarshal(m.Body, &doc) != nil {
			continue
		}
		descs := doc.Layers
		if doc.Config != nil {
			descs = append(descs, *doc.Config)
		}
		for _, desc := range descs {
			if desc.Digest == d && desc.Size >= 0 {
				return desc.Size, true, nil
			}
		}
	}
	return 0, false, nil
}

// TagsRemovedBy lists the tags of repo a delete of ref removes: ref itself
// when it is a tag, else the tags that name the digest ref, in lexical
// order.
func (s *Store) TagsRemovedBy(repo, ref string) ([]string, error) {
	d, err := digest.Parse(ref)
	if err != nil {
		return []string{ref}, nil
	}
	var tags []string
	err = s.idx.View(func(txn Txn) error {
		prefix := tagPrefix(repo)
		return txn.Scan(prefix, nil, false, func(k, v []byte) error {
			if decodeTag(v).digest == d {
				tags = append(tags, string(k[len(prefix):]))
			}
			return nil
		})
	})
	return tags, err
}
