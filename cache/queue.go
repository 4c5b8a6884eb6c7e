package cache

import (
	"encoding/binary"
	"sync/atomic"
	"time"
)

// Queue holds what waits to be sent to another system (registry:2's
// notifications), in the index so that neither a restart nor a crash
// loses it and a cluster's nodes share it: n/<queue>\x00<time><node>\x00<seq>,
// the time in big-endian unix nanoseconds so that keys sort by it. Its
// writes do not count as changes of content (a collection's preview stays
// valid across them).
type Queue Store

// Queue is the store's view of its outgoing queues.
func (s *Store) Queue() *Queue { return (*Queue)(s) }

// QueueItem is one entry of a queue.
type QueueItem struct {
	Key []byte
	At  time.Time
	Val []byte
}

// queueSeq tells apart entries queued by one node in the same nanosecond.
var queueSeq atomic.Uint64

func queuePrefix(queue string) []byte { return []byte("n/" + queue + "\x00") }

// QueueEntry is one value to add to each of its queues.
type QueueEntry struct {
	Queues []string
	At     time.Time
	Val    []byte
}

// Enqueue adds the entries, in as few transactions as the index allows
// (one, unless they exceed its MaxOps): a caller gathering the entries of
// concurrent requests pays one durable write for all of them.
func (q *Queue) Enqueue(entries []QueueEntry) error {
	var kvs []keyValue
	for _, e := range entries {
		seq := queueSeq.Add(1)
		for _, name := range e.Queues {
			k := binary.BigEndian.AppendUint64(queuePrefix(name), uint64(e.At.UnixNano()))
			k = append(append(k, q.nodeID...), 0)
			kvs = append(kvs, keyValue{binary.BigEndian.AppendUint64(k, seq), e.Val})
		}
	}
	if len(kvs) == 0 {
		return nil
	}
	return q.batched(len(kvs), false, false, func(txn Txn, i int) error { return txn.Set(kvs[i].key, kvs[i].val) })
}

// Peek returns up to max of queue's oldest entries, oldest first.
func (q *Queue) Peek(queue string, max int) ([]QueueItem, error) {
	var out []QueueItem
	prefix := queuePrefix(queue)
	err := q.idx.View(func(txn Txn) error {
		return txn.Scan(prefix, nil, false, func(k, v []byte) error {
			if len(out) == max {
				return errStopScan
			}
			out = append(out, QueueItem{Key: append([]byte(nil), k...), At: queueTime(k[len(prefix):]), Val: append([]byte(nil), v...)})
			return nil
		})
	})
	return out, err
}

// Len counts queue's entries and says when the oldest was queued.
func (q *Queue) Len(queue string) (n int, oldest time.Time, err error) {
	prefix := queuePrefix(queue)
	err = q.idx.View(func(txn Txn) error {
		return txn.Scan(prefix, nil, true, func(k, _ []byte) error {
			if n == 0 {
				oldest = queueTime(k[len(prefix):])
			}
			n++
			return nil
		})
	})
	return n, oldest, err
}

// Remove deletes entries (sent, or dropped). Missing ones are no error:
// another node may have removed them.
func (q *Queue) Remove(items []QueueItem) error {
	return q.batched(len(items), true, false, func(txn Txn, i int) error { return txn.Delete(items[i].Key) })
}

// Claim takes the named duty for this node: on a cluster one node at a
// time holds it (until release, or until the node dies); on a single box
// it is always this one's. ok is false while another node holds it.
func (q *Queue) Claim(name string) (release func(), ok bool, err error) { return claim(q.idx, name) }

func queueTime(rest []byte) time.Time {
	if len(rest) < 8 {
		return time.Time{}
	}
	return time.Unix(0, int64(binary.BigEndian.Uint64(rest)))
}
