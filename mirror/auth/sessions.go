package auth

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"
)

// The console is the web face at "/": server-rendered pages (html/template,
// no JavaScript needed) over the same store, users and rules as the
// registry and the admin API. Who looks is decided per request:
//
//   - a session cookie (wharf_session: HttpOnly, SameSite=Strict, Secure
//     when the request came over TLS) from the sign-in form, checked
//     against the signer's key (shared by a cluster's nodes) and the
//     user's credential generation, so a new password or a removed user
//     ends its sessions at once;
//   - or HTTP Basic credentials, for scripts;
//   - or nobody (anonymous: what the registry lets anonymous callers see).
//
// Every state-changing form carries a CSRF token bound to the session (or,
// with Basic credentials, to the user and credential generation); a POST
// without the right one is refused with 403 whatever its credentials.
// Anonymous visitors get an anonymous session too, so that the sign-in
// form itself carries a token.
const (
	// SessionCookie is the console session cookie's name.
	SessionCookie = "wharf_session"
	sessionTTL    = 12 * time.Hour
)

// consoleSession is a session cookie's signed payload.
type consoleSession struct {
	User  string `json:"u,omitempty"` // "": anonymous
	Gen   string `json:"g,omitempty"`
	Exp   int64  `json:"e"`
	Nonce string `json:"n"`
}

// sessions signs session cookies and remembers those signed out: in
// memory, and in the index (so that a sign-out outlives a restart and
// reaches every node of a cluster).
type sessions struct {
	key     [32]byte
	mu      sync.Mutex
	revoked map[string]time.Time // nonce → expiry
	// store records and looks up sign-outs in the index; nil: memory only.
	store interface {
		Revoke(id string, until time.Time) error
		Revoked(id string) (bool, error)
	}
	log *slog.Logger
}

// revokedPrefix names console sessions among the index's revocations.
const revokedPrefix = "console-session/"

func newSessions(t *tokens) *sessions {
	s := &sessions{revoked: map[string]time.Time{}}
	s.key = sha256.Sum256(append([]byte("wharf console session\x00"), t.key[:]...)) // never valid as a bearer token
	return s
}

func (s *sessions) mac(parts ...string) string {
	m := hmac.New(sha256.New, s.key[:])
	m.Write([]byte(strings.Join(parts, "\x00")))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

func (s *sessions) issue(user, gen string, now time.Time) (string, consoleSession) {
	nonce := make([]byte, 18)
	rand.Read(nonce)
	sess := consoleSession{User: user, Gen: gen, Exp: now.Add(sessionTTL).Unix(), Nonce: base64.RawURLEncoding.EncodeToString(nonce)}
	payload, _ := json.Marshal(sess)
	p := base64.RawURLEncoding.EncodeToString(payload)
	return p + "." + s.mac("session", p), sess
}

func (s *sessions) check(cookie string, now time.Time) (consoleSession, bool) {
	var sess consoleSession
	p, sig, ok := strings.Cut(cookie, ".")
	if !ok || !hmac.Equal([]byte(sig), []byte(s.mac("session", p))) {
		return sess, false
	}
	payload, err := base64.RawURLEncoding.DecodeString(p)
	if err != nil || json.Unmarshal(payload, &sess) != nil || now.Unix() >= sess.Exp || sess.Nonce == "" {
		return sess, false
	}
	s.mu.Lock()
	_, gone := s.revoked[sess.Nonce]
	s.mu.Unlock()
	if gone || sess.User == "" || s.store == nil {
		return sess, !gone
	}
	// Signed out on another node, or before a restart? An index that
	// cannot answer does not sign everyone out (the console is how an
	// operator looks at an outage); a sign-out on this node is in memory.
	revoked, err := s.store.Revoked(revokedPrefix + sess.Nonce)
	if err != nil {
		s.log.Warn("console: looking up sign-outs in the index", "err", err)
		return sess, true
	}
	if revoked {
		s.mu.Lock()
		s.revoked[sess.Nonce] = time.Unix(sess.Exp, 0)
		s.mu.Unlock()
	}
	return sess, !revoked
}

// revoke ends a session (sign-out), here at once and through the index
// everywhere; expired entries go.
func (s *sessions) revoke(sess consoleSession, now time.Time) {
	s.mu.Lock()
	for n, exp := range s.revoked {
		if now.After(exp) {
			delete(s.revoked, n)
		}
	}
	s.revoked[sess.Nonce] = time.Unix(sess.Exp, 0)
	s.mu.Unlock()
	if s.store != nil {
		if err := s.store.Revoke(revokedPrefix+sess.Nonce, time.Unix(sess.Exp, 0)); err != nil {
			s.log.Warn("console: recording a sign-out in the index (it holds on this node until a restart)", "user", sess.User, "err", err)
		}
	}
}

// Viewer is who looks at a console page.
type Viewer struct {
	User     string        // "": anonymous
	Basic    bool          // signed in with Basic credentials (not the form)
	csrf     string        // the token every form of this viewer carries
	Throttle time.Duration // a throttled sign-in: retry after this
}

// Viewer resolves the console's visitor: valid Basic credentials, else a
// session cookie, else anonymous with a new anonymous session.
func (g *Gate) Viewer(w http.ResponseWriter, r *http.Request) Viewer {
	now := time.Now()
	if _, _, ok := r.BasicAuth(); ok {
		c := CallerOf(r)
		if c.User != "" {
			gen := g.Generation(c.User)
			return Viewer{User: c.User, Basic: true, csrf: g.sessions.mac("csrf-basic", c.User, gen)}
		}
		if c.Throttled > 0 {
			return Viewer{Throttle: c.Throttled}
		}
	}
	if ck, err := r.Cookie(SessionCookie); err == nil {
		if sess, ok := g.sessions.check(ck.Value, now); ok && (sess.User == "" || g.sessionValid(sess.User, sess.Gen)) {
			return Viewer{User: sess.User, csrf: g.sessions.mac("csrf", sess.Nonce)}
		}
	}
	value, sess := g.sessions.issue("", "", now)
	g.setSessionCookie(w, r, value, sess)
	return Viewer{csrf: g.sessions.mac("csrf", sess.Nonce)}
}

func (g *Gate) setSessionCookie(w http.ResponseWriter, r *http.Request, value string, sess consoleSession) {
	http.SetCookie(w, &http.Cookie{Name: SessionCookie, Value: value, Path: "/", Expires: time.Unix(sess.Exp, 0),
		HttpOnly: true, Secure: g.OverTLS(r), SameSite: http.SameSiteStrictMode})
}

// CSRFOK checks a state-changing form's token (constant time).
func (v Viewer) CSRFOK(r *http.Request) bool {
	got := r.PostFormValue("csrf")
	return got != "" && subtle.ConstantTimeCompare([]byte(got), []byte(v.csrf)) == 1
}

// CSRF is the token every form of this viewer carries.
func (v Viewer) CSRF() string { return v.csrf }

// StartSession signs user in to the console: a new session cookie.
func (g *Gate) StartSession(w http.ResponseWriter, r *http.Request, user string) {
	value, sess := g.sessions.issue(user, g.Generation(user), time.Now())
	g.setSessionCookie(w, r, value, sess)
}

// EndSession signs the console's visitor out, everywhere (the cookie is
// dropped and its session revoked); user is who it was ("" for none).
func (g *Gate) EndSession(w http.ResponseWriter, r *http.Request) (user string, ended bool) {
	if ck, err := r.Cookie(SessionCookie); err == nil {
		if sess, ok := g.sessions.check(ck.Value, time.Now()); ok {
			g.sessions.revoke(sess, time.Now())
			user, ended = sess.User, true
		}
	}
	http.SetCookie(w, &http.Cookie{Name: SessionCookie, Value: "", Path: "/", MaxAge: -1, HttpOnly: true, Secure: g.OverTLS(r), SameSite: http.SameSiteStrictMode})
	return user, ended
}

// sessionValid reports whether a session of user issued at credential
// generation gen still holds.
func (g *Gate) sessionValid(user, gen string) bool {
	if gen == "" {
		return false
	}
	_, ok := g.current(user, gen)
	return ok
}
