package cache

import (
	"encoding/binary"
	"strings"
	"time"
)

// History is the console's record over time (traffic samples, garbage
// collections), kept in the index so that it outlives a restart and, on a
// shared index, shows every node's: h/<kind>\x00<time>\x00<node>, the time
// in big-endian unix nanoseconds so that keys sort by it.
type HistoryEntry struct {
	At   time.Time
	Node string // "" on a single box
	Val  []byte
}

func historyPrefix(kind string) []byte { return []byte("h/" + kind + "\x00") }

func historyKey(kind string, at time.Time, node string) []byte {
	k := binary.BigEndian.AppendUint64(historyPrefix(kind), uint64(at.UnixNano()))
	return append(append(k, 0), node...)
}

// PutHistory records val under kind at time at, for this node.
func (s *Records) PutHistory(kind string, at time.Time, val []byte) error {
	return s.update(func(txn Txn) error { return txn.Set(historyKey(kind, at, s.nodeID), val) })
}

// History returns kind's entries since since, oldest first.
func (s *Records) History(kind string, since time.Time) ([]HistoryEntry, error) {
	var out []HistoryEntry
	prefix := historyPrefix(kind)
	from := historyKey(kind, since, "")
	err := s.idx.View(func(txn Txn) error {
		return txn.Scan(prefix, from, false, func(k, v []byte) error {
			rest := k[len(prefix):]
			if len(rest) < 9 {
				return nil
			}
			out = append(out, HistoryEntry{At: time.Unix(0, int64(binary.BigEndian.Uint64(rest))), Node: strings.TrimPrefix(string(rest[8:]), "\x00"),
				Val: append([]byte(nil), v...)})
			return nil
		})
	})
	return out, err
}

// TrimHistory removes kind's entries older than before.
func (s *Records) TrimHistory(kind string, before time.Time) error {
	prefix := historyPrefix(kind)
	end := historyKey(kind, before, "")
	var old [][]byte
	err := s.idx.View(func(txn Txn) error {
		return txn.Scan(prefix, nil, true, func(k, _ []byte) error {
			if string(k) >= string(end) {
				return errStopScan
			}
			old = append(old, append([]byte(nil), k...))
			return nil
		})
	})
	if err != nil {
		return err
	}
	for len(old) > 0 {
		n := min(len(old), s.idx.MaxOps())
		if err := s.release(func(txn Txn) error {
			for _, k := range old[:n] {
				if err := txn.Delete(k); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			return err
		}
		old = old[n:]
	}
	return nil
}
