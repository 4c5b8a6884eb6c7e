package admin

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/wharf-registry/wharf/cache"
	"github.com/wharf-registry/wharf/mirror/auth"
	"github.com/wharf-registry/wharf/mirror/oci"
	"github.com/wharf-registry/wharf/policy"
)

// TokenInfo is an access token as the API and the console show it. Secret
// is set once, in the answer to its creation.
type TokenInfo struct {
	Name     string     `json:"name"`
	Owner    string     `json:"owner"`
	Repos    []string   `json:"repos"`
	Actions  []string   `json:"actions"`
	Created  time.Time  `json:"created"`
	Expires  *time.Time `json:"expires,omitempty"`
	LastUsed *time.Time `json:"last_used,omitempty"`
	Secret   string     `json:"secret,omitempty"`
}

// TokenRequest is what a creation asks for; Expires is a duration ("90d",
// "12h") or empty for a token that never expires.
type TokenRequest struct {
	Name    string   `json:"name"`
	Repos   []string `json:"repos"`
	Actions []string `json:"actions"`
	Expires string   `json:"expires"`
}

// errTokenCaller: tokens are made by people, not by other tokens.
var errTokenCaller = oci.Errorf(oci.CodeDenied, "an access token may not create or revoke tokens: sign in with a password")

func badRequest(format string, args ...any) error {
	return &oci.Error{Code: oci.CodeUnsupported, Status: http.StatusBadRequest, Message: fmt.Sprintf(format, args...)}
}

// ParseExpiry reads "90d", "12h", "30m" (days as well as Go durations).
func ParseExpiry(s string) (time.Duration, error) {
	if s == "" || s == "never" {
		return 0, nil
	}
	d, err := policy.ParseDays(s)
	if err != nil {
		return 0, fmt.Errorf("expiry %w", err)
	}
	return d, nil
}

// CreateToken makes an access token owned by c, the person signed in. Its
// secret is in the answer only.
func (ids *Identities) CreateToken(c auth.Caller, req TokenRequest) (TokenInfo, error) {
	switch {
	case c.TokenName != "":
		return TokenInfo{}, errTokenCaller
	case c.User == "":
		return TokenInfo{}, &oci.Error{Code: oci.CodeUnauthorized, Message: "sign in to create an access token (tokens sign in as their owner)", Challenge: `Basic realm="Wharf admin API"`}
	case !auth.ValidTokenName(req.Name):
		return TokenInfo{}, badRequest("token name %q: 1 to 64 of a-z, 0-9, '.', '_', '-', starting with a letter or digit", req.Name)
	}
	actions := make([]policy.Action, 0, len(req.Actions))
	for _, a := range req.Actions {
		actions = append(actions, policy.Action(strings.TrimSpace(a)))
	}
	if _, err := policy.NewScope(req.Repos, actions); err != nil {
		return TokenInfo{}, badRequest("token scope: %v", err)
	}
	ttl, err := ParseExpiry(req.Expires)
	if err != nil {
		return TokenInfo{}, badRequest("%v", err)
	}
	secret, hash := auth.NewAccessTokenSecret()
	now := time.Now().UTC().Truncate(time.Second)
	rec := cache.TokenRecord{Name: req.Name, Owner: c.User, Hash: hash, Repos: req.Repos, Actions: req.Actions, Created: now}
	if ttl > 0 {
		rec.Expires = now.Add(ttl)
	}
	if err := ids.store.Records().CreateToken(rec); errors.Is(err, cache.ErrTokenExists) {
		return TokenInfo{}, &oci.Error{Code: oci.CodeDenied, Status: http.StatusConflict, Message: "a token called " + req.Name + " exists: revoke it first, or choose another name"}
	} else if err != nil {
		return TokenInfo{}, err
	}
	ti := tokenInfo(rec)
	ti.Secret = secret
	return ti, nil
}

// Tokens lists the tokens c may see: a registry admin's, all; anyone
// else's, their own.
func (ids *Identities) Tokens(c auth.Caller) ([]TokenInfo, error) {
	recs, err := ids.store.Records().Tokens()
	if err != nil {
		return nil, err
	}
	all := ids.gate.Policy().RegistryAdmin(c.Subject)
	out := []TokenInfo{}
	for _, rec := range recs {
		if all || (c.User != "" && rec.Owner == c.User) {
			out = append(out, tokenInfo(rec))
		}
	}
	return out, nil
}

// RevokeToken deletes the token called name: its owner or a registry
// admin may. Every node refuses it from then on.
func (ids *Identities) RevokeToken(c auth.Caller, name string) error {
	if c.TokenName != "" {
		return errTokenCaller
	}
	rec, ok, err := ids.store.Records().Token(name)
	if err != nil {
		return err
	}
	if !ok || (rec.Owner != c.User && !ids.gate.Policy().RegistryAdmin(c.Subject)) {
		// Someone else's token is as unknown as a missing one.
		return &oci.Error{Code: oci.CodeNameUnknown, Status: http.StatusNotFound, Message: "no token called " + name + " that you may revoke"}
	}
	_, err = ids.store.Records().RevokeToken(name)
	return err
}

func tokenInfo(rec cache.TokenRecord) TokenInfo {
	ti := TokenInfo{Name: rec.Name, Owner: rec.Owner, Repos: rec.Repos, Actions: rec.Actions, Created: rec.Created}
	if !rec.Expires.IsZero() {
		e := rec.Expires
		ti.Expires = &e
	}
	if !rec.LastUsed.IsZero() {
		u := rec.LastUsed
		ti.LastUsed = &u
	}
	return ti
}

// apiTokens serves /api/v1/tokens (GET the list, POST a new one) and
// /api/v1/tokens/NAME (DELETE revokes).
func (svc *Service) apiTokens(w http.ResponseWriter, r *http.Request, name string) error {
	c, err := svc.apiCaller(r)
	if err != nil {
		return err
	}
	switch {
	case name == "" && r.Method == http.MethodGet:
		if c.User == "" && !svc.gate.Policy().Open() {
			return svc.apiDenied(r, c, "list access tokens")
		}
		list, err := svc.ids.Tokens(c)
		if err != nil {
			return err
		}
		return apiJSON(w, http.StatusOK, list)
	case name == "" && r.Method == http.MethodPost:
		var req TokenRequest
		if err := json.NewDecoder(io.LimitReader(r.Body, 64<<10)).Decode(&req); err != nil {
			return badRequest("a token request is JSON: {\"name\":…,\"repos\":[…],\"actions\":[…],\"expires\":\"90d\"}: %v", err)
		}
		ti, err := svc.ids.CreateToken(c, req)
		if err != nil {
			return err
		}
		svc.gate.Audit(r, "token-create", slog.String("token", ti.Name), slog.String("repos", strings.Join(ti.Repos, ",")),
			slog.String("actions", strings.Join(ti.Actions, ",")), slog.String("expires", req.Expires))
		return apiJSON(w, http.StatusCreated, ti)
	case name != "" && r.Method == http.MethodDelete:
		if err := svc.ids.RevokeToken(c, name); err != nil {
			return err
		}
		svc.gate.Audit(r, "token-revoke", slog.String("token", name))
		w.WriteHeader(http.StatusNoContent)
		return nil
	}
	return &oci.Error{Code: oci.CodeUnsupported, Status: http.StatusMethodNotAllowed, Message: r.Method + " " + r.URL.Path + " is not supported"}
}
