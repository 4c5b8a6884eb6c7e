package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/urfave/cli/v2"
	"github.com/urfave/cli/v2/altsrc"

	"github.com/wharf-registry/wharf/mirror/auth"
	"github.com/wharf-registry/wharf/policy/oidc"
)

// oidcFlags are serve's flags for signing people in to the console through
// the company's identity provider (OpenID Connect).
var oidcFlags = []cli.Flag{
	altsrc.NewStringFlag(&cli.StringFlag{Name: "oidc-issuer", Usage: "sign people in to the console through this OpenID Connect provider (its issuer URL)", EnvVars: []string{"WHARF_OIDC_ISSUER"}}),
	altsrc.NewStringFlag(&cli.StringFlag{Name: "oidc-client-id", Usage: "the client registered for Wharf at the provider", EnvVars: []string{"WHARF_OIDC_CLIENT_ID"}}),
	altsrc.NewStringFlag(&cli.StringFlag{Name: "oidc-client-secret-file", Usage: "a file holding the client's secret (first line)", EnvVars: []string{"WHARF_OIDC_CLIENT_SECRET_FILE"}}),
	altsrc.NewStringFlag(&cli.StringFlag{Name: "oidc-redirect-url", Usage: "Wharf's callback as registered at the provider: https://HOST/signin/sso/callback", EnvVars: []string{"WHARF_OIDC_REDIRECT_URL"}}),
	altsrc.NewStringFlag(&cli.StringFlag{Name: "oidc-scopes", Value: "openid,profile,email,offline_access", Usage: "the scopes asked for (add groups where the provider needs it for the groups claim; without offline_access people are not rechecked)", EnvVars: []string{"WHARF_OIDC_SCOPES"}}),
	altsrc.NewStringFlag(&cli.StringFlag{Name: "oidc-user-claim", Value: "preferred_username", Usage: "the ID token's claim that names the person (email, sub, …)", EnvVars: []string{"WHARF_OIDC_USER_CLAIM"}}),
	altsrc.NewStringFlag(&cli.StringFlag{Name: "oidc-groups-claim", Value: "groups", Usage: "the claim that lists the person's groups (group:NAME in the rules)", EnvVars: []string{"WHARF_OIDC_GROUPS_CLAIM"}}),
	altsrc.NewStringFlag(&cli.StringFlag{Name: "oidc-ca-file", Usage: "the provider's CA certificate (PEM; default: the system's)", EnvVars: []string{"WHARF_OIDC_CA_FILE"}}),
	altsrc.NewDurationFlag(&cli.DurationFlag{Name: "oidc-recheck", Value: time.Hour, Usage: "ask the provider this often whether each person still signs in (their refresh token): someone it refuses is forgotten, their sessions end and their tokens are revoked; 0: never", EnvVars: []string{"WHARF_OIDC_RECHECK"}}),
	altsrc.NewDurationFlag(&cli.DurationFlag{Name: "oidc-timeout", Value: 10 * time.Second, Usage: "each call to the provider gives up after this (the sign-in then gets 503)", EnvVars: []string{"WHARF_OIDC_TIMEOUT"}}),
}

// oidcProvider is the provider the flags name; nil without --oidc-issuer.
func oidcProvider(c *cli.Context) (auth.SingleSignOn, error) {
	if c.String("oidc-issuer") == "" {
		for _, f := range []string{"oidc-client-id", "oidc-client-secret-file", "oidc-redirect-url"} {
			if c.String(f) != "" {
				return nil, fmt.Errorf("--%s needs --oidc-issuer", f)
			}
		}
		return nil, nil
	}
	o := oidc.Options{Issuer: c.String("oidc-issuer"), ClientID: c.String("oidc-client-id"), RedirectURL: c.String("oidc-redirect-url"),
		UserClaim: c.String("oidc-user-claim"), GroupsClaim: c.String("oidc-groups-claim"), CAFile: c.String("oidc-ca-file"), Timeout: c.Duration("oidc-timeout")}
	for _, s := range strings.FieldsFunc(c.String("oidc-scopes"), func(r rune) bool { return r == ',' || r == ' ' }) {
		o.Scopes = append(o.Scopes, s)
	}
	var err error
	if o.ClientSecret, err = secretFile(c, "oidc-client-secret-file"); err != nil {
		return nil, err
	}
	p, err := oidc.New(o)
	if err != nil {
		return nil, err
	}
	return sso{p}, nil
}

// sso is the gate's view of the provider.
type sso struct{ p *oidc.Provider }

func (s sso) AuthURL(ctx context.Context, state, nonce, verifier string) (string, error) {
	return s.p.AuthURL(ctx, state, nonce, verifier)
}

func (s sso) Exchange(ctx context.Context, code, verifier, nonce string) (auth.Identity, error) {
	id, err := s.p.Exchange(ctx, code, verifier, nonce)
	return auth.Identity{Name: id.Name, Subject: id.Subject, Groups: id.Groups, Refresh: id.Refresh}, err
}

func (s sso) Recheck(ctx context.Context, refresh, subject string) ([]string, bool, string, error) {
	return s.p.Recheck(ctx, refresh, subject)
}

func (s sso) Gone(err error) bool { return errors.Is(err, oidc.ErrGone) }

func (s sso) Unavailable(err error) bool { return errors.Is(err, oidc.ErrUnavailable) }
func (s sso) String() string             { return s.p.String() }
