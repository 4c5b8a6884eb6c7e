package cache

import (
	"encoding/json"
	"errors"
	"sort"
	"sync"
	"time"
)

// TokenRecord is an access token as the index keeps it (k/<name>): only a
// hash of its secret, so that the index never holds one that signs in.
type TokenRecord struct {
	Name     string    `json:"name"`
	Owner    string    `json:"owner"`
	Hash     string    `json:"hash"` // the secret's hash (the gate's to make and check)
	Repos    []string  `json:"repos"`
	Actions  []string  `json:"actions"`
	Created  time.Time `json:"created"`
	Expires  time.Time `json:"expires,omitzero"`   // zero: never
	LastUsed time.Time `json:"last_used,omitzero"` // as of the last flush
}

// ErrTokenExists: a token of that name exists already.
var ErrTokenExists = errors.New("a token of that name exists")

func tokenKey(name string) []byte { return []byte("k/" + name) }

// tokenCache keeps the token records read (recordCache) and the last-use
// times not yet written.
type tokenCache struct {
	recordCache[TokenRecord]
	usesMu sync.Mutex
	uses   map[string]time.Time
}

// CreateToken stores a new token. Errors: ErrTokenExists.
func (s *Records) CreateToken(rec TokenRecord) error {
	val, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	err = s.update(func(txn Txn) error {
		if _, err := txn.Get(tokenKey(rec.Name)); err == nil {
			return ErrTokenExists
		} else if !errors.Is(err, errNotFound) {
			return err
		}
		return txn.Set(tokenKey(rec.Name), val)
	})
	s.tokens.forget(rec.Name)
	return err
}

// Token returns the token called name; ok is false when there is none.
func (s *Records) Token(name string) (rec TokenRecord, ok bool, err error) {
	return s.tokens.read(s.idx, name, tokenKey(name))
}

// Tokens lists every token, by name, with the last uses not yet written.
func (s *Records) Tokens() ([]TokenRecord, error) {
	out, err := scanRecords[TokenRecord](s.idx, "k/")
	s.tokens.usesMu.Lock()
	for i := range out {
		if t, ok := s.tokens.uses[out[i].Name]; ok && t.After(out[i].LastUsed) {
			out[i].LastUsed = t
		}
	}
	s.tokens.usesMu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, err
}

// RevokeToken deletes the token called name; false when there was none.
func (s *Records) RevokeToken(name string) (bool, error) {
	found := false
	err := s.release(func(txn Txn) error {
		_, err := txn.Get(tokenKey(name))
		if errors.Is(err, errNotFound) {
			return nil
		} else if err != nil {
			return err
		}
		found = true
		return txn.Delete(tokenKey(name))
	})
	s.tokens.forget(name)
	return found, err
}

// NoteTokenUse remembers that the token called name signed in at t; the
// next FlushTokenUses writes it (no index write per request).
func (s *Records) NoteTokenUse(name string, t time.Time) {
	s.tokens.usesMu.Lock()
	if s.tokens.uses == nil {
		s.tokens.uses = map[string]time.Time{}
	}
	if t.After(s.tokens.uses[name]) {
		s.tokens.uses[name] = t
	}
	s.tokens.usesMu.Unlock()
}

// FlushTokenUses writes the last uses noted since the last flush.
func (s *Records) FlushTokenUses() error {
	s.tokens.usesMu.Lock()
	uses := s.tokens.uses
	s.tokens.uses = nil
	s.tokens.usesMu.Unlock()
	for name, t := range uses {
		err := s.update(func(txn Txn) error {
			raw, err := txn.Get(tokenKey(name))
			if errors.Is(err, errNotFound) {
				return nil // revoked meanwhile
			} else if err != nil {
				return err
			}
			var rec TokenRecord
			if err := json.Unmarshal(raw, &rec); err != nil || !t.After(rec.LastUsed) {
				return err
			}
			rec.LastUsed = t
			val, err := json.Marshal(rec)
			if err != nil {
				return err
			}
			return txn.Set(tokenKey(name), val)
		})
		s.tokens.forget(name)
		if err != nil {
			s.NoteTokenUse(name, t) // kept for the next flush
			return err
		}
	}
	return nil
}
