package cache

import (
	"encoding/json"
	"errors"
	"sort"
	"time"
)

// PersonRecord is someone who signed in through the identity provider
// (single sign-on): the name is bound to the provider's subject at the
// first sign-in, and the groups are those of the last one. Tokens the
// person made and console sessions hold while the record exists.
type PersonRecord struct {
	Name       string    `json:"name"`
	Subject    string    `json:"sub"`
	Issuer     string    `json:"iss"`
	Groups     []string  `json:"groups,omitempty"`
	FirstSeen  time.Time `json:"first_seen"`
	LastSignIn time.Time `json:"last_sign_in"`
	// Refresh is the provider's refresh token, sealed by the gate ("": the
	// provider gave none, and the person is not rechecked).
	Refresh     string    `json:"refresh,omitempty"`
	LastChecked time.Time `json:"last_checked,omitzero"` // the last sign-in or recheck
}

// ErrPersonElsewhere: the name is bound to another account at the
// identity provider.
var ErrPersonElsewhere = errors.New("the name belongs to another account at the identity provider")

func personKey(name string) []byte { return []byte("i/" + name) }

// RecordSignIn records a sign-in through the identity provider: a new
// record, or the groups and time of an existing one. Errors:
// ErrPersonElsewhere when the name is bound to another subject or issuer.
func (s *Records) RecordSignIn(rec PersonRecord) (PersonRecord, error) {
	err := s.update(func(txn Txn) error {
		raw, err := txn.Get(personKey(rec.Name))
		switch {
		case errors.Is(err, errNotFound):
			rec.FirstSeen = rec.LastSignIn
			rec.LastChecked = rec.LastSignIn
		case err != nil:
			return err
		default:
			var old PersonRecord
			if err := json.Unmarshal(raw, &old); err != nil {
				return err
			}
			if old.Subject != rec.Subject || old.Issuer != rec.Issuer {
				return ErrPersonElsewhere
			}
			rec.FirstSeen, rec.LastChecked = old.FirstSeen, rec.LastSignIn
		}
		val, err := json.Marshal(rec)
		if err != nil {
			return err
		}
		return txn.Set(personKey(rec.Name), val)
	})
	s.people.forget(rec.Name)
	return rec, err
}

// Person returns the person called name; ok is false when there is none.
func (s *Records) Person(name string) (PersonRecord, bool, error) {
	return s.people.read(s.idx, name, personKey(name))
}

// People lists everyone who signed in through the identity provider, the
// latest sign-in first.
func (s *Records) People() ([]PersonRecord, error) {
	out, err := scanRecords[PersonRecord](s.idx, "i/")
	sort.Slice(out, func(i, j int) bool { return out[i].LastSignIn.After(out[j].LastSignIn) })
	return out, err
}

// ForgetPerson deletes the record of name: the person's sessions and
// tokens stop at once, and the next sign-in binds the name anew. False
// when there was none.
func (s *Records) ForgetPerson(name string) (bool, error) {
	found := false
	err := s.release(func(txn Txn) error {
		_, err := txn.Get(personKey(name))
		if errors.Is(err, errNotFound) {
			return nil
		} else if err != nil {
			return err
		}
		found = true
		return txn.Delete(personKey(name))
	})
	s.people.forget(name)
	return found, err
}

// ChangePerson changes the record of name in one transaction: fn gets the
// record as it is now and says whether to write it back changed (write)
// or delete it (del). found is false when there is none.
func (s *Records) ChangePerson(name string, fn func(rec *PersonRecord) (write, del bool)) (found bool, err error) {
	err = s.release(func(txn Txn) error {
		found = false
		raw, err := txn.Get(personKey(name))
		if errors.Is(err, errNotFound) {
			return nil
		} else if err != nil {
			return err
		}
		found = true
		var rec PersonRecord
		if err := json.Unmarshal(raw, &rec); err != nil {
			return err
		}
		write, del := fn(&rec)
		switch {
		case del:
			return txn.Delete(personKey(name))
		case write:
			val, err := json.Marshal(rec)
			if err != nil {
				return err
			}
			return txn.Set(personKey(name), val)
		}
		return nil
	})
	s.people.forget(name)
	return found, err
}
