package oidc_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/wharf-registry/wharf/internal/hydratest"
	"github.com/wharf-registry/wharf/policy/oidc"
	"golang.org/x/oauth2"
)

const redirect = "http://127.0.0.1:1/signin/sso/callback"

// callback is where the provider sends the browser back to: Wharf.
var callback, _ = url.Parse(redirect)

// browse follows the provider's redirects as a browser would, until the
// provider sends the browser back to Wharf; it returns that URL's query.
func browse(t *testing.T, start string) url.Values {
	t.Helper()
	jar, _ := cookiejar.New(nil)
	cl := &http.Client{Jar: jar, Timeout: 20 * time.Second, CheckRedirect: func(req *http.Request, via []*http.Request) error {
		// Wharf's callback is on port 1 (the provider's own port may begin
		// with a 1 too: compare hosts, not prefixes).
		if req.URL.Host == callback.Host || len(via) > 20 {
			return http.ErrUseLastResponse
		}
		return nil
	}}
	resp, err := cl.Get(start)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	loc, err := resp.Location()
	if err != nil {
		t.Fatalf("the provider did not send the browser back: %s", resp.Status)
	}
	if e := loc.Query().Get("error"); e != "" {
		t.Fatalf("the provider sent back an error: %s: %s", e, loc.Query().Get("error_description"))
	}
	return loc.Query()
}

func TestProvider(t *testing.T) {
	h := hydratest.Start(t)
	id, secret := h.Client(t, redirect, "openid profile email offline_access")
	p, err := oidc.New(oidc.Options{Issuer: h.Issuer, ClientID: id, ClientSecret: secret, RedirectURL: redirect})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	signIn := func(who hydratest.Person, nonce string) (url.Values, string) {
		t.Helper()
		h.SignInAs(who)
		verifier := oauth2.GenerateVerifier()
		u, err := p.AuthURL(ctx, "state-0123456789", nonce, verifier)
		if err != nil {
			t.Fatal(err)
		}
		q, _ := url.Parse(u)
		if q.Query().Get("code_challenge_method") != "S256" || q.Query().Get("code_challenge") != oauth2.S256ChallengeFromVerifier(verifier) {
			t.Fatalf("the sign-in URL carries no S256 PKCE challenge: %s", u)
		}
		back := browse(t, u)
		if back.Get("state") != "state-0123456789" {
			t.Fatalf("state came back as %q (%v)", back.Get("state"), back)
		}
		return back, verifier
	}

	// A person with groups.
	back, verifier := signIn(hydratest.Person{Subject: "u-1", Name: "alice", Groups: []string{"devs", "ops"}}, "nonce-2-0123456789")
	got, err := p.Exchange(ctx, back.Get("code"), verifier, "nonce-2-0123456789")
	if err != nil {
		t.Fatal(err)
	}
	if got.Name != "alice" || got.Subject != "u-1" || !slices.Equal(got.Groups, []string{"devs", "ops"}) {
		t.Fatalf("identity %+v", got)
	}
	// The refresh token rechecks alice: the same groups, a rotated token;
	// the old one is refused afterwards.
	if got.Refresh == "" {
		t.Fatal("no refresh token (offline_access is asked for by default)")
	}
	groups, known, next, err := p.Recheck(ctx, got.Refresh, "u-1")
	if err != nil || !known || !slices.Equal(groups, []string{"devs", "ops"}) || next == "" || next == got.Refresh {
		t.Fatalf("Recheck: %v %v %q %v", groups, known, next, err)
	}
	if _, _, _, err := p.Recheck(ctx, next, "u-2"); !errors.Is(err, oidc.ErrGone) {
		t.Fatalf("a refresh token checked against another subject: %v, want ErrGone", err)
	}
	if _, _, _, err := p.Recheck(ctx, got.Refresh, "u-1"); !errors.Is(err, oidc.ErrGone) {
		t.Fatalf("a used refresh token: %v, want ErrGone", err)
	}
	if _, err := p.Exchange(ctx, back.Get("code"), verifier, "nonce-2-0123456789"); err == nil || errors.Is(err, oidc.ErrUnavailable) {
		t.Fatalf("a code redeemed twice: %v, want a refusal", err)
	}
	// Revoked at the provider: gone.
	back, verifier = signIn(hydratest.Person{Subject: "u-6", Name: "dan"}, "nonce-3-0123456789")
	dan, err := p.Exchange(ctx, back.Get("code"), verifier, "nonce-3-0123456789")
	if err != nil {
		t.Fatal(err)
	}
	if _, known, _, err := p.Recheck(ctx, dan.Refresh, "u-6"); err != nil || known {
		t.Fatalf("dan, without groups: known %v, %v", known, err)
	}
	h.RevokeConsent(t, "u-6")
	if _, _, _, err := p.Recheck(ctx, dan.Refresh, "u-6"); !errors.Is(err, oidc.ErrGone) {
		t.Fatalf("after the grant was revoked: %v, want ErrGone", err)
	}
	back, verifier = signIn(hydratest.Person{Subject: "u-1", Name: "alice", Groups: []string{"devs", "ops"}}, "nonce-1-0123456789")
	if _, err := p.Exchange(ctx, back.Get("code"), verifier, "another"); err == nil || !strings.Contains(err.Error(), "nonce") {
		t.Fatalf("a wrong nonce: %v, want a refusal naming it", err)
	}
	back, _ = signIn(hydratest.Person{Subject: "u-1", Name: "alice", Groups: []string{"devs", "ops"}}, "nonce-1-0123456789")
	if _, err := p.Exchange(ctx, back.Get("code"), oauth2.GenerateVerifier(), "nonce-1-0123456789"); err == nil || errors.Is(err, oidc.ErrUnavailable) {
		t.Fatalf("a wrong PKCE verifier: %v, want a refusal", err)
	}

	// No groups claim: no groups (the userinfo endpoint has none either).
	back, verifier = signIn(hydratest.Person{Subject: "u-2", Name: "bob"}, "nonce-0123456789")
	if got, err := p.Exchange(ctx, back.Get("code"), verifier, "nonce-0123456789"); err != nil || got.Name != "bob" || got.Groups != nil {
		t.Fatalf("bob: %+v %v", got, err)
	}
	// No name claim: refused, naming the option.
	back, verifier = signIn(hydratest.Person{Subject: "u-3"}, "nonce-0123456789")
	if _, err := p.Exchange(ctx, back.Get("code"), verifier, "nonce-0123456789"); err == nil || !strings.Contains(err.Error(), "--oidc-user-claim") {
		t.Fatalf("no name claim: %v", err)
	}
	// A name Wharf cannot use.
	back, verifier = signIn(hydratest.Person{Subject: "u-4", Name: "eve:admin"}, "nonce-0123456789")
	if _, err := p.Exchange(ctx, back.Get("code"), verifier, "nonce-0123456789"); err == nil {
		t.Fatal("a name with a colon was accepted")
	}
	// The email claim names people when told to.
	pe, err := oidc.New(oidc.Options{Issuer: h.Issuer, ClientID: id, ClientSecret: secret, RedirectURL: redirect, UserClaim: "email"})
	if err != nil {
		t.Fatal(err)
	}
	h.SignInAs(hydratest.Person{Subject: "u-5", Email: "carol@example.com"})
	verifier = oauth2.GenerateVerifier()
	u, err := pe.AuthURL(ctx, "state-0123456789", "nonce-0123456789", verifier)
	if err != nil {
		t.Fatal(err)
	}
	back = browse(t, u)
	if got, err := pe.Exchange(ctx, back.Get("code"), verifier, "nonce-0123456789"); err != nil || got.Name != "carol@example.com" {
		t.Fatalf("email: %+v %v", got, err)
	}

	// The provider down: ErrUnavailable, quickly.
	h.Stop()
	down, err := oidc.New(oidc.Options{Issuer: h.Issuer, ClientID: id, RedirectURL: redirect, Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if _, err := down.AuthURL(ctx, "s", "n", "v"); !errors.Is(err, oidc.ErrUnavailable) || time.Since(start) > 5*time.Second {
		t.Fatalf("provider down: %v after %v", err, time.Since(start))
	}
	if _, err := p.Exchange(ctx, "code", "v", "nonce-0123456789"); !errors.Is(err, oidc.ErrUnavailable) {
		t.Fatalf("provider down at the exchange: %v", err)
	}
}

func TestNewRefuses(t *testing.T) {
	for _, o := range []oidc.Options{
		{Issuer: "idp.example.com", ClientID: "c", RedirectURL: redirect},
		{Issuer: "https://idp.example.com", RedirectURL: redirect},
		{Issuer: "https://idp.example.com", ClientID: "c", RedirectURL: "https://wharf.example.com/"},
		{Issuer: "https://idp.example.com", ClientID: "c", RedirectURL: redirect, CAFile: "/nonexistent"},
	} {
		if _, err := oidc.New(o); err == nil || !strings.Contains(err.Error(), "--oidc-") {
			t.Errorf("%+v: %v, want an error naming the option", o, err)
		}
	}
}
