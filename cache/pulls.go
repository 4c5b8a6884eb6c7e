package cache

import (
	"encoding/binary"
	"strings"
	"time"
)

// PullStat is how often, and when last, something was pulled.
type PullStat struct {
	Count int64
	Last  time.Time // zero: never
}

// NotePull counts one pull of ref (a tag or a digest) of repo, and of the
// repository. Like Touch it is an in-memory update (an atomic add on a
// known key, the entry Touch uses too); the flush (FlushAccess) adds the
// counts to the reference's use record.
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

// Pulls returns the pull counts of repo's tags and digests, counted so far
// (flushed or not); the key "" is the repository's total.
func (s *Records) Pulls(repo string) (map[string]PullStat, error) {
	out := map[string]PullStat{}
	prefix := useKey(repo, "")
	err := s.idx.View(func(txn Txn) error {
		return txn.Scan(prefix, nil, false, func(k, v []byte) error {
			if p := decodeUse(v).pulls; p.Count > 0 {
				out[string(k[len(prefix):])] = p
			}
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
		return txn.Scan([]byte("a/"), nil, false, func(k, v []byte) error {
			if repo, ok := strings.CutSuffix(string(k[2:]), "\x00"); ok {
				out[repo] = decodeUse(v).pulls
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
