package mirror

import (
	"context"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/wharf-registry/wharf/policy"
)

// Authenticator verifies user credentials; *policy.Users provides it.
type Authenticator interface {
	Len() int
	Verify(user, password string) bool
}

type subjectKey struct{}

// caller is who sent a request, as authenticated.
type caller struct {
	policy.Subject
	badCredentials bool // sent credentials that did not verify (treated as anonymous)
	token          bool // holds a valid token from Wharf's realm
}

func callerOf(r *http.Request) caller {
	c, _ := r.Context().Value(subjectKey{}).(caller)
	return c
}

// authenticate reads a bearer token from Wharf's realm, or Basic
// credentials. Credentials that do not verify leave the caller anonymous:
// dockerd forwards its Docker Hub login to mirrors, and that must not break
// an anonymous pull. They only matter when the request needs more than
// anonymous rights.
func (reg *Registry) authenticate(r *http.Request) *http.Request {
	var c caller
	if r.TLS != nil && len(r.TLS.VerifiedChains) > 0 { // a client certificate from --tls-client-ca
		c.User = r.TLS.VerifiedChains[0][0].Subject.CommonName
		return r.WithContext(context.WithValue(r.Context(), subjectKey{}, c))
	}
	h := r.Header.Get("Authorization")
	if tok, ok := strings.CutPrefix(h, "Bearer "); ok {
		claims, valid := reg.tokens.check(tok, time.Now())
		c.User, c.badCredentials, c.token = claims.User, !valid || claims.Bad, valid
	} else if user, pass, ok := r.BasicAuth(); ok && reg.access.Load().users != nil {
		if users := reg.access.Load().users; users != nil && users.Verify(user, pass) {
			c.User = user
		} else {
			c.badCredentials = true
		}
	}
	return r.WithContext(context.WithValue(r.Context(), subjectKey{}, c))
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
func unauthorized(r *http.Request, repo string, a policy.Action) error {
	scope, detail := "", []accessRecord{}
	if repo != "" {
		scope = "repository:" + repo + ":pull,push"
		detail = append(detail, accessRecord{Type: "repository", Name: repo, Action: string(a)})
	}
	return &apiError{code: codeUnauthorized, message: "authentication required", detail: detail, challenge: challenge(r, scope)}
}

// audit writes one structured audit record: pushes, deletes, logins and
// denials, with user and client address.
func (reg *Registry) audit(r *http.Request, event string, attrs ...slog.Attr) {
	c := callerOf(r)
	user := c.User
	if user == "" {
		user = "anonymous"
	}
	attrs = append([]slog.Attr{slog.String("event", event), slog.String("user", user), slog.String("client", r.RemoteAddr)}, attrs...)
	reg.log.LogAttrs(r.Context(), slog.LevelInfo, "audit", attrs...)
}
