package cache

import (
	"encoding/binary"
	"errors"
	"time"
)

// Revocations are credentials ended before their time (a console
// sign-out): x/<id> → when the credential would have expired anyway
// (big-endian unix seconds), so that they outlive a restart and, on a
// shared index, reach every node. Expired ones are dropped as new ones
// are written.
func revokedKey(id string) []byte { return []byte("x/" + id) }

// Revoke records that credential id is void until until.
func (s *Records) Revoke(id string, until time.Time) error {
	now := time.Now()
	var expired [][]byte
	err := s.idx.View(func(txn Txn) error {
		return txn.Scan([]byte("x/"), nil, false, func(k, v []byte) error {
			if len(v) == 8 && int64(binary.BigEndian.Uint64(v)) < now.Unix() && len(expired) < s.idx.MaxOps()-1 {
				expired = append(expired, append([]byte(nil), k...))
			}
			return nil
		})
	})
	if err != nil {
		return err
	}
	return s.update(func(txn Txn) error {
		for _, k := range expired {
			if err := txn.Delete(k); err != nil {
				return err
			}
		}
		return txn.Set(revokedKey(id), binary.BigEndian.AppendUint64(nil, uint64(until.Unix())))
	})
}

// Revoked reports whether credential id was revoked and is not expired.
func (s *Records) Revoked(id string) (bool, error) {
	var v []byte
	err := s.idx.View(func(txn Txn) error {
		var err error
		v, err = txn.Get(revokedKey(id))
		return err
	})
	if errors.Is(err, errNotFound) {
		return false, nil
	} else if err != nil {
		return false, err
	}
	return len(v) == 8 && int64(binary.BigEndian.Uint64(v)) >= time.Now().Unix(), nil
}
