package cache

import (
	"encoding/json"
	"sort"

	"github.com/dgraph-io/badger/v4"
)

// RepoUsage is what one repository links: its blobs and manifests.
type RepoUsage struct {
	Repo      string
	Origin    Origin // as recorded when its content was written
	Blobs     int
	Manifests int
	Tags      int
	Bytes     int64 // sizes of everything linked; shared content counts in every repository
}

// Usage returns per-repository usage, sorted by bytes (largest first), and
// the bytes the blob store holds (shared content once).
func (s *Store) Usage() ([]RepoUsage, int64, error) {
	byRepo := map[string]*RepoUsage{}
	get := func(r string) *RepoUsage {
		if byRepo[r] == nil {
			byRepo[r] = &RepoUsage{Repo: r}
		}
		return byRepo[r]
	}
	var total int64
	err := s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{PrefetchValues: true})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			k := it.Item().Key()
			if len(k) < 2 {
				continue
			}
			switch string(k[:2]) {
			case "b/":
				it.Item().Value(func(v []byte) error { total += decodeSize(v); return nil })
			case "l/":
				repo, _ := splitRepoKey(k, "l/")
				u := get(repo)
				u.Blobs++
				it.Item().Value(func(v []byte) error { u.Bytes += decodeSize(v); return nil })
			case "m/":
				repo, _ := splitRepoKey(k, "m/")
				u := get(repo)
				u.Manifests++
				it.Item().Value(func(v []byte) error {
					var m Manifest
					if json.Unmarshal(v, &m) == nil {
						u.Bytes += m.Size
					}
					return nil
				})
			case "t/":
				repo, _ := splitRepoKey(k, "t/")
				get(repo).Tags++
			}
		}
		return nil
	})
	out := make([]RepoUsage, 0, len(byRepo))
	for _, u := range byRepo {
		u.Origin, _ = s.Origin(u.Repo)
		out = append(out, *u)
	}
	sort.Slice(out, func(i, j int) bool {
		return out[i].Bytes > out[j].Bytes || out[i].Bytes == out[j].Bytes && out[i].Repo < out[j].Repo
	})
	return out, total, err
}
