package mirror

import (
	"errors"
	"slices"
	"sync"
	"time"

	"github.com/wharf-registry/wharf/cache"
	"github.com/wharf-registry/wharf/mirror/auth"
	"github.com/wharf-registry/wharf/policy"
)

// accessTokens is the gate's view of the access tokens the store keeps,
// with each token's scope compiled once.
type accessTokens struct {
	records *cache.Records
	mu      sync.Mutex
	scopes  map[string]*policy.Scope // by name, for the record it was made from
	from    map[string]cache.TokenRecord
}

func (a *accessTokens) AccessToken(name string) (auth.AccessToken, bool, error) {
	rec, ok, err := a.records.Token(name)
	if err != nil || !ok {
		return auth.AccessToken{}, false, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	sc := a.scopes[name]
	if prev := a.from[name]; sc == nil || prev.Hash != rec.Hash || !slices.Equal(prev.Repos, rec.Repos) || !slices.Equal(prev.Actions, rec.Actions) {
		actions := make([]policy.Action, len(rec.Actions))
		for i, s := range rec.Actions {
			actions[i] = policy.Action(s)
		}
		if sc, err = policy.NewScope(rec.Repos, actions); err != nil {
			return auth.AccessToken{}, false, err
		}
		if a.scopes == nil {
			a.scopes, a.from = map[string]*policy.Scope{}, map[string]cache.TokenRecord{}
		}
		a.scopes[name], a.from[name] = sc, rec
	}
	return auth.AccessToken{Name: rec.Name, Owner: rec.Owner, Hash: rec.Hash, Scope: sc, Expires: rec.Expires}, true, nil
}

func (a *accessTokens) NoteUse(name string, at time.Time) { a.records.NoteTokenUse(name, at) }

// people is the gate's view of the people the identity provider signed
// in, as the store records them.
type people struct{ records *cache.Records }

func (p people) Person(name string) ([]string, string, bool, error) {
	rec, ok, err := p.records.Person(name)
	return rec.Groups, rec.Issuer + "\x00" + rec.Subject, ok, err
}

func (p people) RecordSignIn(id auth.Identity, issuer string, at time.Time) error {
	_, err := p.records.RecordSignIn(cache.PersonRecord{Name: id.Name, Subject: id.Subject, Issuer: issuer, Groups: id.Groups, Refresh: id.Refresh, LastSignIn: at.UTC()})
	if errors.Is(err, cache.ErrPersonElsewhere) {
		return auth.ErrPersonElsewhere
	}
	return err
}
