package cache

import (
	"bytes"
	"encoding/json"

	"github.com/dgraph-io/badger/v4"
	"github.com/opencontainers/go-digest"
)

// Tags lists repo's tags in lexical order after last, at most n of them (n <
// 0: all). more reports whether tags were left out. A repository without any
// manifest gives ErrNameUnknown.
func (s *Store) Tags(repo string, n int, last string) (tags []string, more bool, err error) {
	tags = []string{}
	err = s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte("m/" + repo + "\x00")})
		known := false
		for it.Rewind(); it.Valid(); it.Next() {
			known = true
			break
		}
		it.Close()
		prefix := tagPrefix(repo)
		it = txn.NewIterator(badger.IteratorOptions{Prefix: prefix})
		defer it.Close()
		for it.Seek(append(append([]byte{}, prefix...), last...)); it.Valid(); it.Next() {
			known = true
			tag := string(it.Item().Key()[len(prefix):])
			if last != "" && tag <= last {
				continue
			}
			if n >= 0 && len(tags) == n {
				more = true
				break
			}
			tags = append(tags, tag)
		}
		if !known {
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
	err = s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte("m/")})
		defer it.Close()
		// Seek past every key of last ("m/last\x00..." < "m/last\x01").
		it.Seek([]byte("m/" + last + "\x01"))
		for it.Valid() {
			k := it.Item().Key()[2:]
			repo := string(k[:bytes.IndexByte(k, 0)])
			if n >= 0 && len(repos) == n {
				more = true
				return nil
			}
			repos = append(repos, repo)
			it.Seek([]byte("m/" + repo + "\x01"))
		}
		return nil
	})
	return repos, more, err
}

// Referrers lists the manifests of repo whose subject is d, keeping only
// those of artifactType when it is set.
func (s *Store) Referrers(repo string, d digest.Digest, artifactType string) ([]Descriptor, error) {
	out := []Descriptor{}
	err := s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{PrefetchValues: true, Prefix: referrerPrefix(repo, d)})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			var desc Descriptor
			if err := it.Item().Value(func(v []byte) error { return json.Unmarshal(v, &desc) }); err != nil {
				return err
			}
			if artifactType == "" || desc.ArtifactType == artifactType {
				out = append(out, desc)
			}
		}
		return nil
	})
	return out, err
}
