package auth

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/wharf-registry/wharf/policy"
)

// AccessTokenPrefix starts every access token's secret: a password that
// starts with it is checked as a token (docker login -u NAME -p SECRET),
// never against the htpasswd file.
const AccessTokenPrefix = "wharf_"

// AccessToken is a token for robots and people: it signs in as its owner,
// narrowed to its scope, until it expires or is revoked.
type AccessToken struct {
	Name, Owner string
	Hash        string // HashAccessToken of the secret
	Scope       *policy.Scope
	Expires     time.Time // zero: never
}

// AccessTokens finds access tokens (kept in the index, so that a
// cluster's nodes share them and a revocation is seen by every node).
type AccessTokens interface {
	AccessToken(name string) (AccessToken, bool, error)
	// NoteUse records a sign-in, to be written later (not per request).
	NoteUse(name string, at time.Time)
}

// NewAccessTokenSecret makes a token's secret (shown once) and its hash
// (stored).
func NewAccessTokenSecret() (secret, hash string) {
	var b [32]byte
	rand.Read(b[:])
	secret = AccessTokenPrefix + base64.RawURLEncoding.EncodeToString(b[:])
	return secret, HashAccessToken(secret)
}

// HashAccessToken is what the index keeps of a secret. A secret has 256
// random bits, so a plain SHA-256 is as good as a slow hash here and costs
// a sign-in microseconds.
func HashAccessToken(secret string) string {
	sum := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(sum[:])
}

// ValidTokenName reports a token name Wharf accepts: 1–64 of a-z, 0-9, '.',
// '_' and '-', starting with a letter or digit.
func ValidTokenName(name string) bool {
	if name == "" || len(name) > 64 {
		return false
	}
	for i, c := range name {
		alnum := c >= 'a' && c <= 'z' || c >= '0' && c <= '9'
		if !alnum && (i == 0 || c != '.' && c != '_' && c != '-') {
			return false
		}
	}
	return true
}

// tokenCaller is the caller a valid access token signs in as: its owner,
// narrowed to its scope. secret is checked unless it is "" (a bearer token
// from the realm, which named the token when it was issued); gen, when not
// "", is the owner's credential generation the bearer token was issued at.
func (g *Gate) tokenCaller(name, secret, gen string, now time.Time) (Caller, bool) {
	src := g.opts.AccessTokens
	if src == nil || !g.signsIn() {
		return Caller{}, false
	}
	t, ok, err := src.AccessToken(name)
	if err != nil {
		g.log.Warn("reading an access token", "token", name, "err", err)
		return Caller{}, false
	}
	if !ok || (!t.Expires.IsZero() && !now.Before(t.Expires)) {
		return Caller{}, false
	}
	if secret != "" && subtle.ConstantTimeCompare([]byte(HashAccessToken(secret)), []byte(t.Hash)) != 1 {
		return Caller{}, false
	}
	ownerGen := g.Generation(t.Owner)
	if ownerGen == "" || (gen != "" && gen != ownerGen) { // the owner is gone, or changed password
		return Caller{}, false
	}
	groups, _ := g.current(t.Owner, ownerGen) // a directory owner's groups (the last known while it is down)
	src.NoteUse(name, now)
	return Caller{Subject: policy.Subject{User: t.Owner, Groups: groups, Scope: t.Scope}, TokenName: name}, true
}

// signInToken is SignIn for an access token: failures throttled and
// audited alike. A right secret is let in before the throttle is asked: it
// has 256 random bits, so it is no guess, and someone sending wrong ones
// under a robot's name does not lock the robot out.
func (g *Gate) signInToken(r *http.Request, name, secret string) (c Caller, ok bool, retry time.Duration) {
	ip, now := ClientIP(r), g.signins.now()
	if c, ok := g.tokenCaller(name, secret, "", now); ok {
		g.signins.succeeded(ip, name)
		return c, true, 0
	}
	if w := g.signins.wait(ip, name, now); w > 0 {
		g.AuditAs(r, name, "login", slog.Bool("ok", false), slog.String("reason", "throttled after failed sign-ins"), slog.Duration("retry_after", w))
		return Caller{}, false, w
	}
	backoff := g.signins.failed(ip, name, now)
	g.AuditAs(r, name, "login", slog.Bool("ok", false), slog.String("reason", "unknown, expired or revoked access token, or a wrong secret"), slog.Duration("backoff", backoff))
	return Caller{}, false, 0
}

// isTokenSecret reports a password that is an access token's secret.
func isTokenSecret(pass string) bool { return strings.HasPrefix(pass, AccessTokenPrefix) }
