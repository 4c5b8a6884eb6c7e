package cache

import (
	"encoding/json"
	"sort"

	"github.com/opencontainers/go-digest"
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
func (s *Maintenance) Usage() ([]RepoUsage, int64, error) {
	byRepo := map[string]*RepoUsage{}
	get := func(r string) *RepoUsage {
		if byRepo[r] == nil {
			byRepo[r] = &RepoUsage{Repo: r}
		}
		return byRepo[r]
	}
	var total int64
	err := s.idx.View(func(txn Txn) error {
		for _, p := range []string{"b/", "l/", "m/", "t/"} {
			if err := txn.Scan([]byte(p), nil, p == "t/", func(k, v []byte) error {
				switch p {
				case "b/":
					if liveRecord(v) {
						total += decodeSize(v)
					}
				case "l/":
					repo, _ := splitRepoKey(k, "l/")
					u := get(repo)
					u.Blobs++
					u.Bytes += decodeSize(v)
				case "m/":
					repo, _ := splitRepoKey(k, "m/")
					u := get(repo)
					u.Manifests++
					var m Manifest
					if json.Unmarshal(v, &m) == nil {
						u.Bytes += m.Size
					}
				case "t/":
					repo, _ := splitRepoKey(k, "t/")
					get(repo).Tags++
				}
				return nil
			}); err != nil {
				return err
			}
		}
		return nil
	})
	out := make([]RepoUsage, 0, len(byRepo))
	for _, u := range byRepo {
		u.Origin, _ = s.st().Origin(u.Repo)
		out = append(out, *u)
	}
	sort.Slice(out, func(i, j int) bool {
		return out[i].Bytes > out[j].Bytes || out[i].Bytes == out[j].Bytes && out[i].Repo < out[j].Repo
	})
	return out, total, err
}

// NamespaceUsage is what the repositories match accepts hold together:
// the bytes of their distinct blobs and manifests (shared content once),
// and the digests linked among them. Only keys under prefixes (the
// literal starts of match's patterns) are read.
func (s *Maintenance) NamespaceUsage(prefixes []string, match func(repo string) bool) (int64, map[digest.Digest]bool, error) {
	var total int64
	linked := map[digest.Digest]bool{}
	err := s.idx.View(func(txn Txn) error {
		for _, kind := range []string{"l/", "m/"} {
			for _, pre := range prefixes {
				if err := txn.Scan([]byte(kind+pre), nil, false, func(k, v []byte) error {
					repo, ref := splitRepoKey(k, kind)
					d := digest.Digest(ref)
					if !match(repo) || linked[d] {
						return nil
					}
					linked[d] = true
					if kind == "l/" {
						total += decodeSize(v)
					} else {
						var m Manifest
						if json.Unmarshal(v, &m) == nil {
							total += m.Size
						}
					}
					return nil
				}); err != nil {
					return err
				}
			}
		}
		return nil
	})
	return total, linked, err
}
