package admin

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/wharf-registry/wharf/cache"

	"github.com/wharf-registry/wharf/mirror/auth"
	"github.com/wharf-registry/wharf/mirror/oci"
)

// PersonInfo is someone the identity provider signed in (single sign-on).
type PersonInfo struct {
	Name       string    `json:"name"`
	Subject    string    `json:"subject"`
	Issuer     string    `json:"issuer"`
	Groups     []string  `json:"groups"`
	FirstSeen  time.Time `json:"first_seen"`
	LastSignIn time.Time `json:"last_sign_in"`
	Tokens     int       `json:"tokens"` // the access tokens they own
}

// People lists who signed in through the identity provider, the latest
// first (registry admins).
func (ids *Identities) People(c auth.Caller) ([]PersonInfo, error) {
	if !ids.gate.Policy().RegistryAdmin(c.Subject) {
		return nil, oci.Errorf(oci.CodeDenied, "only a registry admin may list the people who signed in")
	}
	recs, err := ids.store.Records().People()
	if err != nil {
		return nil, err
	}
	tokens, err := ids.store.Records().Tokens()
	if err != nil {
		return nil, err
	}
	owned := map[string]int{}
	for _, t := range tokens {
		owned[t.Owner]++
	}
	out := make([]PersonInfo, 0, len(recs))
	for _, p := range recs {
		out = append(out, PersonInfo{Name: p.Name, Subject: p.Subject, Issuer: p.Issuer, Groups: p.Groups,
			FirstSeen: p.FirstSeen, LastSignIn: p.LastSignIn, Tokens: owned[p.Name]})
	}
	return out, nil
}

// ForgetPerson deletes the record of someone the identity provider signed
// in, and revokes their access tokens: their sessions and tokens stop at
// once on every node, and the name is free for the next account that
// signs in with it (registry admins). It returns the tokens revoked.
func (ids *Identities) ForgetPerson(c auth.Caller, name string) ([]string, error) {
	if !ids.gate.Policy().RegistryAdmin(c.Subject) || c.TokenName != "" {
		return nil, oci.Errorf(oci.CodeDenied, "only a registry admin, signed in with a password, may forget a person")
	}
	found, err := ids.store.Records().ForgetPerson(name)
	if err != nil {
		return nil, err
	}
	if !found {
		return nil, &oci.Error{Code: oci.CodeNameUnknown, Status: http.StatusNotFound, Message: "nobody called " + name + " signed in through the identity provider"}
	}
	return ids.revokeTokensOf(name)
}

// revokeTokensOf revokes the access tokens owner owns.
func (ids *Identities) revokeTokensOf(owner string) ([]string, error) {
	tokens, err := ids.store.Records().Tokens()
	if err != nil {
		return nil, err
	}
	revoked := []string{}
	for _, t := range tokens {
		if t.Owner == owner {
			if _, err := ids.store.Records().RevokeToken(t.Name); err != nil {
				return revoked, err
			}
			revoked = append(revoked, t.Name)
		}
	}
	return revoked, nil
}

// RecheckReport is what a recheck of the people found.
type RecheckReport struct {
	Checked, Gone, Skipped int
}

// RecheckPeople asks the identity provider, for each person not checked
// for every, whether they still sign in (their refresh token, as a sign-in
// would). Someone it refuses is forgotten and their tokens revoked (and
// audited); the others get the groups it gives now. A provider that does
// not answer stops the round (nobody is forgotten for it). On a cluster
// one node at a time rechecks: a refresh token may be used once.
func (ids *Identities) RecheckPeople(ctx context.Context, every time.Duration, now time.Time) (RecheckReport, error) {
	var rep RecheckReport
	release, ok, err := ids.store.Records().Claim("sso-recheck")
	if err != nil || !ok {
		return rep, err
	}
	defer release()
	people, err := ids.store.Records().People()
	if err != nil {
		return rep, err
	}
	for _, p := range people {
		if p.Refresh == "" || now.Sub(p.LastChecked) < every {
			continue
		}
		if ctx.Err() != nil {
			return rep, ctx.Err()
		}
		c, err := ids.gate.RecheckSSO(ctx, p.Subject, p.Refresh)
		if errors.Is(err, auth.ErrSealedElsewhere) {
			rep.Skipped++
			continue
		}
		if err != nil {
			return rep, err
		}
		rep.Checked++
		used, forgotten := p.Refresh, false
		_, err = ids.store.Records().ChangePerson(p.Name, func(rec *cache.PersonRecord) (write, del bool) {
			forgotten = false
			if rec.Refresh != used { // signed in again meanwhile: that sign-in holds
				return false, false
			}
			if c.Gone {
				forgotten = true
				return false, true
			}
			rec.Refresh, rec.LastChecked = c.Refresh, now
			if c.GroupsKnown {
				rec.Groups = c.Groups
			}
			return true, false
		})
		if err != nil {
			return rep, err
		}
		if forgotten {
			rep.Gone++
			revoked, err := ids.revokeTokensOf(p.Name)
			ids.gate.AuditAs(nil, p.Name, "person-gone", slog.String("subject", p.Subject),
				slog.String("reason", "the identity provider refused their refresh token"), slog.String("tokens_revoked", strings.Join(revoked, ",")))
			if err != nil {
				return rep, err
			}
		}
	}
	return rep, nil
}

// apiPeople serves /api/v1/people (GET: who signed in through the
// identity provider) and /api/v1/people/NAME (DELETE forgets them and
// revokes their tokens); registry admins only.
func (svc *Service) apiPeople(w http.ResponseWriter, r *http.Request, name string) error {
	c, err := svc.apiCaller(r)
	if err != nil {
		return err
	}
	if !svc.gate.Policy().RegistryAdmin(c.Subject) {
		return svc.apiDenied(r, c, "see or forget the people who signed in")
	}
	if name == "" {
		list, err := svc.ids.People(c)
		if err != nil {
			return err
		}
		return apiJSON(w, http.StatusOK, list)
	}
	revoked, err := svc.ids.ForgetPerson(c, name)
	if err != nil {
		return err
	}
	svc.gate.Audit(r, "person-forget", slog.String("person", name), slog.String("tokens_revoked", strings.Join(revoked, ",")))
	return apiJSON(w, http.StatusOK, map[string]any{"forgotten": name, "tokens_revoked": revoked})
}
