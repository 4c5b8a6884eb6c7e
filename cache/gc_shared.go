package cache

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/opencontainers/go-digest"
)

// On a shared index, the per-digest content locks of one process no
// longer keep a collector on one node from deleting what a push on
// another links. There, blob records carry the protocol instead:
//
//	b/<digest> = size (8 bytes) · stamp (8 bytes, unix nanos) [· state]
//
// Every transaction that links a blob rewrites its record with a new
// stamp. The collector marks from one revision, then turns each record it
// found unused into a tombstone only if the record is still byte for byte
// what it marked (a compare-and-set: any link since changed the stamp),
// deletes the object, and marks the tombstone gone. A linker never writes
// over a "deleting" tombstone, and writes over a "gone" one (or none)
// only if it saw that same state before it stored the bytes — so the
// object it stored cannot be one a collector deletes. Gone tombstones are
// dropped after tombstoneKeep; linkers that find a "deleting" one older
// than staleDeleting finish that deletion themselves (its collector died).
const (
	stateDeleting = 'D'
	stateGone     = 'G'
	tombstoneKeep = 24 * time.Hour
	staleDeleting = time.Minute
	// deletingWait bounds how long a push waits for a collection of the
	// same blob to finish before it answers "retry".
	deletingWait = 10 * time.Second
)

// ErrCollecting: the blob is being garbage collected on another node at
// this moment; the request may be retried at once (503 with Retry-After).
var ErrCollecting = errors.New("the blob is being garbage collected; retry")

func sharedRecord(size int64, state byte) []byte {
	v := binary.BigEndian.AppendUint64(encodeSize(size), uint64(time.Now().UnixNano()))
	if state != 0 {
		v = append(v, state)
	}
	return v
}

// recordState is a record's state: 0 for a live blob.
func recordState(v []byte) byte {
	if len(v) >= 17 {
		return v[16]
	}
	return 0
}

func recordStamp(v []byte) time.Time {
	if len(v) < 16 {
		return time.Time{}
	}
	return time.Unix(0, int64(binary.BigEndian.Uint64(v[8:16])))
}

// liveRecord reports a record of a stored blob (not a tombstone).
func liveRecord(v []byte) bool { return recordState(v) == 0 }

// blobBefore reads d's record before a push stores its bytes (nil: none),
// waiting for a collection of d in progress to end. Single box: nothing to
// read (the content lock does the work).
func (s *Store) blobBefore(d digest.Digest) ([]byte, error) {
	if !s.shared {
		return nil, nil
	}
	deadline := time.Now().Add(deletingWait)
	for {
		var v []byte
		err := s.idx.View(func(txn Txn) (err error) {
			v, err = txn.Get(blobKey(d))
			return err
		})
		if errors.Is(err, errNotFound) {
			return nil, nil
		} else if err != nil {
			return nil, err
		}
		if recordState(v) != stateDeleting {
			return v, nil
		}
		if time.Since(recordStamp(v)) > staleDeleting {
			if err := s.Maintenance().finishDeleting(d, v); err != nil {
				return nil, err
			}
			continue
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("%s: %w", d, ErrCollecting)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// recordBlob writes d's record in a linking transaction. Single box: the
// record is made once. Shared: see the protocol above; before is what
// blobBefore read before the bytes were stored.
func (s *Store) recordBlob(txn Txn, d digest.Digest, size int64, before []byte) error {
	v, err := txn.Get(blobKey(d))
	if err != nil && !errors.Is(err, errNotFound) {
		return err
	}
	if !s.shared {
		if err == nil {
			return nil
		}
		return txn.Set(blobKey(d), encodeSize(size))
	}
	switch recordState(v) {
	case 0:
		if v != nil {
			break
		}
		fallthrough
	case stateGone:
		if !bytes.Equal(v, before) {
			// A collection ran while the bytes were stored: they may
			// be the ones it deleted.
			return fmt.Errorf("%s: %w", d, ErrCollecting)
		}
	default:
		return fmt.Errorf("%s: %w", d, ErrCollecting)
	}
	return txn.Set(blobKey(d), sharedRecord(size, 0))
}

// touchBlob, in a transaction that links d (already stored) somewhere
// new, requires its record to be live and, on a shared index, renews its
// stamp so that a collector that marked it unused lets it be. It returns
// the recorded size. Errors: ErrBlobUnknown.
func (s *Store) touchBlob(txn Txn, d digest.Digest) (int64, error) {
	v, err := txn.Get(blobKey(d))
	if errors.Is(err, errNotFound) || (err == nil && !liveRecord(v)) {
		return 0, ErrBlobUnknown
	} else if err != nil {
		return 0, err
	}
	size := decodeSize(v)
	if s.shared {
		return size, txn.Set(blobKey(d), sharedRecord(size, 0))
	}
	return size, nil
}

// sweepShared is sweepBlobs on a shared index: the records of unused
// blobs that are unchanged since the mark become tombstones, their objects
// are deleted, the tombstones are marked gone; old gone tombstones are
// dropped and deletions whose collector died are finished.
func (s *Maintenance) sweepShared(rep *GCReport, o GCOptions, planned map[string]bool) error {
	marked := map[digest.Digest][]byte{}
	var stale, old []digest.Digest
	err := s.idx.View(func(txn Txn) error {
		used, err := usedDigests(txn, o, planned)
		if err != nil {
			return err
		}
		return txn.Scan([]byte("b/"), nil, false, func(k, v []byte) error {
			d := digest.Digest(k[2:])
			switch recordState(v) {
			case stateDeleting:
				if time.Since(recordStamp(v)) > staleDeleting {
					stale = append(stale, d)
					marked[d] = append([]byte(nil), v...)
				}
			case stateGone:
				if time.Since(recordStamp(v)) > tombstoneKeep {
					old = append(old, d)
					marked[d] = append([]byte(nil), v...)
				}
			default:
				if !used[d] {
					marked[d] = append([]byte(nil), v...)
				}
			}
			return nil
		})
	})
	if err != nil {
		return err
	}
	if s.afterMark != nil {
		s.afterMark()
	}
	var doomed []digest.Digest
	for d, v := range marked {
		if liveRecord(v) {
			doomed = append(doomed, d)
		}
	}
	if o.DryRun {
		for _, d := range doomed {
			size := decodeSize(marked[d])
			rep.Blobs++
			rep.Bytes += size
			rep.add("blob %s (%d bytes, no repository links it)", d, size)
		}
		return nil
	}
	batch := max(1, s.idx.MaxOps()/2)
	for len(doomed) > 0 {
		n := min(len(doomed), batch)
		var tomb []digest.Digest
		tombs := map[digest.Digest][]byte{}
		err := s.retry(func(txn Txn) error {
			tomb = tomb[:0]
			for _, d := range doomed[:n] {
				v, err := txn.Get(blobKey(d))
				if errors.Is(err, errNotFound) {
					continue
				} else if err != nil {
					return err
				}
				if !bytes.Equal(v, marked[d]) {
					continue // linked since the mark
				}
				t := sharedRecord(decodeSize(v), stateDeleting)
				if err := txn.Set(blobKey(d), t); err != nil {
					return err
				}
				tomb, tombs[d] = append(tomb, d), t
			}
			return nil
		})
		if err != nil {
			return err
		}
		doomed = doomed[n:]
		if s.afterSweepRecords != nil {
			s.afterSweepRecords(tomb)
		}
		for _, d := range tomb {
			if err := s.finishDeleting(d, tombs[d]); err != nil {
				return err
			}
			size := decodeSize(tombs[d])
			rep.Blobs++
			rep.Bytes += size
			rep.add("blob %s (%d bytes, no repository links it)", d, size)
		}
	}
	for _, d := range stale {
		if err := s.finishDeleting(d, marked[d]); err != nil {
			return err
		}
	}
	for _, d := range old {
		if err := s.retry(func(txn Txn) error {
			if v, err := txn.Get(blobKey(d)); err != nil || !bytes.Equal(v, marked[d]) {
				return nil // re-pushed meanwhile, or gone
			}
			return txn.Delete(blobKey(d))
		}); err != nil {
			return err
		}
	}
	return nil
}

// finishDeleting deletes the object of d, whose record was the deleting
// tombstone tomb, and marks the tombstone gone (if it is still tomb).
func (s *Maintenance) finishDeleting(d digest.Digest, tomb []byte) error {
	if err := s.blobs.Delete(d); err != nil && !errors.Is(err, ErrBlobUnknown) {
		return err
	}
	err := s.retry(func(txn Txn) error {
		v, err := txn.Get(blobKey(d))
		if err != nil || !bytes.Equal(v, tomb) {
			return nil
		}
		return txn.Set(blobKey(d), sharedRecord(decodeSize(v), stateGone))
	})
	return err
}

// dropLocalCopy lets go of this node's local copy of d once a collector
// (on any node) began deleting it.
func (s *Cluster) dropLocalCopy(d digest.Digest) {
	if l, ok := s.blobs.(interface{ DropLocal(digest.Digest) error }); ok {
		if err := l.DropLocal(d); err != nil {
			s.log.Warn("dropping the local copy of a collected blob", "digest", d, "err", err)
		}
	}
}
