package upstream

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
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
	client  *http.Client
	creds   func(host string) (user, secret string, err error)
	timeout time.Duration // bounds one token fetch

	mu    sync.Mutex
	hosts map[string]*hostAuth
}

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
}

// tokenEarly is how long before its expiry a token is fetched anew.
const tokenEarly = 10 * time.Second

// tokenStale: a request finding a fetch in flight for longer than this
// starts its own instead of waiting (a hung token server must not hold a
// repository's requests for the whole fetch timeout).
const tokenStale = 5 * time.Second

// TokenError is a failure to obtain a bearer token from a registry's token
// server. It concerns the request's scope, not the registry's health.
type TokenError struct{ Err error }

func (e *TokenError) Error() string { return "fetching an upstream token: " + e.Err.Error() }
func (e *TokenError) Unwrap() error { return e.Err }

func newAuthorizer(client *http.Client, timeout time.Duration, creds func(string) (string, string, error)) *authorizer {
	return &authorizer{client: client, creds: creds, timeout: timeout, hosts: map[string]*hostAuth{}}
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
	for {
		a.mu.Lock()
		t := h.tokens[key]
		if t != nil {
			select {
			case <-t.done:
				if t.err != nil || time.Until(t.expires) < tokenEarly {
					t = nil // never reuse a failure; refresh an expiring token
				}
			default: // in flight: share it, unless it seems hung
				if time.Since(t.started) > tokenStale {
					t = nil
				}
			}
		}
		if t == nil {
			t = &token{done: make(chan struct{}), started: time.Now()}
			h.tokens[key] = t
			opts := h.opts
			opts.Scopes = scopes
			go a.fetch(context.WithoutCancel(ctx), h, key, t, opts)
		}
		a.mu.Unlock()
		stale := time.NewTimer(time.Until(t.started.Add(tokenStale)) + time.Millisecond)
		select {
		case <-t.done:
			stale.Stop()
			return t.value, t.err
		case <-ctx.Done():
			stale.Stop()
			return "", ctx.Err()
		case <-stale.C: // it hangs: look again (and start a fresh fetch)
		}
	}
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
