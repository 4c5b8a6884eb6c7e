package directory

import (
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/wharf-registry/wharf/internal/ldaptest"
)

// TestDirectory against the real slapd: a member signs in with its groups,
// a wrong password and an unknown user do not, a group change shows once
// the cache time has passed, and with slapd stopped a sign-in fails fast
// with ErrUnavailable while a known user's groups stay the last known.
func TestDirectory(t *testing.T) {
	srv := ldaptest.Start(t)
	srv.AddUser("alice", "alice-pw")
	srv.AddUser("bob", "bob-pw")
	srv.AddGroup("devs", "alice", "bob")
	srv.AddGroup("ops", "alice")
	d, err := New(Options{URL: srv.URL, BindDN: ldaptest.BindDN, BindPassword: ldaptest.BindPassword,
		UserBase: ldaptest.UserBase, GroupBase: ldaptest.GroupBase, CacheTTL: 300 * time.Millisecond, Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	groups, ok, err := d.Verify("alice", "alice-pw")
	slices.Sort(groups)
	if err != nil || !ok || !slices.Equal(groups, []string{"devs", "ops"}) {
		t.Fatalf("alice: %v %v %v", groups, ok, err)
	}
	for _, c := range [][2]string{{"alice", "wrong"}, {"carol", "x"}, {"alice", ""}, {"*", "alice-pw"}, {"alice)(uid=*", "alice-pw"}} {
		if _, ok, err := d.Verify(c[0], c[1]); ok || err != nil {
			t.Fatalf("%q/%q signed in: %v %v", c[0], c[1], ok, err)
		}
	}
	srv.RemoveFromGroup("ops", "alice")
	if g, _, _ := d.Verify("alice", "alice-pw"); !slices.Contains(g, "ops") {
		t.Fatalf("the cached sign-in lost a group within the cache time: %v", g)
	}
	time.Sleep(350 * time.Millisecond)
	if g, ok, _ := d.Verify("alice", "alice-pw"); !ok || slices.Contains(g, "ops") {
		t.Fatalf("after the cache time alice is still in ops: %v", g)
	}
	if g, ok, err := d.Groups("bob"); !ok || err != nil || !slices.Equal(g, []string{"devs"}) {
		t.Fatalf("bob's groups: %v %v %v", g, ok, err)
	}
	// An unknown name is remembered as unknown for the cache time (no
	// directory round trip per request of an htpasswd or single sign-on
	// user), then asked again.
	if _, ok, err := d.Groups("carol"); ok || err != nil {
		t.Fatalf("carol, unknown: %v %v", ok, err)
	}
	srv.AddUser("carol", "carol-pw")
	if _, ok, _ := d.Groups("carol"); ok {
		t.Fatal("the unknown carol was asked about again within the cache time")
	}
	time.Sleep(350 * time.Millisecond)
	if _, ok, err := d.Groups("carol"); !ok || err != nil {
		t.Fatalf("carol after the cache time: %v %v", ok, err)
	}
	srv.Stop()
	time.Sleep(350 * time.Millisecond)
	start := time.Now()
	if _, ok, err := d.Verify("bob", "bob-pw"); ok || !errors.Is(err, ErrUnavailable) {
		t.Fatalf("sign-in with slapd stopped: %v %v", ok, err)
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Fatalf("a sign-in with slapd stopped took %s", took)
	}
	if g, ok, err := d.Groups("bob"); !ok || err != nil || !slices.Equal(g, []string{"devs"}) {
		t.Fatalf("bob's last known groups with slapd stopped: %v %v %v", g, ok, err)
	}
}
