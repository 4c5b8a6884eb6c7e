package auth

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"strings"
	"time"
)

// Single sign-on: people sign in to the console through the company's
// identity provider (OpenID Connect). The console sends the browser to the
// provider with a state, a nonce and a PKCE challenge kept in a short-lived
// signed cookie (wharf_sso, SameSite=Lax so that it comes back with the
// provider's redirect); the callback checks the state, redeems the code,
// and starts a console session as usual. The person's name is bound to the
// provider's account (subject) at the first sign-in and recorded in the
// index with the groups of the last sign-in: that record is what their
// sessions and the access tokens they make sign in as, on every node, until
// an admin forgets it. A name the htpasswd file or the directory holds
// cannot be taken this way (those people sign in with their password).

// SingleSignOn is the identity provider (package policy/oidc).
type SingleSignOn interface {
	// AuthURL is where the browser signs in.
	AuthURL(ctx context.Context, state, nonce, verifier string) (string, error)
	// Exchange redeems the code the provider sent back.
	Exchange(ctx context.Context, code, verifier, nonce string) (Identity, error)
	// Recheck redeems a person's refresh token: their groups (known is
	// false when the answer has none) and the token to keep ("": the same).
	Recheck(ctx context.Context, refresh, subject string) (groups []string, known bool, next string, err error)
	// Unavailable reports an error that means the provider did not answer;
	// Gone one that means it refused the person's refresh token.
	Unavailable(err error) bool
	Gone(err error) bool
	String() string // the issuer
}

// Identity is who the provider says signed in.
type Identity struct {
	Name, Subject string
	Groups        []string
	// Refresh is the provider's refresh token; People receive it sealed
	// (SealedRefresh), never in the clear.
	Refresh string
}

// People records who signed in through the provider (the index, shared by
// a cluster's nodes).
type People interface {
	// Person is a recorded person's groups and provider account
	// (subject); ok is false for a name never recorded (or forgotten).
	Person(name string) (groups []string, subject string, ok bool, err error)
	// RecordSignIn records a sign-in; ErrPersonElsewhere when the name is
	// bound to another account at the provider.
	RecordSignIn(id Identity, issuer string, at time.Time) error
}

// ErrPersonElsewhere: the name is another account's at the provider.
var ErrPersonElsewhere = errors.New("the name is bound to another account at the identity provider")

// ssoGenPrefix starts the credential generation of a person signed in
// through the provider: "sso:" and a hash of their account at the provider,
// so that their sessions and tokens hold while the record exists and never
// pass to another account that takes the name after it was forgotten.
const ssoGenPrefix = "sso:"

func ssoGen(subject string) string {
	sum := sha256.Sum256([]byte(subject))
	return ssoGenPrefix + hex.EncodeToString(sum[:8])
}

// ssoCookie carries a sign-in under way; ssoTTL bounds it.
const (
	ssoCookie = "wharf_sso"
	ssoTTL    = 10 * time.Minute
)

// ssoPending is the signed payload of ssoCookie.
type ssoPending struct {
	State    string `json:"s"`
	Nonce    string `json:"n"`
	Verifier string `json:"v"`
	Next     string `json:"x"`
	Exp      int64  `json:"e"`
}

// SSO names the identity provider ("" when there is none).
func (g *Gate) SSO() string {
	if g.opts.SSO == nil {
		return ""
	}
	return g.opts.SSO.String()
}

func randomString(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// SSOError is a refused or failed sign-in through the provider: the
// status and what the person is told.
type SSOError struct {
	Status  int
	Message string
}

func (e *SSOError) Error() string { return e.Message }

// BeginSSO starts a sign-in through the provider: the URL to send the
// browser to, and the pending sign-in's cookie. next is where the console
// goes afterwards (already checked to stay on this site).
func (g *Gate) BeginSSO(w http.ResponseWriter, r *http.Request, next string) (string, error) {
	if g.opts.SSO == nil {
		return "", &SSOError{http.StatusNotFound, "Single sign-on is not set up (--oidc-issuer)."}
	}
	p := ssoPending{State: randomString(24), Nonce: randomString(24), Verifier: randomString(48), Next: next,
		Exp: time.Now().Add(ssoTTL).Unix()}
	to, err := g.opts.SSO.AuthURL(r.Context(), p.State, p.Nonce, p.Verifier)
	if err != nil {
		g.log.Warn("single sign-on: the identity provider does not answer", "issuer", g.SSO(), "err", err)
		return "", &SSOError{http.StatusServiceUnavailable, "Single sign-on is unavailable: the identity provider " + g.SSO() + " does not answer. Try again later, or sign in with a password."}
	}
	payload, _ := json.Marshal(p)
	v := base64.RawURLEncoding.EncodeToString(payload)
	http.SetCookie(w, &http.Cookie{Name: ssoCookie, Value: v + "." + g.sessions.mac("sso", v), Path: "/signin/sso",
		MaxAge: int(ssoTTL / time.Second), HttpOnly: true, Secure: g.OverTLS(r), SameSite: http.SameSiteLaxMode})
	return to, nil
}

// pendingSSO reads and drops the pending sign-in's cookie.
func (g *Gate) pendingSSO(w http.ResponseWriter, r *http.Request) (ssoPending, bool) {
	var p ssoPending
	http.SetCookie(w, &http.Cookie{Name: ssoCookie, Value: "", Path: "/signin/sso", MaxAge: -1, HttpOnly: true,
		Secure: g.OverTLS(r), SameSite: http.SameSiteLaxMode})
	ck, err := r.Cookie(ssoCookie)
	if err != nil {
		return p, false
	}
	v, sig, ok := strings.Cut(ck.Value, ".")
	if !ok || !hmac.Equal([]byte(sig), []byte(g.sessions.mac("sso", v))) {
		return p, false
	}
	raw, err := base64.RawURLEncoding.DecodeString(v)
	if err != nil || json.Unmarshal(raw, &p) != nil || time.Now().Unix() >= p.Exp || p.State == "" {
		return p, false
	}
	return p, true
}

// FinishSSO completes a sign-in through the provider (its redirect back):
// on success the person has a console session, and next is where to go.
func (g *Gate) FinishSSO(w http.ResponseWriter, r *http.Request) (user, next string, err error) {
	if g.opts.SSO == nil || g.opts.People == nil {
		return "", "", &SSOError{http.StatusNotFound, "Single sign-on is not set up (--oidc-issuer)."}
	}
	q := r.URL.Query()
	p, ok := g.pendingSSO(w, r)
	if !ok || !hmac.Equal([]byte(q.Get("state")), []byte(p.State)) {
		g.AuditAs(r, "", "login", slog.Bool("ok", false), slog.String("via", "sso"), slog.String("reason", "no sign-in under way in this browser, or another one's state"))
		return "", "", &SSOError{http.StatusBadRequest, "This sign-in was not started in this browser, or took longer than 10 minutes. Start again."}
	}
	if e := q.Get("error"); e != "" {
		g.AuditAs(r, "", "login", slog.Bool("ok", false), slog.String("via", "sso"), slog.String("reason", "the provider refused: "+e+" "+q.Get("error_description")))
		why := e
		if d := q.Get("error_description"); d != "" {
			why += ": " + d
		}
		msg := "The identity provider did not sign you in (" + why + "). Start again."
		if e == "invalid_scope" {
			msg = "The identity provider refused the scopes Wharf asks for (" + q.Get("error_description") + "): allow them for Wharf's client there, or change --oidc-scopes (without offline_access people are not rechecked)."
		}
		return "", "", &SSOError{http.StatusForbidden, msg}
	}
	id, err := g.opts.SSO.Exchange(r.Context(), q.Get("code"), p.Verifier, p.Nonce)
	if err != nil {
		if g.opts.SSO.Unavailable(err) {
			g.log.Warn("single sign-on: the identity provider does not answer", "issuer", g.SSO(), "err", err)
			return "", "", &SSOError{http.StatusServiceUnavailable, "Single sign-on is unavailable: the identity provider " + g.SSO() + " does not answer. Try again later."}
		}
		g.AuditAs(r, "", "login", slog.Bool("ok", false), slog.String("via", "sso"), slog.String("reason", err.Error()))
		return "", "", &SSOError{http.StatusForbidden, "The sign-in was refused: " + err.Error()}
	}
	refuse := func(reason, message string) (string, string, error) {
		g.AuditAs(r, id.Name, "login", slog.Bool("ok", false), slog.String("via", "sso"), slog.String("subject", id.Subject), slog.String("reason", reason))
		return "", "", &SSOError{http.StatusForbidden, message}
	}
	if users := g.Users(); users != nil && users.Generation(id.Name) != "" {
		return refuse("the htpasswd file holds the name", id.Name+" is a local user: sign in with the password form.")
	}
	if dir := g.opts.Directory; dir != nil {
		if _, known, _ := dir.Groups(id.Name); known {
			return refuse("the directory holds the name", id.Name+" is a directory user: sign in with the password form.")
		}
	}
	if id.Refresh != "" {
		id.Refresh = g.seal(id.Refresh)
	}
	if err := g.opts.People.RecordSignIn(id, g.SSO(), time.Now()); err != nil {
		if errors.Is(err, ErrPersonElsewhere) {
			return refuse("the name is bound to another account at the provider",
				"The name "+id.Name+" belongs to another account at the identity provider. An admin can forget the old one on the Users page.")
		}
		g.log.Warn("single sign-on: recording the sign-in", "user", id.Name, "err", err)
		return "", "", &SSOError{http.StatusServiceUnavailable, "The sign-in could not be recorded (" + err.Error() + "). Try again later."}
	}
	g.StartSession(w, r, id.Name)
	g.AuditAs(r, id.Name, "login", slog.Bool("ok", true), slog.String("via", "sso"), slog.String("subject", id.Subject),
		slog.String("groups", strings.Join(id.Groups, ",")))
	return id.Name, p.Next, nil
}

// ssoPerson is a recorded person's groups and credential generation; ok
// is false for someone the provider never signed in (or forgotten).
func (g *Gate) ssoPerson(user string) (groups []string, gen string, ok bool) {
	if g.opts.People == nil || g.opts.SSO == nil || user == "" {
		return nil, "", false
	}
	groups, subject, ok, err := g.opts.People.Person(user)
	if err != nil {
		g.log.Warn("single sign-on: reading a person's record", "user", user, "err", err)
		return nil, "", false
	}
	if !ok {
		return nil, "", false
	}
	return groups, ssoGen(subject), true
}

// The refresh tokens the index keeps are sealed (AES-256-GCM) with a key
// derived from the token key: a copy of the index alone does not sign
// anyone in at the provider. Nodes that share the token key unseal each
// other's; a process with its own random key cannot unseal earlier ones
// (those people are rechecked again after their next sign-in).
func (g *Gate) sealer() cipher.AEAD {
	key := sha256.Sum256(append([]byte("wharf sso refresh token\x00"), g.tokens.key[:]...))
	block, _ := aes.NewCipher(key[:])
	aead, _ := cipher.NewGCM(block)
	return aead
}

func (g *Gate) seal(plain string) string {
	aead := g.sealer()
	nonce := make([]byte, aead.NonceSize())
	rand.Read(nonce)
	return base64.RawURLEncoding.EncodeToString(aead.Seal(nonce, nonce, []byte(plain), []byte("refresh")))
}

func (g *Gate) unseal(sealed string) (string, bool) {
	raw, err := base64.RawURLEncoding.DecodeString(sealed)
	aead := g.sealer()
	if err != nil || len(raw) < aead.NonceSize() {
		return "", false
	}
	plain, err := aead.Open(nil, raw[:aead.NonceSize()], raw[aead.NonceSize():], []byte("refresh"))
	return string(plain), err == nil
}

// SSOCheck is what a recheck of a person found.
type SSOCheck struct {
	Gone        bool     // the provider refused the person: forget them
	Groups      []string // their groups now, when GroupsKnown
	GroupsKnown bool
	Refresh     string // the sealed refresh token to keep
}

// ErrSealedElsewhere: a refresh token sealed with another token key (a
// restart without --token-key-file): it cannot be used.
var ErrSealedElsewhere = errors.New("the refresh token was sealed with another token key (set --token-key-file so that it outlives restarts)")

// RecheckSSO asks the provider whether the person with this (sealed)
// refresh token and subject still signs in. An error means nobody could
// say (the provider did not answer, or the token cannot be unsealed).
func (g *Gate) RecheckSSO(ctx context.Context, subject, sealed string) (SSOCheck, error) {
	if g.opts.SSO == nil {
		return SSOCheck{}, errors.New("single sign-on is not set up")
	}
	refresh, ok := g.unseal(sealed)
	if !ok {
		return SSOCheck{}, ErrSealedElsewhere
	}
	groups, known, next, err := g.opts.SSO.Recheck(ctx, refresh, subject)
	switch {
	case err != nil && g.opts.SSO.Gone(err):
		return SSOCheck{Gone: true}, nil
	case err != nil:
		return SSOCheck{}, err
	}
	c := SSOCheck{Groups: groups, GroupsKnown: known, Refresh: sealed}
	if next != "" {
		c.Refresh = g.seal(next)
	}
	return c, nil
}
