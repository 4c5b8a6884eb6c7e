package auth

import (
	"context"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/wharf-registry/wharf/mirror/oci"
	"github.com/wharf-registry/wharf/policy"
)

// Admit is the gate every request passes first: r as its client sent it
// (FromProxy) with its caller attached (Authenticate).
func (g *Gate) Admit(r *http.Request) *http.Request { return g.Authenticate(g.FromProxy(r)) }

// Authenticate attaches r's caller, resolved on first use: a client
// certificate, a bearer token from Wharf's realm, or Basic credentials.
// Credentials that do not verify leave the caller anonymous: dockerd
// forwards its Docker Hub login to mirrors, and that must not break an
// anonymous pull. They only matter when the request needs more than
// anonymous rights. A request without credentials is returned as is.
func (g *Gate) Authenticate(r *http.Request) *http.Request {
	h := r.Header.Get("Authorization")
	if h == "" && (r.TLS == nil || len(r.TLS.VerifiedChains) == 0) {
		return r // anonymous: CallerOf finds no caller, which is the anonymous one
	}
	lc := &lazyCaller{}
	switch {
	case r.TLS != nil && len(r.TLS.VerifiedChains) > 0: // a client certificate from --tls-client-ca
		cn := r.TLS.VerifiedChains[0][0].Subject.CommonName
		lc.resolve = func() Caller { return Caller{Subject: policy.Subject{User: cn}} }
	case strings.HasPrefix(h, "Bearer "):
		lc.resolve = func() Caller {
			now := time.Now()
			claims, valid := g.tokens.check(strings.TrimPrefix(h, "Bearer "), now)
			if valid && claims.Tok != "" { // issued to an access token: still valid?
				c, ok := g.tokenCaller(claims.Tok, "", claims.Gen, now)
				c.BadCredentials, c.Token = !ok, ok
				return c
			}
			var groups []string
			if valid && claims.User != "" {
				groups, valid = g.current(claims.User, claims.Gen)
			}
			var c Caller
			if valid {
				c.User, c.Node, c.Groups = claims.User, claims.Node, groups
			}
			c.BadCredentials, c.Token = !valid || claims.Bad, valid
			return c
		}
	default:
		user, pass, ok := r.BasicAuth()
		lc.resolve = func() Caller {
			var c Caller
			if !ok || !g.signsIn() {
				return c
			}
			if isTokenSecret(pass) && g.opts.AccessTokens != nil {
				tc, good, retry := g.signInToken(r, user, pass)
				if good {
					return tc
				}
				c.BadCredentials, c.Throttled = true, retry
				return c
			}
			groups, good, retry, err := g.SignIn(r, user, pass)
			switch {
			case err != nil:
				c.BadCredentials, c.Unavailable = true, g.unavailableFor(err)
			case good:
				c.User, c.Groups = user, groups
			case retry > 0:
				c.BadCredentials, c.Throttled = true, retry
			default:
				c.BadCredentials = true
			}
			return c
		}
	}
	return r.WithContext(context.WithValue(r.Context(), callerKey{}, lc))
}

// SignIn checks user's password for a request (the htpasswd file's user,
// else the directory's), throttled per client address and user name (see
// signins): ok with the directory's groups, or how long to wait before
// trying again (0: the password was wrong), or err when the directory does
// not answer (not counted as a failure). Failures are audited.
func (g *Gate) SignIn(r *http.Request, user, pass string) (groups []string, ok bool, retry time.Duration, err error) {
	if !g.signsIn() {
		return nil, false, 0, nil
	}
	ip, now, gen := ClientIP(r), g.signins.now(), g.Generation(user)
	k := g.signins.credKey(user, gen, pass)
	if gen != directoryGen && gen != "" && g.signins.knownGood(k, now) {
		return nil, true, 0, nil // verified a moment ago (a directory user's groups are the directory's to cache)
	}
	if g.signins.knownBad(k, now) {
		return nil, false, 0, nil // the same failure again: no new guess
	}
	if w := g.signins.wait(ip, user, now); w > 0 {
		g.AuditAs(r, user, "login", slog.Bool("ok", false), slog.String("reason", "throttled after failed sign-ins"), slog.Duration("retry_after", w))
		return nil, false, w, nil
	}
	groups, _, ok, err = g.verify(user, pass)
	switch {
	case err != nil:
		g.AuditAs(r, user, "login", slog.Bool("ok", false), slog.String("reason", "the directory does not answer"), slog.String("error", err.Error()))
		return nil, false, 0, err
	case ok:
		g.signins.succeeded(ip, user)
		if gen != directoryGen && gen != "" {
			g.signins.rememberGood(k, now)
		} else {
			g.recent.note(user, groups, now)
		}
		return groups, true, 0, nil
	}
	g.signins.rememberBad(k, now)
	backoff := g.signins.failed(ip, user, now)
	g.AuditAs(r, user, "login", slog.Bool("ok", false), slog.String("reason", "wrong user or password"), slog.Duration("backoff", backoff))
	return nil, false, 0, nil
}

// accessRecord is the detail of an UNAUTHORIZED error, as registry:2 sends
// it. A detail matters: docker treats a 401 whose message is the code's
// default and that has no detail as a transient failure and retries it for
// a minute; with it, `docker push` fails at once with a clear message.
type accessRecord struct {
	Type   string `json:"Type"`
	Class  string `json:"Class,omitempty"`
	Name   string `json:"Name"`
	Action string `json:"Action"`
}

// Unauthorized is the 401 with the challenge for this request; repo and
// action name what was asked (both empty for /v2/).
func (g *Gate) Unauthorized(r *http.Request, repo string, a policy.Action) *oci.Error {
	scope, detail := "", []accessRecord{}
	if repo != "" {
		scope = "repository:" + repo + ":pull,push"
		detail = append(detail, accessRecord{Type: "repository", Name: repo, Action: string(a)})
	}
	return &oci.Error{Code: oci.CodeUnauthorized, Message: "authentication required", Detail: detail, Challenge: g.Challenge(r, scope)}
}

// CrossSite reports a request a browser marked as coming from another
// site (a form elsewhere posting here with the user's Basic credentials).
func CrossSite(r *http.Request) bool {
	if s := r.Header.Get("Sec-Fetch-Site"); s == "cross-site" || s == "same-site" {
		return true
	}
	if o := r.Header.Get("Origin"); o != "" && o != "null" {
		u, err := url.Parse(o)
		return err != nil || u.Host != r.Host
	}
	return false
}
