package auth

import (
	"context"
	"errors"
	"testing"
)

// fakeSSO stands in for the provider where only the gate's own steps are
// under test (the flow against a real provider is internal/e2e's
// TestOIDCSignIn).
type fakeSSO struct{ got string }

var errGone = errors.New("gone")

func (f *fakeSSO) AuthURL(context.Context, string, string, string) (string, error) { return "", nil }
func (f *fakeSSO) Exchange(context.Context, string, string, string) (Identity, error) {
	return Identity{}, nil
}
func (f *fakeSSO) Recheck(_ context.Context, refresh, subject string) ([]string, bool, string, error) {
	f.got = refresh
	if refresh == "revoked" {
		return nil, false, "", errGone
	}
	return []string{"devs"}, true, refresh + "+1", nil
}
func (f *fakeSSO) Unavailable(error) bool { return false }
func (f *fakeSSO) Gone(err error) bool    { return errors.Is(err, errGone) }
func (f *fakeSSO) String() string         { return "https://idp" }

// TestSealedRefresh: refresh tokens are sealed, only a gate with the same
// token key opens them, a tampered one is refused, and a recheck hands the
// provider the clear token and keeps the rotated one sealed.
func TestSealedRefresh(t *testing.T) {
	f := &fakeSSO{}
	g := New(Options{Secret: "cluster-key", SSO: f})
	sealed := g.seal("rt-1")
	if sealed == "rt-1" || len(sealed) < 20 {
		t.Fatalf("not sealed: %q", sealed)
	}
	if got, ok := New(Options{Secret: "cluster-key"}).unseal(sealed); !ok || got != "rt-1" {
		t.Fatalf("another node with the same key: %q %v", got, ok)
	}
	if _, ok := New(Options{Secret: "other-key"}).unseal(sealed); ok {
		t.Fatal("a gate with another key opened it")
	}
	if _, ok := g.unseal(sealed[:len(sealed)-2] + "AA"); ok {
		t.Fatal("a tampered token was opened")
	}
	c, err := g.RecheckSSO(context.Background(), "sub", sealed)
	if err != nil || c.Gone || !c.GroupsKnown || c.Groups[0] != "devs" || f.got != "rt-1" {
		t.Fatalf("recheck: %+v %v (the provider got %q)", c, err, f.got)
	}
	if next, ok := g.unseal(c.Refresh); !ok || next != "rt-1+1" {
		t.Fatalf("the rotated token kept: %q %v", next, ok)
	}
	if c, err := g.RecheckSSO(context.Background(), "sub", g.seal("revoked")); err != nil || !c.Gone {
		t.Fatalf("a revoked person: %+v %v", c, err)
	}
	if _, err := New(Options{Secret: "other-key", SSO: f}).RecheckSSO(context.Background(), "sub", sealed); !errors.Is(err, ErrSealedElsewhere) {
		t.Fatalf("sealed with another key: %v", err)
	}
}
