package mirror

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/wharf-registry/wharf/mirror/oci"
	"github.com/wharf-registry/wharf/policy"
)

// Authenticator verifies user credentials; *policy.Users provides it.
type Authenticator interface {
	Len() int
	Verify(user, password string) bool
	// Generation changes whenever user's credential does (and is empty for
	// an unknown user): tokens carry it, so a deleted user's or an old
	// password's tokens stop working at once.
	Generation(user string) string
}

type subjectKey struct{}

// caller is who sent a request, as authenticated.
type caller struct {
	policy.Subject
	badCredentials bool          // sent credentials that did not verify (treated as anonymous)
	token          bool          // holds a valid token from Wharf's realm
	throttled      time.Duration // its sign-in was refused after too many failures: retry after this
	node           string        // another node of the cluster (a node token): it may pull
}

// lazyCaller resolves a request's caller on first use: Basic credentials
// cost a bcrypt check, which a request that anonymous callers may make
// never pays.
type lazyCaller struct {
	once    sync.Once
	c       caller
	resolve func() caller
}

func callerOf(r *http.Request) caller {
	lc, _ := r.Context().Value(subjectKey{}).(*lazyCaller)
	if lc == nil {
		return caller{}
	}
	lc.once.Do(func() { lc.c = lc.resolve() })
	return lc.c
}

func clientIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// signIn checks user's password for a request, throttled per client
// address and user name (see signins): ok, or how long to wait before
// trying again (0: the password was wrong). Failures are audited.
func (reg *Registry) signIn(r *http.Request, user, pass string) (ok bool, retry time.Duration) {
	users := reg.access.Load().users
	if users == nil {
		return false, 0
	}
	ip, now, gen := clientIP(r), reg.signins.now(), users.Generation(user)
	if reg.signins.knownBad(user, gen, pass, now) {
		return false, 0 // the same failure again: no new guess
	}
	if w := reg.signins.wait(ip, user, now); w > 0 {
		reg.auditAs(r, user, "login", slog.Bool("ok", false), slog.String("reason", "throttled after failed sign-ins"), slog.Duration("retry_after", w))
		return false, w
	}
	if users.Verify(user, pass) {
		reg.signins.succeeded(ip, user)
		return true, 0
	}
	reg.signins.rememberBad(user, gen, pass, now)
	backoff := reg.signins.failed(ip, user, now)
	reg.auditAs(r, user, "login", slog.Bool("ok", false), slog.String("reason", "wrong user or password"), slog.Duration("backoff", backoff))
	return false, 0
}

// authenticate reads a bearer token from Wharf's realm, or Basic
// credentials. Credentials that do not verify leave the caller anonymous:
// dockerd forwards its Docker Hub login to mirrors, and that must not break
// an anonymous pull. They only matter when the request needs more than
// anonymous rights.
func (reg *Registry) authenticate(r *http.Request) *http.Request {
	h := r.Header.Get("Authorization")
	if h == "" && (r.TLS == nil || len(r.TLS.VerifiedChains) == 0) {
		return r // anonymous: callerOf finds no caller, which is the anonymous one
	}
	lc := &lazyCaller{}
	switch {
	case r.TLS != nil && len(r.TLS.VerifiedChains) > 0: // a client certificate from --tls-client-ca
		cn := r.TLS.VerifiedChains[0][0].Subject.CommonName
		lc.resolve = func() caller { return caller{Subject: policy.Subject{User: cn}} }
	case strings.HasPrefix(h, "Bearer "):
		lc.resolve = func() caller {
			claims, valid := reg.tokens.check(strings.TrimPrefix(h, "Bearer "), time.Now())
			if valid && claims.User != "" {
				users := reg.access.Load().users
				valid = users != nil && users.Generation(claims.User) == claims.Gen
			}
			var c caller
			if valid {
				c.User, c.node = claims.User, claims.Node
			}
			c.badCredentials, c.token = !valid || claims.Bad, valid
			return c
		}
	default:
		user, pass, ok := r.BasicAuth()
		lc.resolve = func() caller {
			var c caller
			if !ok || reg.access.Load().users == nil {
				return c
			}
			good, retry := reg.signIn(r, user, pass)
			switch {
			case good:
				c.User = user
			case retry > 0:
				c.badCredentials, c.throttled = true, retry
			default:
				c.badCredentials = true
			}
			return c
		}
	}
	return r.WithContext(context.WithValue(r.Context(), subjectKey{}, lc))
}

// authRequired reports that users exist: /v2/ then challenges anonymous
// callers, which is what makes `docker login` send its credentials.
func (reg *Registry) authRequired() bool {
	u := reg.access.Load().users
	return u != nil && u.Len() > 0
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

// unauthorized is the 401 with the challenge for this request; repo and
// action name what was asked (both empty for /v2/).
func (reg *Registry) unauthorized(r *http.Request, repo string, a policy.Action) error {
	scope, detail := "", []accessRecord{}
	if repo != "" {
		scope = "repository:" + repo + ":pull,push"
		detail = append(detail, accessRecord{Type: "repository", Name: repo, Action: string(a)})
	}
	return &oci.Error{Code: oci.CodeUnauthorized, Message: "authentication required", Detail: detail, Challenge: reg.challenge(r, scope)}
}

// audit writes one structured audit record: pushes, deletes, logins and
// denials, with user and client address.
func (reg *Registry) audit(r *http.Request, event string, attrs ...slog.Attr) {
	reg.auditAs(r, callerOf(r).User, event, attrs...)
}

// auditAs is audit for a request whose caller is being resolved.
func (reg *Registry) auditAs(r *http.Request, user, event string, attrs ...slog.Attr) {
	if user == "" {
		user = "anonymous"
	}
	e := AuditEvent{Time: time.Now().UTC().Format(time.RFC3339), User: user, Event: event, Client: r.RemoteAddr}
	for _, a := range attrs {
		if e.Attrs == nil {
			e.Attrs = map[string]string{}
		}
		e.Attrs[a.Key] = a.Value.String()
	}
	reg.events.Audit(e)
	if event == "login" && e.Attrs["ok"] == "false" {
		// A guesser's flood: one line per client address and minute in
		// the log (the audit page keeps every event).
		ok, held := reg.logLimit.allow("login-failed\x00"+e.Attrs["reason"]+"\x00"+clientIP(r), time.Now())
		if !ok {
			return
		}
		if held > 0 {
			attrs = append(attrs, slog.Int("repeated", held))
		}
	}
	attrs = append([]slog.Attr{slog.String("event", event), slog.String("user", user), slog.String("client", r.RemoteAddr)}, attrs...)
	reg.log.LogAttrs(r.Context(), slog.LevelInfo, "audit", attrs...)
}
