package cache

import (
	"errors"
	"testing"
	"time"
)

// TestTokens: a token is stored once by name, read back (from the cache
// after the first read), listed, revoked (gone at once), and its last use
// is written by the flush, not by the sign-in.
func TestTokens(t *testing.T) {
	s := openStore(t, t.TempDir())
	defer s.Close()
	r := s.Records()
	rec := TokenRecord{Name: "ci-push", Owner: "alice", Hash: "h", Repos: []string{"team/**"}, Actions: []string{"pull", "push"}, Created: time.Now().UTC()}
	if err := r.CreateToken(rec); err != nil {
		t.Fatal(err)
	}
	if err := r.CreateToken(rec); !errors.Is(err, ErrTokenExists) {
		t.Fatalf("a second token of the same name: %v", err)
	}
	got, ok, err := r.Token("ci-push")
	if err != nil || !ok || got.Owner != "alice" || got.Hash != "h" || len(got.Repos) != 1 {
		t.Fatalf("Token: %+v %v %v", got, ok, err)
	}
	if _, ok, _ := r.Token("nope"); ok {
		t.Fatal("an unknown token was found")
	}
	used := time.Now().UTC().Add(time.Minute).Round(time.Second)
	r.NoteTokenUse("ci-push", used)
	if got, _, _ := r.Token("ci-push"); !got.LastUsed.IsZero() {
		t.Fatal("a use was written before the flush")
	}
	if list, _ := r.Tokens(); len(list) != 1 || !list[0].LastUsed.Equal(used) {
		t.Fatalf("the list does not show the noted use: %+v", list)
	}
	if err := s.Maintenance().FlushAccess(); err != nil {
		t.Fatal(err)
	}
	if got, _, _ := r.Token("ci-push"); !got.LastUsed.Equal(used) {
		t.Fatalf("last use after the flush: %v, want %v", got.LastUsed, used)
	}
	if found, err := r.RevokeToken("ci-push"); !found || err != nil {
		t.Fatalf("revoke: %v %v", found, err)
	}
	if _, ok, _ := r.Token("ci-push"); ok {
		t.Fatal("a revoked token is still found")
	}
	if found, _ := r.RevokeToken("ci-push"); found {
		t.Fatal("revoked twice")
	}
}
