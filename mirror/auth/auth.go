// Package auth is who calls, for every plane of Wharf's HTTP face: the OCI
// API (/v2/), the token realm (/token), the admin API (/api/v1/) and the
// console. A Gate establishes a request's Caller once (Basic credentials,
// a bearer token from Wharf's realm, a client certificate, a cluster
// node's token), throttles failed sign-ins, signs tokens and console
// session cookies, believes trusted proxies' forwarded headers, and writes
// the audit records. What a caller may do is the policy's answer; the
// Gate holds the users and rules in force (SetAccess swaps them whole).
package auth

import (
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wharf-registry/wharf/internal/loglimit"
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

// Caller is who sent a request, as authenticated.
type Caller struct {
	policy.Subject
	BadCredentials bool          // sent credentials that did not verify (treated as anonymous)
	Token          bool          // holds a valid token from Wharf's realm
	Throttled      time.Duration // its sign-in was refused after too many failures: retry after this
	Node           string        // another node of the cluster (a node token): it may pull
	TokenName      string        // signed in with this access token (User is its owner, Scope its scope)
	Unavailable    string        // its sign-in failed because the directory does not answer: why
}

// Options configures a Gate.
type Options struct {
	// Secret, when set, derives the key tokens and session cookies are
	// signed with, so that nodes sharing it accept each other's; "": a
	// random key.
	Secret string
	// TrustedProxies are the peers whose X-Forwarded-For, -Proto and -Host
	// headers are believed.
	TrustedProxies []netip.Prefix
	// PublicURL, when set, is the scheme and host clients reach the
	// registry at: the token realm is built from it.
	PublicURL string
	// Revocations records console sign-outs in the index (so that they
	// outlive a restart and reach every node); nil: memory only.
	Revocations Revocations
	// Directory signs in people the htpasswd file does not hold (LDAP);
	// nil: none.
	Directory Directory
	// AccessTokens finds the access tokens robots and people sign in
	// with; nil: none.
	AccessTokens AccessTokens
	// SSO is the identity provider people sign in to the console with,
	// and People records them; nil: none.
	SSO    SingleSignOn
	People People
	// Audit receives every audit record; nil: the log only.
	Audit  Auditor
	Logger *slog.Logger
}

// Revocations is where sign-outs are kept (the store's records).
type Revocations interface {
	Revoke(id string, until time.Time) error
	Revoked(id string) (bool, error)
}

// Gate authenticates requests. It is safe for concurrent use.
type Gate struct {
	opts      Options
	log       *slog.Logger
	access    atomic.Pointer[access]
	rules     atomic.Pointer[policy.Policy] // access's policy, for planes that hold it (Rules)
	tokens    *tokens
	sessions  *sessions
	signins   *signins
	logLimit  loglimit.Limiter // one line per source and minute for floods
	untrusted untrustedPeers   // peers warned about for forwarded headers they may not send
	recent    recentUsers      // directory users who signed in since the start
}

// access is who may sign in and what they may do, replaced as a whole.
type access struct {
	users  Authenticator // nil: nobody signs in
	policy *policy.Policy
}

// New returns a Gate with no users and a policy that allows everything
// until SetAccess.
func New(o Options) *Gate {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	g := &Gate{opts: o, log: o.Logger, tokens: newTokens(o.Secret), signins: newSignins(), logLimit: loglimit.Limiter{Every: time.Minute}}
	g.sessions = newSessions(g.tokens)
	g.sessions.store, g.sessions.log = o.Revocations, o.Logger
	g.SetAccess(nil, nil)
	return g
}

// SetAccess replaces users and rules for the requests that start from now
// on (SIGHUP reload). A nil policy allows everything (no users).
func (g *Gate) SetAccess(users Authenticator, pol *policy.Policy) {
	if pol == nil {
		pol, _ = policy.New(0, policy.Config{})
	}
	g.access.Store(&access{users: users, policy: pol})
	g.rules.Store(pol)
}

// Rules is where the rules in force are published: a plane that decides
// every request (the data plane) loads them from it, with no call. A
// reload swaps users and rules one after the other: a request between the
// two sees new users with the old rules.
func (g *Gate) Rules() *atomic.Pointer[policy.Policy] { return &g.rules }

// Policy is the rules in force.
func (g *Gate) Policy() *policy.Policy { return g.access.Load().policy }

// Users is who may sign in (nil: nobody).
func (g *Gate) Users() Authenticator { return g.access.Load().users }

// Generation is user's credential generation ("" for an unknown user).
func (g *Gate) Generation(user string) string {
	if users := g.Users(); users != nil {
		if gen := users.Generation(user); gen != "" {
			return gen
		}
	}
	if dir := g.opts.Directory; dir != nil && user != "" {
		if _, ok, _ := dir.Groups(user); ok {
			return directoryGen
		}
	}
	if _, gen, ok := g.ssoPerson(user); ok {
		return gen
	}
	return ""
}

// Required reports that users exist: /v2/ then challenges anonymous
// callers, which is what makes `docker login` send its credentials.
func (g *Gate) Required() bool {
	if g.opts.Directory != nil || g.opts.SSO != nil {
		return true
	}
	u := g.Users()
	return u != nil && u.Len() > 0
}

// SetClock replaces the sign-in throttle's clock (tests).
func (g *Gate) SetClock(now func() time.Time) { g.signins.now = now }

// ClientIP is the request's client address without its port.
func ClientIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// callerKey is the request context's key of its lazily resolved caller.
type callerKey struct{}

// lazyCaller resolves a request's caller on first use: Basic credentials
// cost a bcrypt check, which a request that anonymous callers may make
// never pays.
type lazyCaller struct {
	once    sync.Once
	c       Caller
	resolve func() Caller
}

// CallerOf is who sent r (anonymous unless Authenticate found credentials).
func CallerOf(r *http.Request) Caller {
	lc, _ := r.Context().Value(callerKey{}).(*lazyCaller)
	if lc == nil {
		return Caller{}
	}
	lc.once.Do(func() { lc.c = lc.resolve() })
	return lc.c
}

// Visible pages through a listing of repositories (the store's catalog:
// up to n names after last, and whether more follow) keeping the first n
// that s may pull; mirrored tells a repository's recorded origin (the
// anonymous-mirror-pull rule applies to mirrored ones).
func (g *Gate) Visible(s policy.Subject, n int, last string, list func(n int, last string) ([]string, bool, error), mirrored func(repo string) bool) ([]string, bool, error) {
	pol := g.Policy()
	out := []string{}
	for {
		page, more, err := list(max(n, 100), last)
		if err != nil {
			return nil, false, err
		}
		for _, repo := range page {
			if !pol.Allowed(s, repo, policy.Pull, mirrored(repo)) {
				continue
			}
			if len(out) == n {
				return out, true, nil
			}
			out = append(out, repo)
		}
		if !more || len(page) == 0 {
			return out, false, nil
		}
		last = page[len(page)-1]
	}
}
