package upstream

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/containerd/v2/core/remotes/docker/auth"
	remoteerrors "github.com/containerd/containerd/v2/core/remotes/errors"
	"github.com/containerd/errdefs"
)

// authorizer answers registries' 401 challenges for containerd's resolver
// (docker.Authorizer), with containerd's challenge parsing and token
// requests. Unlike containerd's own authorizer it never keeps a failed
// token fetch: one hang or 503 of a token server would otherwise fail
// every later request for that scope until restart. Tokens are kept until
// shortly before they expire; concurrent requests for one scope share one
// fetch, which no single client's cancellation ends.
type authorizer struct {
	client     *http.Client
	creds      func(host string) (user, secret string, err error)
	timeout    time.Duration // bounds one token fetch
	probeEvery time.Duration // how often a token server that hangs is tried again
	log        *slog.Logger
	stop       <-chan struct{} // closed when the client closes: ends probes

	mu     sync.Mutex
	hosts  map[string]*hostAuth
	realms map[string]*realmHealth // by token server URL
}

// realmHealth is a token server's: one that does not answer within
// tokenWait several times in a row is down; requests that need a new
// token then fail at once (503) while a probe tries it in the background.
type realmHealth struct {
	hangs   int // fetches in a row that got no answer within tokenWait
	down    bool
	lastErr string
}

// tokenDownAfter is how many fetches in a row may hang before the token
// server is down.
const tokenDownAfter = 3

// hostAuth is what one host's challenge asked for.
type hostAuth struct {
	scheme auth.AuthenticationScheme
	opts   auth.TokenOptions // realm, service, credentials; no scopes
	scopes []string          // the last challenge's, for requests that name none
	tokens map[string]*token // by space-joined scopes
}

// token is one fetch of a bearer token: done closes when it ends.
type token struct {
	done    chan struct{}
	started time.Time
	value   string
	expires time.Time
	err     error
	hung    bool // counted as a hang of its realm (under authorizer.mu)
}

// tokenEarly is how long before its expiry a token is fetched anew.
const tokenEarly = 10 * time.Second

// tokenWait is how long a request waits for a token fetch: past it the
// request fails with a TokenError (503), and the next request for the
// scope starts a fresh fetch (a one-off hang must not hold a repository's
// requests). The fetch itself goes on until the fetch timeout; a token it
// brings late is kept.
const tokenWait = 5 * time.Second

// TokenError is a failure to obtain a bearer token from a registry's token
// server. It concerns the request's scope, not the registry's health.
type TokenError struct{ Err error }

func (e *TokenError) Error() string { return "fetching an upstream token: " + e.Err.Error() }
func (e *TokenError) Unwrap() error { return e.Err }

// errTokenHung: the token server took no less than tokenWait.
var errTokenHung = errors.New("the token server did not answer in time")

func newAuthorizer(client *http.Client, timeout, probeEvery time.Duration, log *slog.Logger, stop <-chan struct{}, creds func(string) (string, string, error)) *authorizer {
	return &authorizer{client: client, creds: creds, timeout: timeout, probeEvery: probeEvery, log: log, stop: stop,
		hosts: map[string]*hostAuth{}, realms: map[string]*realmHealth{}}
}

// Authorize sets the Authorization header the host's last challenge asked
// for, fetching a token for the request's scopes when none is held.
func (a *authorizer) Authorize(ctx context.Context, req *http.Request) error {
	a.mu.Lock()
	h := a.hosts[req.URL.Host]
	a.mu.Unlock()
	if h == nil {
		return nil
	}
	switch h.scheme {
	case auth.BasicAuth:
		req.Header.Set("Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte(h.opts.Username+":"+h.opts.Secret)))
		return nil
	case auth.BearerAuth:
		v, err := a.bearer(ctx, req.URL.Host, h)
		if err != nil {
			return err
		}
		req.Header.Set("Authorization", "Bearer "+v)
		return nil
	}
	return nil
}

// scopesOf are the scopes a request asks for: those containerd put in its
// context, else the host's last challenge's.
func scopesOf(ctx context.Context, h *hostAuth) []string {
	if s := docker.GetTokenScopes(ctx, nil); len(s) > 0 {
		return s
	}
	return h.scopes
}

func (a *authorizer) bearer(ctx context.Context, host string, h *hostAuth) (string, error) {
	scopes := scopesOf(ctx, h)
	key := strings.Join(scopes, " ")
	a.mu.Lock()
	t := h.tokens[key]
	if t != nil {
		select {
		case <-t.done:
			if t.err != nil || time.Until(t.expires) < tokenEarly {
				t = nil // never reuse a failure; refresh an expiring token
			}
		default: // in flight: share it, unless it has hung already
			if time.Since(t.started) >= tokenWait {
				t = nil
			}
		}
	}
	if t == nil {
		if rh := a.realms[h.opts.Realm]; rh != nil && rh.down {
			err := fmt.Errorf("%w: %s is down (%s); probing it in the background", errTokenHung, h.opts.Realm, rh.lastErr)
			a.mu.Unlock()
			return "", &TokenError{Err: err}
		}
		t = &token{done: make(chan struct{}), started: time.Now()}
		h.tokens[key] = t
		opts := h.opts
		opts.Scopes = scopes
		go a.fetch(context.WithoutCancel(ctx), h, key, t, opts)
	}
	a.mu.Unlock()
	select {
	case <-t.done: // a token held (select below would choose at random)
		return t.value, t.err
	default:
	}
	wait := time.NewTimer(time.Until(t.started.Add(tokenWait)))
	defer wait.Stop()
	select {
	case <-t.done:
		return t.value, t.err
	case <-ctx.Done():
		return "", ctx.Err()
	case <-wait.C:
		a.hung(h, t, fmt.Errorf("no answer within %s", tokenWait))
		return "", &TokenError{Err: fmt.Errorf("%w (%s)", errTokenHung, tokenWait)}
	}
}

// hung counts fetch t, which got no answer in time, against its realm;
// the tokenDownAfter-th in a row marks the realm down and starts a probe.
func (a *authorizer) hung(h *hostAuth, t *token, cause error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if t.hung {
		return
	}
	t.hung = true
	rh := a.realms[h.opts.Realm]
	if rh == nil {
		rh = &realmHealth{}
		a.realms[h.opts.Realm] = rh
	}
	rh.lastErr = cause.Error()
	if rh.hangs++; rh.hangs < tokenDownAfter || rh.down {
		return
	}
	rh.down = true
	a.log.Warn("upstream token server not answering; requests that need a new token fail at once until it does",
		"realm", h.opts.Realm, "err", cause)
	go a.probe(h, rh)
}

// answered notes that h's realm answered (success or a refusal).
func (a *authorizer) answered(h *hostAuth) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if rh := a.realms[h.opts.Realm]; rh != nil && !rh.down {
		rh.hangs = 0
	}
}

// probe asks the token server of a realm that is down for an anonymous
// token for nothing, one fetch at a time, every probeEvery, until it
// answers.
func (a *authorizer) probe(h *hostAuth, rh *realmHealth) {
	t := time.NewTicker(a.probeEvery)
	defer t.Stop()
	for {
		select {
		case <-a.stop:
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), min(a.timeout, 2*tokenWait))
		_, _, err := fetchToken(ctx, a.client, auth.TokenOptions{Realm: h.opts.Realm, Service: h.opts.Service})
		cancel()
		if err == nil || answeredStatus(err) {
			a.mu.Lock()
			rh.down, rh.hangs = false, 0
			a.mu.Unlock()
			a.log.Info("upstream token server answers again", "realm", h.opts.Realm)
			return
		}
		a.mu.Lock()
		rh.lastErr = err.Error()
		a.mu.Unlock()
	}
}

// answeredStatus reports whether err is the token server's own answer (a
// status it chose), as opposed to a timeout or a broken connection.
func answeredStatus(err error) bool {
	var st remoteerrors.ErrUnexpectedStatus
	return errors.As(err, &st)
}

// fetch gets one token. A failure is handed to the requests waiting for
// it, then forgotten.
func (a *authorizer) fetch(ctx context.Context, h *hostAuth, key string, t *token, opts auth.TokenOptions) {
	ctx, cancel := context.WithTimeout(ctx, a.timeout)
	defer cancel()
	value, expiresIn, err := fetchToken(ctx, a.client, opts)
	if expiresIn <= 0 {
		expiresIn = 60 // the token spec's default
	}
	t.value, t.expires = value, time.Now().Add(time.Duration(expiresIn)*time.Second)
	switch {
	case err == nil, answeredStatus(err):
		a.answered(h)
	case time.Since(t.started) >= tokenWait:
		a.hung(h, t, err)
	}
	if err != nil {
		t.err = &TokenError{Err: err}
		a.mu.Lock()
		if h.tokens[key] == t {
			delete(h.tokens, key)
		}
		a.mu.Unlock()
	}
	close(t.done)
}

// fetchToken asks the token server: with credentials by OAuth POST, falling
// back to GET where the server does not take POST (as registries commonly
// do not), anonymously by GET.
func fetchToken(ctx context.Context, client *http.Client, opts auth.TokenOptions) (string, int, error) {
	if opts.Secret != "" {
		resp, err := auth.FetchTokenWithOAuth(ctx, client, nil, "wharf", opts)
		if err == nil {
			return resp.AccessToken, resp.ExpiresInSeconds, nil
		}
		var st remoteerrors.ErrUnexpectedStatus
		if !errors.As(err, &st) || (st.StatusCode != 404 && st.StatusCode != 405 && st.StatusCode != 401 && st.StatusCode != 400) {
			return "", 0, err
		}
	}
	resp, err := auth.FetchToken(ctx, client, nil, opts)
	if err != nil {
		return "", 0, err
	}
	v := resp.Token
	if v == "" {
		v = resp.AccessToken
	}
	return v, resp.ExpiresInSeconds, nil
}

// AddResponses reads the challenge of a 401. A token that was just used and
// refused is dropped; the same request refused twice with a bearer error is
// final (ErrInvalidAuthorization), as in containerd.
func (a *authorizer) AddResponses(ctx context.Context, responses []*http.Response) error {
	last := responses[len(responses)-1]
	host := last.Request.URL.Host
	for _, c := range auth.ParseAuthHeader(last.Header) {
		switch c.Scheme {
		case auth.BearerAuth:
			if msg := c.Parameters["error"]; msg != "" {
				n := len(responses)
				if n > 1 && sameRequest(responses[n-2].Request, last.Request) || a.freshlyRefused(ctx, host, last.Request) {
					return fmt.Errorf("server message: %s: %w", msg, docker.ErrInvalidAuthorization)
				}
			}
			user, secret, err := a.credsFor(host)
			if err != nil {
				return err
			}
			opts, err := auth.GenerateTokenOptions(ctx, host, user, secret, c)
			if err != nil {
				return err
			}
			challenged := opts.Scopes
			opts.Scopes = nil
			a.mu.Lock()
			h := a.hosts[host]
			if h == nil || h.scheme != auth.BearerAuth || h.opts.Realm != opts.Realm || h.opts.Service != opts.Service {
				h = &hostAuth{scheme: auth.BearerAuth, opts: opts, tokens: map[string]*token{}}
				a.hosts[host] = h
			}
			h.scopes = challenged
			// The token this request carried (if any) was refused: forget it.
			if last.Request.Header.Get("Authorization") != "" {
				key := strings.Join(scopesOf(ctx, h), " ")
				if t := h.tokens[key]; t != nil {
					select {
					case <-t.done:
						delete(h.tokens, key)
					default:
					}
				}
			}
			a.mu.Unlock()
			return nil
		case auth.BasicAuth:
			user, secret, err := a.credsFor(host)
			if err != nil {
				return err
			}
			if user == "" || secret == "" {
				return fmt.Errorf("%w: no basic auth credentials", docker.ErrInvalidAuthorization)
			}
			if last.Request.Header.Get("Authorization") != "" {
				return fmt.Errorf("%w: basic credentials refused", docker.ErrInvalidAuthorization)
			}
			a.mu.Lock()
			a.hosts[host] = &hostAuth{scheme: auth.BasicAuth, opts: auth.TokenOptions{Username: user, Secret: secret}}
			a.mu.Unlock()
			return nil
		}
	}
	return fmt.Errorf("failed to find supported auth scheme: %w", errdefs.ErrNotImplemented)
}

// tokenFresh: a token refused (with a bearer error such as Docker Hub's
// insufficient_scope for a name it does not have) this soon after it was
// issued for the very scope of the request would only be refused again: the
// refusal is final, without a second token fetch and request.
const tokenFresh = 10 * time.Second

func (a *authorizer) freshlyRefused(ctx context.Context, host string, req *http.Request) bool {
	sent, ok := strings.CutPrefix(req.Header.Get("Authorization"), "Bearer ")
	if !ok {
		return false
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	h := a.hosts[host]
	if h == nil {
		return false
	}
	t := h.tokens[strings.Join(scopesOf(ctx, h), " ")]
	if t == nil {
		return false
	}
	select {
	case <-t.done:
		return t.err == nil && t.value == sent && time.Since(t.started) < tokenFresh
	default:
		return false
	}
}

func (a *authorizer) credsFor(host string) (string, string, error) {
	if a.creds == nil {
		return "", "", nil
	}
	return a.creds(host)
}

func sameRequest(r1, r2 *http.Request) bool {
	return r1.Method == r2.Method && *r1.URL == *r2.URL
}
