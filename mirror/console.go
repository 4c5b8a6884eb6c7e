package mirror

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/url"
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
	sessionCookie = "wharf_session"
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

// viewer is who looks at a console page.
type viewer struct {
	User     string // "": anonymous
	Basic    bool   // signed in with Basic credentials (not the form)
	csrf     string // the token every form of this viewer carries
	throttle time.Duration
}

// viewer resolves the console's visitor: valid Basic credentials, else a
// session cookie, else anonymous with a new anonymous session.
func (reg *Registry) viewer(w http.ResponseWriter, r *http.Request) viewer {
	now := time.Now()
	if _, _, ok := r.BasicAuth(); ok {
		c := callerOf(r)
		if c.User != "" {
			gen := reg.generation(c.User)
			return viewer{User: c.User, Basic: true, csrf: reg.sessions.mac("csrf-basic", c.User, gen)}
		}
		if c.throttled > 0 {
			return viewer{throttle: c.throttled}
		}
	}
	if ck, err := r.Cookie(sessionCookie); err == nil {
		if sess, ok := reg.sessions.check(ck.Value, now); ok && (sess.User == "" || reg.generation(sess.User) == sess.Gen && sess.Gen != "") {
			return viewer{User: sess.User, csrf: reg.sessions.mac("csrf", sess.Nonce)}
		}
	}
	value, sess := reg.sessions.issue("", "", now)
	reg.setSessionCookie(w, r, value, sess)
	return viewer{csrf: reg.sessions.mac("csrf", sess.Nonce)}
}

func (reg *Registry) generation(user string) string {
	if users := reg.access.Load().users; users != nil {
		return users.Generation(user)
	}
	return ""
}

func (reg *Registry) setSessionCookie(w http.ResponseWriter, r *http.Request, value string, sess consoleSession) {
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: value, Path: "/", Expires: time.Unix(sess.Exp, 0),
		HttpOnly: true, Secure: reg.overTLS(r), SameSite: http.SameSiteStrictMode})
}

// overTLS reports that the client reached this server over TLS (directly,
// or through a trusted proxy that said so).
func (reg *Registry) overTLS(r *http.Request) bool {
	return strings.HasPrefix(reg.externalBase(r), "https://")
}

// csrfOK checks a state-changing form's token (constant time).
func (v viewer) csrfOK(r *http.Request) bool {
	got := r.PostFormValue("csrf")
	return got != "" && subtle.ConstantTimeCompare([]byte(got), []byte(v.csrf)) == 1
}

// consolePaths are the console's pages (besides "/").
var consolePaths = []string{"/signin", "/signout", "/repositories", "/gc", "/upstreams", "/users", "/audit"}

// isConsolePath reports whether path is one of the console's pages.
func isConsolePath(path string) bool {
	if path == "/" || strings.HasPrefix(path, "/repositories/") {
		return true
	}
	for _, p := range consolePaths {
		if path == p {
			return true
		}
	}
	return false
}

// serveConsole answers a console page.
func (reg *Registry) serveConsole(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Cache-Control", "no-store")
	h.Set("X-Frame-Options", "DENY")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "same-origin")
	h.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
	if r.Method != http.MethodGet && r.Method != http.MethodHead && r.Method != http.MethodPost {
		h.Set("Allow", "GET, HEAD, POST")
		reg.consoleError(w, r, viewer{}, http.StatusMethodNotAllowed, "This page takes GET and POST only.")
		return
	}
	v := reg.viewer(w, r)
	if v.throttle > 0 {
		h.Set("Retry-After", retryAfterSeconds(v.throttle))
		reg.consoleError(w, r, v, http.StatusTooManyRequests, "Too many failed sign-ins from here; try again later.")
		return
	}
	if r.Method == http.MethodPost {
		r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
		if !v.csrfOK(r) || crossSite(r) {
			reg.audit(r, "denied", slog.String("console", r.Method+" "+r.URL.Path), slog.String("reason", "no valid CSRF token"))
			reg.consoleError(w, r, v, http.StatusForbidden, "This form was refused: its security token is missing or stale. Reload the page and try again.")
			return
		}
	}
	path := r.URL.Path
	switch {
	case path == "/":
		reg.pageOverview(w, r, v)
	case path == "/signin":
		reg.pageSignin(w, r, v)
	case path == "/signout" && r.Method == http.MethodPost:
		reg.signout(w, r)
	case path == "/repositories":
		reg.pageRepositories(w, r, v)
	case strings.HasPrefix(path, "/repositories/"):
		reg.pageRepository(w, r, v, strings.TrimPrefix(path, "/repositories/"))
	case path == "/gc":
		reg.pageGC(w, r, v)
	case path == "/upstreams":
		reg.pageUpstreams(w, r, v)
	case path == "/users":
		reg.pageUsers(w, r, v)
	case path == "/audit":
		reg.pageAudit(w, r, v)
	default:
		reg.consoleError(w, r, v, http.StatusNotFound, "No such page.")
	}
}

// crossSite reports a request a browser marked as coming from another
// site (a form elsewhere posting here with the user's Basic credentials).
func crossSite(r *http.Request) bool {
	if s := r.Header.Get("Sec-Fetch-Site"); s == "cross-site" || s == "same-site" {
		return true
	}
	if o := r.Header.Get("Origin"); o != "" && o != "null" {
		u, err := url.Parse(o)
		return err != nil || u.Host != r.Host
	}
	return false
}

// pageSignin shows the sign-in form and signs in with it.
func (reg *Registry) pageSignin(w http.ResponseWriter, r *http.Request, v viewer) {
	next := safeNext(r.FormValue("next"))
	p := reg.newPage(r, v, "Sign in")
	p.Data = map[string]any{"Next": next, "NoUsers": !reg.authRequired()}
	if r.Method != http.MethodPost {
		reg.render(w, http.StatusOK, "signin", p)
		return
	}
	user, pass := r.PostFormValue("user"), r.PostFormValue("password")
	ok, retry := reg.signIn(r, user, pass)
	switch {
	case ok:
		value, sess := reg.sessions.issue(user, reg.generation(user), time.Now())
		reg.setSessionCookie(w, r, value, sess)
		reg.auditAs(r, user, "login", slog.Bool("ok", true), slog.String("via", "console"))
		http.Redirect(w, r, next, http.StatusSeeOther)
	case retry > 0:
		w.Header().Set("Retry-After", retryAfterSeconds(retry))
		p.Flash = "Too many failed sign-ins; try again in " + retry.Round(time.Second).String() + "."
		reg.render(w, http.StatusTooManyRequests, "signin", p)
	default:
		p.Flash = "Wrong user name or password."
		reg.render(w, http.StatusUnauthorized, "signin", p)
	}
}

// safeNext keeps a redirect after sign-in on this site: a path of its
// own, nothing a browser could read as another host. Browsers drop TAB, CR
// and LF anywhere in a URL and read a backslash as a slash, so
// "/\t/evil.example" or "/\\evil.example" would be "//evil.example": any
// control character or backslash is refused, and so is a path that
// decodes to "//" (an encoded slash) or names a scheme or host.
func safeNext(next string) string {
	for _, c := range next {
		if c < 0x20 || c == 0x7f || c == '\\' {
			return "/"
		}
	}
	if !strings.HasPrefix(next, "/") || strings.HasPrefix(next, "//") {
		return "/"
	}
	u, err := url.Parse(next)
	if err != nil || u.Scheme != "" || u.Host != "" || u.User != nil || u.Opaque != "" ||
		!strings.HasPrefix(u.Path, "/") || strings.HasPrefix(u.Path, "//") || strings.Contains(u.Path, "\\") {
		return "/"
	}
	return next
}

func (reg *Registry) signout(w http.ResponseWriter, r *http.Request) {
	if ck, err := r.Cookie(sessionCookie); err == nil {
		if sess, ok := reg.sessions.check(ck.Value, time.Now()); ok {
			reg.sessions.revoke(sess, time.Now())
			reg.auditAs(r, sess.User, "logout", slog.String("via", "console"))
		}
	}
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: "", Path: "/", MaxAge: -1, HttpOnly: true, Secure: reg.overTLS(r), SameSite: http.SameSiteStrictMode})
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

// needAdmin sends anonymous visitors to sign in and refuses others who are
// not registry admins; it reports whether the page may go on.
func (reg *Registry) needAdmin(w http.ResponseWriter, r *http.Request, v viewer) bool {
	if reg.policy().RegistryAdmin(reg.subject(v)) {
		return true
	}
	if v.User == "" {
		http.Redirect(w, r, "/signin?next="+url.QueryEscape(r.URL.RequestURI()), http.StatusSeeOther)
		return false
	}
	reg.consoleError(w, r, v, http.StatusForbidden, v.User+" may not see this page: it needs the admin action on every repository (\"**\").")
	return false
}
