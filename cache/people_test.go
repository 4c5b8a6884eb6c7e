package cache

import (
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/wharf-registry/wharf/internal/etcdtest"
)

func TestPeople(t *testing.T) {
	s := openStore(t, t.TempDir())
	defer s.Close()
	r := s.Records()
	t0 := time.Now().UTC().Round(time.Second)
	alice := PersonRecord{Name: "alice", Subject: "u-1", Issuer: "https://idp", Groups: []string{"devs"}, LastSignIn: t0}
	if got, err := r.RecordSignIn(alice); err != nil || !got.FirstSeen.Equal(t0) {
		t.Fatalf("first sign-in: %+v %v", got, err)
	}
	if _, ok, _ := r.Person("zed"); ok {
		t.Fatal("zed, who never signed in, was found")
	}
	if _, err := r.RecordSignIn(PersonRecord{Name: "zed", Subject: "u-z", Issuer: "https://idp", LastSignIn: t0}); err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := r.Person("zed"); !ok {
		t.Fatal("zed's sign-in is not seen after he was looked up as absent")
	}
	if p, ok, err := r.Person("alice"); err != nil || !ok || !slices.Equal(p.Groups, []string{"devs"}) {
		t.Fatalf("Person: %+v %v %v", p, ok, err)
	}
	// A later sign-in brings new groups; the cached record follows.
	alice.Groups, alice.LastSignIn = []string{"ops"}, t0.Add(time.Hour)
	if got, err := r.RecordSignIn(alice); err != nil || !got.FirstSeen.Equal(t0) {
		t.Fatalf("second sign-in: %+v %v", got, err)
	}
	if p, _, _ := r.Person("alice"); !slices.Equal(p.Groups, []string{"ops"}) || !p.LastSignIn.Equal(t0.Add(time.Hour)) {
		t.Fatalf("after the second sign-in: %+v", p)
	}
	// Another account at the provider that calls itself alice is refused.
	if _, err := r.RecordSignIn(PersonRecord{Name: "alice", Subject: "u-9", Issuer: "https://idp", LastSignIn: t0}); !errors.Is(err, ErrPersonElsewhere) {
		t.Fatalf("another subject: %v", err)
	}
	if _, err := r.RecordSignIn(PersonRecord{Name: "alice", Subject: "u-1", Issuer: "https://other", LastSignIn: t0}); !errors.Is(err, ErrPersonElsewhere) {
		t.Fatalf("another issuer: %v", err)
	}
	if _, err := r.RecordSignIn(PersonRecord{Name: "bob", Subject: "u-2", Issuer: "https://idp", LastSignIn: t0.Add(2 * time.Hour)}); err != nil {
		t.Fatal(err)
	}
	if list, err := r.People(); err != nil || len(list) != 3 || list[0].Name != "bob" || list[1].Name != "alice" || list[2].Name != "zed" {
		t.Fatalf("People: %+v %v", list, err)
	}
	if found, err := r.ForgetPerson("alice"); !found || err != nil {
		t.Fatalf("ForgetPerson: %v %v", found, err)
	}
	if _, ok, _ := r.Person("alice"); ok {
		t.Fatal("a forgotten person is still found (the cache kept it)")
	}
	if found, _ := r.ForgetPerson("alice"); found {
		t.Fatal("forgot alice twice")
	}
	// Forgotten, the name binds anew.
	if _, err := r.RecordSignIn(PersonRecord{Name: "alice", Subject: "u-9", Issuer: "https://idp", LastSignIn: t0}); err != nil {
		t.Fatal(err)
	}
}

// TestPeopleOnEtcd: two nodes on one etcd index: B's cached record of a
// person follows A's writes through the change feed (new groups, a
// forget), and one node at a time holds the recheck duty.
func TestPeopleOnEtcd(t *testing.T) {
	c := etcdtest.Start(t, 1)
	blobs := t.TempDir()
	a := clusterNode(t, c, "people", blobs)
	b := clusterNode(t, c, "people", blobs)
	t0 := time.Now().UTC()
	eventually := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("B never saw %s", what)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	// B asked before alice existed (remembered as absent): A's sign-in
	// reaches it through the change feed.
	if _, ok, _ := b.Records().Person("alice"); ok {
		t.Fatal("B found alice before she signed in")
	}
	alice := PersonRecord{Name: "alice", Subject: "u-1", Issuer: "https://idp", Groups: []string{"devs"}, LastSignIn: t0}
	if _, err := a.Records().RecordSignIn(alice); err != nil {
		t.Fatal(err)
	}
	eventually("alice", func() bool { p, ok, _ := b.Records().Person("alice"); return ok && p.Groups[0] == "devs" })
	alice.Groups, alice.LastSignIn = []string{"ops"}, t0.Add(time.Minute)
	if _, err := a.Records().RecordSignIn(alice); err != nil {
		t.Fatal(err)
	}
	eventually("alice's new groups", func() bool { p, _, _ := b.Records().Person("alice"); return slices.Equal(p.Groups, []string{"ops"}) })
	if _, err := a.Records().ForgetPerson("alice"); err != nil {
		t.Fatal(err)
	}
	eventually("alice forgotten", func() bool { _, ok, _ := b.Records().Person("alice"); return !ok })

	release, ok, err := a.Records().Claim("sso-recheck")
	if !ok || err != nil {
		t.Fatalf("A claims the recheck: %v %v", ok, err)
	}
	if _, ok, err := b.Records().Claim("sso-recheck"); ok || err != nil {
		t.Fatalf("B claimed the recheck while A held it: %v %v", ok, err)
	}
	release()
	if rel, ok, err := b.Records().Claim("sso-recheck"); !ok || err != nil {
		t.Fatalf("B after A released: %v %v", ok, err)
	} else {
		rel()
	}
}
