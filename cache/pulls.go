package cache

import (
	"encoding/binary"
	"errors"
	"strings"
	"time"
)

// PullStat is how often, and when last, something was pulled.
type PullStat struct {
	Count int64
	Last  time.Time // zero: never
}

// pullKey is the index key of a pull count: p/<repo>\x00<ref>, where the
// empty ref is the repository's total.
func pullKey(repo, ref string) []byte { return []byte("p/" + refKey{repo, ref}.String()) }

// NotePull counts one pull of ref (a tag or a digest) of repo, and of the
// repository. Like Touch it is an in-memory update (an atomic add on a
// known key, the entry Touch uses too); FlushPulls adds the counts to the
// index.
func (s *Records) NotePull(repo, ref string) {
	now := time.Now().UnixNano()
	for _, u := range [2]*use{s.uses.get(refKey{repo, ref}), s.uses.get(refKey{repo, ""})} {
		u.n.Add(1)
		u.pulledAt.Store(now)
	}
}

func encodePullStat(p PullStat) []byte {
	b := binary.BigEndian.AppendUint64(nil, uint64(p.Count))
	var at int64
	if !p.Last.IsZero() {
		at = p.Last.UnixNano()
	}
	return binary.BigEndian.AppendUint64(b, uint64(at))
}

func decodePullStat(v []byte) PullStat {
	if len(v) != 16 {
		return PullStat{}
	}
	p := PullStat{Count: int64(binary.BigEndian.Uint64(v))}
	if at := int64(binary.BigEndian.Uint64(v[8:])); at != 0 {
		p.Last = time.Unix(0, at)
	}
	return p
}

// add folds pending counts into p.
func (p PullStat) add(n, at int64) PullStat {
	p.Count += n
	if t := time.Unix(0, at); at != 0 && t.After(p.Last) {
		p.Last = t
	}
	return p
}

// FlushPulls adds the pulls counted since the last flush to the index, in
// transactions of at most half the index's MaxOps keys (each is read and
// written). Counts a failed write could not add stay for the next flush;
// keys idle since the previous flush are dropped from memory.
func (s *Records) FlushPulls() error {
	type entry struct {
		k     refKey
		key   string
		n, at int64
	}
	var batch []entry
	s.uses.each(func(k refKey, u *use) {
		if n := u.n.Swap(0); n > 0 {
			batch = append(batch, entry{k, k.String(), n, u.pulledAt.Load()})
		} else {
			s.uses.dropIdle(k, u)
		}
	})
	if len(batch) == 0 {
		return nil
	}
	giveBack := func(es []entry) {
		for _, e := range es {
			u := s.uses.get(e.k)
			u.n.Add(e.n)
			if u.pulledAt.Load() < e.at {
				u.pulledAt.Store(e.at)
			}
		}
	}
	step := max(1, s.idx.MaxOps()/2)
	for i := 0; i < len(batch); i += step {
		chunk := batch[i:min(len(batch), i+step)]
		err := s.update(func(txn Txn) error {
			for _, e := range chunk {
				k := []byte("p/" + e.key)
				var p PullStat
				if v, err := txn.Get(k); err == nil {
					p = decodePullStat(v)
				} else if !errors.Is(err, errNotFound) {
					return err
				}
				if err := txn.Set(k, encodePullStat(p.add(e.n, e.at))); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			giveBack(batch[i:])
			return err
		}
	}
	return nil
}

// Pulls returns the pull counts of repo's tags and digests, counted so far
// (flushed or not); the key "" is the repository's total.
func (s *Records) Pulls(repo string) (map[string]PullStat, error) {
	out := map[string]PullStat{}
	prefix := pullKey(repo, "")
	err := s.idx.View(func(txn Txn) error {
		return txn.Scan(prefix, nil, false, func(k, v []byte) error {
			out[string(k[len(prefix):])] = decodePullStat(v)
			return nil
		})
	})
	s.uses.each(func(k refKey, u *use) {
		if n := u.n.Load(); k.repo == repo && n > 0 {
			out[k.ref] = out[k.ref].add(n, u.pulledAt.Load())
		}
	})
	return out, err
}

// RepoPulls returns every repository's total pull count.
func (s *Records) RepoPulls() (map[string]PullStat, error) {
	out := map[string]PullStat{}
	err := s.idx.View(func(txn Txn) error {
		return txn.Scan([]byte("p/"), nil, false, func(k, v []byte) error {
			if repo, ok := strings.CutSuffix(string(k[2:]), "\x00"); ok {
				out[repo] = decodePullStat(v)
			}
			return nil
		})
	})
	s.uses.each(func(k refKey, u *use) {
		if n := u.n.Load(); k.ref == "" && n > 0 {
			out[k.repo] = out[k.repo].add(n, u.pulledAt.Load())
		}
	})
	return out, err
}
