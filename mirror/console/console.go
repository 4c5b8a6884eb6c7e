// Package console is Wharf's web face at "/": server-rendered pages
// (html/template, no script) over the operator plane's services (package
// admin) and the same callers, users and rules as the registry (package
// auth). It never touches the data plane.
package console

import (
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/wharf-registry/wharf/mirror/admin"
	"github.com/wharf-registry/wharf/mirror/auth"
)

// Paths are the console's pages, and Prefixes the trees of pages under
// one (a repository's page).
var (
	Paths    = []string{"/", "/signin", "/signin/sso", "/signin/sso/callback", "/signout", "/repositories", "/gc", "/retention", "/upstreams", "/users", "/tokens", "/audit"}
	Prefixes = []string{"/repositories/"}
)

// ServeHTTP answers a console page.
func (c *Console) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Cache-Control", "no-store")
	h.Set("X-Frame-Options", "DENY")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "same-origin")
	h.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
	if r.Method != http.MethodGet && r.Method != http.MethodHead && r.Method != http.MethodPost {
		h.Set("Allow", "GET, HEAD, POST")
		c.consoleError(w, r, auth.Viewer{}, http.StatusMethodNotAllowed, "This page takes GET and POST only.")
		return
	}
	v := c.gate.Viewer(w, r)
	if v.Throttle > 0 {
		h.Set("Retry-After", retryAfterSeconds(v.Throttle))
		c.consoleError(w, r, v, http.StatusTooManyRequests, "Too many failed sign-ins from here; try again later.")
		return
	}
	if r.Method == http.MethodPost {
		r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
		if !v.CSRFOK(r) || auth.CrossSite(r) {
			c.gate.Audit(r, "denied", slog.String("console", r.Method+" "+r.URL.Path), slog.String("reason", "no valid CSRF token"))
			c.consoleError(w, r, v, http.StatusForbidden, "This form was refused: its security token is missing or stale. Reload the page and try again.")
			return
		}
	}
	path := r.URL.Path
	switch {
	case path == "/":
		c.pageOverview(w, r, v)
	case path == "/signin":
		c.pageSignin(w, r, v)
	case path == "/signin/sso" && r.Method != http.MethodPost:
		c.signinSSO(w, r, v)
	case path == "/signin/sso/callback" && r.Method != http.MethodPost:
		c.ssoCallback(w, r, v)
	case path == "/signout" && r.Method == http.MethodPost:
		c.signout(w, r)
	case path == "/repositories":
		c.pageRepositories(w, r, v)
	case strings.HasPrefix(path, "/repositories/"):
		c.pageRepository(w, r, v, strings.TrimPrefix(path, "/repositories/"))
	case path == "/gc":
		c.pageGC(w, r, v)
	case path == "/retention":
		c.pageRetention(w, r, v)
	case path == "/upstreams":
		c.pageUpstreams(w, r, v)
	case path == "/users":
		c.pageUsers(w, r, v)
	case path == "/tokens":
		c.pageTokens(w, r, v)
	case path == "/audit":
		c.pageAudit(w, r, v)
	default:
		c.consoleError(w, r, v, http.StatusNotFound, "No such page.")
	}
}

// pageSignin shows the sign-in form and signs in with it.
func (c *Console) pageSignin(w http.ResponseWriter, r *http.Request, v auth.Viewer) {
	next := safeNext(r.FormValue("next"))
	p := c.newPage(r, v, "Sign in")
	p.Data = map[string]any{"Next": next, "NoUsers": !c.gate.Required(), "SSO": c.gate.SSO()}
	if r.Method != http.MethodPost {
		c.render(w, http.StatusOK, "signin", p)
		return
	}
	user, pass := r.PostFormValue("user"), r.PostFormValue("password")
	_, ok, retry, err := c.gate.SignIn(r, user, pass)
	switch {
	case err != nil:
		p.Flash = "Sign-in is unavailable: the company directory does not answer. Try again later."
		c.render(w, http.StatusServiceUnavailable, "signin", p)
	case ok:
		c.gate.StartSession(w, r, user)
		c.gate.AuditAs(r, user, "login", slog.Bool("ok", true), slog.String("via", "console"))
		http.Redirect(w, r, next, http.StatusSeeOther)
	case retry > 0:
		w.Header().Set("Retry-After", retryAfterSeconds(retry))
		p.Flash = "Too many failed sign-ins; try again in " + retry.Round(time.Second).String() + "."
		c.render(w, http.StatusTooManyRequests, "signin", p)
	default:
		p.Flash = "Wrong user name or password."
		c.render(w, http.StatusUnauthorized, "signin", p)
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

func (c *Console) signout(w http.ResponseWriter, r *http.Request) {
	if user, ended := c.gate.EndSession(w, r); ended {
		c.gate.AuditAs(r, user, "logout", slog.String("via", "console"))
	}
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

// needAdmin sends anonymous visitors to sign in and refuses others who are
// not registry admins; it reports whether the page may go on.
func (c *Console) needAdmin(w http.ResponseWriter, r *http.Request, v auth.Viewer) bool {
	if c.gate.Policy().RegistryAdmin(c.subject(v)) {
		return true
	}
	if v.User == "" {
		http.Redirect(w, r, "/signin?next="+url.QueryEscape(r.URL.RequestURI()), http.StatusSeeOther)
		return false
	}
	c.consoleError(w, r, v, http.StatusForbidden, v.User+" may not see this page: it needs the admin action on every repository (\"**\").")
	return false
}

// Options configures the console.
type Options struct {
	// StatusOf is the HTTP status an error has in the OCI error format
	// (the data plane's one error map).
	StatusOf func(error) int
	Logger   *slog.Logger
}

// Console serves the console's pages. It is safe for concurrent use.
type Console struct {
	svc      *admin.Service
	gate     *auth.Gate
	log      *slog.Logger
	statusOf func(error) int
}

// New returns the console over the operator plane's services.
func New(svc *admin.Service, gate *auth.Gate, o Options) *Console {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.StatusOf == nil {
		o.StatusOf = func(error) int { return http.StatusInternalServerError }
	}
	return &Console{svc: svc, gate: gate, log: o.Logger, statusOf: o.StatusOf}
}
