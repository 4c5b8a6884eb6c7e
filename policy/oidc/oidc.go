// Package oidc signs people in to the console through the company's
// identity provider (OpenID Connect): the authorization code flow with
// PKCE, the ID token verified against the provider's keys, the person's
// name and groups read from its claims (or, for the groups, from the
// userinfo endpoint when the ID token has none). The groups become
// group:NAME for the rules, as the directory's do.
package oidc

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/wharf-registry/wharf/policy"

	gooidc "github.com/coreos/go-oidc/v3/oidc"
	"golang.org/x/oauth2"
)

// ErrUnavailable: the provider did not answer (down, slow, or its
// discovery document is broken). The console says so with 503.
var ErrUnavailable = errors.New("the identity provider is unavailable")

// ErrGone: the provider refused a person's refresh token (the person was
// removed or disabled, signed out everywhere, or the grant was revoked).
var ErrGone = errors.New("the identity provider no longer accepts this person's sign-in")

// Options configures a Provider.
type Options struct {
	Issuer       string // the issuer URL (its /.well-known/openid-configuration is read)
	ClientID     string
	ClientSecret string
	RedirectURL  string   // https://wharf.example.com/signin/sso/callback
	Scopes       []string // default openid, profile, email, offline_access
	UserClaim    string   // the claim that names the person (default preferred_username)
	GroupsClaim  string   // the claim that lists the person's groups (default groups)
	CAFile       string   // the provider's CA (default: the system's)
	Timeout      time.Duration
}

// Identity is who signed in.
type Identity struct {
	Name    string   // from the user claim
	Subject string   // the provider's stable id (sub)
	Groups  []string // from the groups claim
	Refresh string   // the refresh token, for Recheck ("": the provider gave none)
}

// Provider is the identity provider. It is safe for concurrent use.
type Provider struct {
	o      Options
	client *http.Client

	mu       sync.Mutex
	provider *gooidc.Provider // nil until discovery succeeded
	lastTry  time.Time
	lastErr  error
}

// New checks o; it does not dial (a provider down at start does not stop
// the server: discovery happens at the first sign-in and is retried).
func New(o Options) (*Provider, error) {
	u, err := url.Parse(o.Issuer)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return nil, fmt.Errorf("--oidc-issuer %q: want the provider's issuer URL, https://idp.example.com/realms/company", o.Issuer)
	}
	if o.ClientID == "" {
		return nil, errors.New("--oidc-client-id is needed (the client registered for Wharf at the provider)")
	}
	r, err := url.Parse(o.RedirectURL)
	if err != nil || (r.Scheme != "https" && r.Scheme != "http") || r.Host == "" || !strings.HasSuffix(r.Path, "/signin/sso/callback") {
		return nil, fmt.Errorf("--oidc-redirect-url %q: want Wharf's own URL ending in /signin/sso/callback, as registered at the provider", o.RedirectURL)
	}
	if len(o.Scopes) == 0 {
		o.Scopes = []string{gooidc.ScopeOpenID, "profile", "email", gooidc.ScopeOfflineAccess}
	}
	hasOpenID := false
	for _, s := range o.Scopes {
		hasOpenID = hasOpenID || s == gooidc.ScopeOpenID
	}
	if !hasOpenID {
		o.Scopes = append([]string{gooidc.ScopeOpenID}, o.Scopes...)
	}
	if o.UserClaim == "" {
		o.UserClaim = "preferred_username"
	}
	if o.GroupsClaim == "" {
		o.GroupsClaim = "groups"
	}
	if o.Timeout <= 0 {
		o.Timeout = 10 * time.Second
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	pool, err := policy.CAPool("oidc-ca-file", o.CAFile)
	if err != nil {
		return nil, err
	}
	if pool != nil {
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	return &Provider{o: o, client: &http.Client{Transport: tr, Timeout: o.Timeout}}, nil
}

// String names the provider (its issuer) for logs and pages.
func (p *Provider) String() string { return p.o.Issuer }

// discoverEvery spaces discovery attempts while the provider fails them.
const discoverEvery = 5 * time.Second

// ctx carries the provider's HTTP client to go-oidc and oauth2.
func (p *Provider) ctx(parent context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(parent, p.o.Timeout)
	ctx = gooidc.ClientContext(ctx, p.client)
	return context.WithValue(ctx, oauth2.HTTPClient, p.client), cancel
}

// discovered reads the provider's discovery document once it answers.
func (p *Provider) discovered(ctx context.Context) (*gooidc.Provider, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.provider != nil {
		return p.provider, nil
	}
	if p.lastErr != nil && time.Since(p.lastTry) < discoverEvery {
		return nil, p.lastErr
	}
	p.lastTry = time.Now()
	// The key set go-oidc builds reads the keys with this client later,
	// outside any request's context.
	prov, err := gooidc.NewProvider(gooidc.ClientContext(ctx, p.client), p.o.Issuer)
	if err != nil {
		p.lastErr = fmt.Errorf("%w: %s: %v", ErrUnavailable, p.o.Issuer, err)
		return nil, p.lastErr
	}
	p.provider, p.lastErr = prov, nil
	return prov, nil
}

func (p *Provider) config(prov *gooidc.Provider) *oauth2.Config {
	ep := prov.Endpoint()
	// The client authenticates as the provider says it may: HTTP Basic
	// (the spec's default) unless only a form post is offered. oauth2's
	// guessing would switch for good after one refused code.
	ep.AuthStyle = oauth2.AuthStyleInHeader
	var meta struct {
		Methods []string `json:"token_endpoint_auth_methods_supported"`
	}
	if prov.Claims(&meta) == nil && len(meta.Methods) > 0 && !slices.Contains(meta.Methods, "client_secret_basic") && slices.Contains(meta.Methods, "client_secret_post") {
		ep.AuthStyle = oauth2.AuthStyleInParams
	}
	return &oauth2.Config{ClientID: p.o.ClientID, ClientSecret: p.o.ClientSecret, RedirectURL: p.o.RedirectURL,
		Endpoint: ep, Scopes: p.o.Scopes}
}

// AuthURL is where a browser goes to sign in. state and nonce are the
// console's, bound to the browser; verifier is the PKCE secret whose S256
// challenge the URL carries.
func (p *Provider) AuthURL(ctx context.Context, state, nonce, verifier string) (string, error) {
	ctx, cancel := p.ctx(ctx)
	defer cancel()
	prov, err := p.discovered(ctx)
	if err != nil {
		return "", err
	}
	return p.config(prov).AuthCodeURL(state, gooidc.Nonce(nonce), oauth2.S256ChallengeOption(verifier)), nil
}

// Exchange redeems the code the provider sent back with the PKCE verifier,
// verifies the ID token (signature, issuer, audience, expiry, nonce) and
// reads the person from it. An error wrapping ErrUnavailable means the
// provider did not answer; any other means the sign-in is refused.
func (p *Provider) Exchange(ctx context.Context, code, verifier, nonce string) (Identity, error) {
	ctx, cancel := p.ctx(ctx)
	defer cancel()
	prov, err := p.discovered(ctx)
	if err != nil {
		return Identity{}, err
	}
	cfg := p.config(prov)
	tok, err := cfg.Exchange(ctx, code, oauth2.VerifierOption(verifier))
	if err != nil {
		var re *oauth2.RetrieveError
		if errors.As(err, &re) && re.Response != nil && re.Response.StatusCode < 500 {
			return Identity{}, fmt.Errorf("the provider refused the code: %v", err)
		}
		return Identity{}, fmt.Errorf("%w: redeeming the code: %v", ErrUnavailable, err)
	}
	raw, _ := tok.Extra("id_token").(string)
	if raw == "" {
		return Identity{}, errors.New("the provider sent no ID token (is the openid scope allowed for this client?)")
	}
	idt, err := prov.VerifierContext(ctx, &gooidc.Config{ClientID: p.o.ClientID}).Verify(ctx, raw)
	if err != nil {
		return Identity{}, fmt.Errorf("the ID token was refused: %v", err)
	}
	if idt.Nonce != nonce {
		return Identity{}, errors.New("the ID token's nonce is not this sign-in's")
	}
	var claims map[string]any
	if err := idt.Claims(&claims); err != nil {
		return Identity{}, fmt.Errorf("reading the ID token's claims: %v", err)
	}
	id := Identity{Subject: idt.Subject, Refresh: tok.RefreshToken}
	if id.Name, err = p.name(claims); err != nil {
		return Identity{}, err
	}
	groups, _, err := p.groups(ctx, prov, cfg, tok, claims, idt.Subject)
	if err != nil {
		return Identity{}, err
	}
	id.Groups = groups
	return id, nil
}

// groups reads the groups claim from the ID token's claims or, when it has
// none, the userinfo endpoint (where some providers, Okta and Azure AD by
// default, give them); known is false when neither has the claim.
func (p *Provider) groups(ctx context.Context, prov *gooidc.Provider, cfg *oauth2.Config, tok *oauth2.Token, claims map[string]any, subject string) (groups []string, known bool, err error) {
	if claims != nil {
		if groups, found, err := stringList(claims, p.o.GroupsClaim); found || err != nil {
			return groups, found, err
		}
	}
	ui, err := prov.UserInfo(ctx, cfg.TokenSource(ctx, tok))
	if err != nil {
		return nil, false, nil
	}
	var more map[string]any
	if ui.Subject != subject || ui.Claims(&more) != nil {
		return nil, false, nil
	}
	return stringList(more, p.o.GroupsClaim)
}

// Recheck asks the provider whether the person whose refresh token this is
// still signs in, as a sign-in would: the token is redeemed, the new ID
// token (when the provider sends one) verified and its subject compared.
// It returns the person's groups (known is false when the answer holds
// none) and the refresh token to keep ("" when the provider did not rotate
// it). ErrGone: the provider refused the token; ErrUnavailable: it did not
// answer.
func (p *Provider) Recheck(ctx context.Context, refresh, subject string) (groups []string, known bool, next string, err error) {
	ctx, cancel := p.ctx(ctx)
	defer cancel()
	prov, err := p.discovered(ctx)
	if err != nil {
		return nil, false, "", err
	}
	cfg := p.config(prov)
	tok, err := cfg.TokenSource(ctx, &oauth2.Token{RefreshToken: refresh}).Token()
	if err != nil {
		var re *oauth2.RetrieveError
		if errors.As(err, &re) && re.Response != nil && re.Response.StatusCode < 500 {
			return nil, false, "", fmt.Errorf("%w: %v", ErrGone, err)
		}
		return nil, false, "", fmt.Errorf("%w: refreshing: %v", ErrUnavailable, err)
	}
	var claims map[string]any
	if raw, _ := tok.Extra("id_token").(string); raw != "" {
		idt, err := prov.VerifierContext(ctx, &gooidc.Config{ClientID: p.o.ClientID}).Verify(ctx, raw)
		if err != nil {
			return nil, false, "", fmt.Errorf("the refreshed ID token was refused: %v", err)
		}
		if idt.Subject != subject {
			return nil, false, "", fmt.Errorf("%w: the refreshed ID token is another account's", ErrGone)
		}
		if err := idt.Claims(&claims); err != nil {
			return nil, false, "", err
		}
	}
	groups, known, err = p.groups(ctx, prov, cfg, tok, claims, subject)
	if err != nil {
		return nil, false, "", err
	}
	if tok.RefreshToken != refresh {
		next = tok.RefreshToken
	}
	return groups, known, next, nil
}

// name reads the person's name from the user claim.
func (p *Provider) name(claims map[string]any) (string, error) {
	name, _ := claims[p.o.UserClaim].(string)
	if name == "" {
		return "", fmt.Errorf("the ID token has no %s claim to name the person (set --oidc-user-claim to one it has, e.g. email or sub)", p.o.UserClaim)
	}
	if p.o.UserClaim == "email" {
		if v, ok := claims["email_verified"].(bool); ok && !v {
			return "", fmt.Errorf("the provider has not verified the email %s", name)
		}
	}
	if !ValidName(name) {
		return "", fmt.Errorf("the %s claim %q is not a name Wharf accepts (1-128 characters, no space, colon or control character)", p.o.UserClaim, name)
	}
	return name, nil
}

// ValidName reports a name a person may have in Wharf: it must survive
// Basic credentials and the audit log.
func ValidName(name string) bool {
	if name == "" || len(name) > 128 {
		return false
	}
	for _, c := range name {
		if c <= ' ' || c == 0x7f || c == ':' {
			return false
		}
	}
	return true
}

// stringList reads a claim that lists strings (a single string is a list
// of one); found is false when the claim is absent.
func stringList(claims map[string]any, claim string) (list []string, found bool, err error) {
	v, ok := claims[claim]
	if !ok || v == nil {
		return nil, false, nil
	}
	switch v := v.(type) {
	case string:
		return []string{v}, true, nil
	case []any:
		for _, e := range v {
			s, ok := e.(string)
			if !ok {
				return nil, true, fmt.Errorf("the %s claim holds %T, not group names", claim, e)
			}
			list = append(list, s)
		}
		return list, true, nil
	}
	return nil, true, fmt.Errorf("the %s claim is %T, not a list of group names", claim, v)
}
