package policy

import (
	"fmt"
	"strings"
	"testing"
)

func TestRules(t *testing.T) {
	no := false
	pol, err := New(3, Config{
		AnonymousMirrorPull: &no,
		Groups:              map[string][]string{"ci": {"bot"}, "devs": {"alice", "bob"}},
		Rules: []Rule{
			{Repos: []string{"team/secret"}, Who: []string{"alice"}, Actions: []Action{Pull, Push, Delete}},
			{Repos: []string{"team/*"}, Who: []string{"group:devs"}, Actions: []Action{Pull, Push}},
			{Repos: []string{"team/*"}, Who: []string{"group:ci"}, Actions: []Action{Pull}},
			{Repos: []string{"public/**"}, Who: []string{"anonymous"}, Actions: []Action{Pull}},
			{Repos: []string{"public/**"}, Who: []string{"users"}, Actions: []Action{Pull, Push}},
			{Repos: []string{"library/internal"}, Who: []string{"bot"}, Actions: []Action{Push}},
			{Repos: []string{"docker.io/library/*"}, Who: []string{"everyone"}, Actions: []Action{Pull}},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	anon, alice, bob, bot, eve := Subject{}, Subject{User: "alice"}, Subject{User: "bob"}, Subject{User: "bot"}, Subject{User: "eve"}
	cases := []struct {
		s        Subject
		repo     string
		mirrored bool
		allowed  string // actions allowed, e.g. "pull,push"
	}{
		// exact pattern, user
		{alice, "team/secret", false, "pull,push,delete"},
		{bob, "team/secret", false, "pull,push"}, // falls to team/* for devs
		{bot, "team/secret", false, "pull"},
		{anon, "team/secret", false, ""},
		// one-component pattern, groups
		{bob, "team/app", false, "pull,push"},
		{bot, "team/app", false, "pull"},
		{eve, "team/app", false, ""},
		{bob, "team/app/sub", false, ""}, // * does not cross /
		// recursive pattern, anonymous / users
		{anon, "public/a/b", false, "pull"},
		{eve, "public/a/b", false, "pull,push"},
		// no rule: private content closed to everyone
		{alice, "other/app", false, ""},
		{anon, "other/app", false, ""},
		// mirrored content: a rule, or the default (signed-in users pull;
		// anonymous only with anonymous-mirror-pull, off here)
		{anon, "docker.io/library/alpine", true, "pull"},
		{anon, "ghcr.io/org/app", true, ""},
		{eve, "ghcr.io/org/app", true, "pull"},
		// explicit push over a mirrored name
		{bot, "library/internal", false, "push"},
	}
	for _, c := range cases {
		var got []string
		for _, a := range []Action{Pull, Push, Delete} {
			if pol.Allowed(c.s, c.repo, a, c.mirrored) {
				got = append(got, string(a))
			}
		}
		if strings.Join(got, ",") != c.allowed {
			t.Errorf("%q on %s (mirrored %v): allowed %v, want %q", c.s.User, c.repo, c.mirrored, got, c.allowed)
		}
	}
	if !pol.Explicit(bot, "library/internal", Push) || pol.Explicit(alice, "library/internal", Push) {
		t.Error("Explicit push over a mirrored name")
	}
}

func TestOpenAndDefaults(t *testing.T) {
	open, _ := New(0, Config{})
	for _, a := range []Action{Pull, Push, Delete} {
		if !open.Allowed(Subject{}, "team/app", a, false) {
			t.Errorf("no users: %s denied", a)
		}
	}
	if open.Explicit(Subject{}, "library/alpine", Push) {
		t.Error("no users: pushing over a mirrored name needs an explicit rule all the same")
	}
	closed, _ := New(1, Config{})
	if !closed.Allowed(Subject{}, "docker.io/library/alpine", Pull, true) {
		t.Error("users exist: anonymous mirror pulls are on by default")
	}
	for _, a := range []Action{Pull, Push, Delete} {
		if closed.Allowed(Subject{}, "team/app", a, false) || closed.Allowed(Subject{User: "u"}, "team/app", a, false) {
			t.Errorf("users exist: %s on private content allowed without a rule", a)
		}
	}
	if closed.Allowed(Subject{}, "docker.io/library/alpine", Push, true) {
		t.Error("push to mirrored content allowed")
	}
	if _, err := New(1, Config{Rules: []Rule{{Repos: []string{"a"}, Who: []string{"x"}, Actions: []Action{"write"}}}}); err == nil {
		t.Error("unknown action accepted")
	}
	if _, err := New(1, Config{Rules: []Rule{{Repos: []string{"a"}, Who: []string{"x"}}}}); err == nil {
		t.Error("a rule without actions accepted")
	}
}

func TestHtpasswd(t *testing.T) {
	u := newUsers()
	if err := u.Set("alice", "s3cret"); err != nil {
		t.Fatal(err)
	}
	file := t.TempDir() + "/htpasswd"
	if err := u.WriteFile(file); err != nil {
		t.Fatal(err)
	}
	back, err := LoadHtpasswd(file)
	if err != nil || back.Len() != 1 || !back.Verify("alice", "s3cret") || back.Verify("alice", "wrong") || back.Verify("bob", "s3cret") {
		t.Fatalf("round trip: %v", err)
	}
	if !back.Verify("alice", "s3cret") { // cached path
		t.Fatal("cached verification failed")
	}
	for _, bad := range []string{
		"bob:$apr1$abc$def\n",
		"carol:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n",
		"dave:plaintext\n",
		"nocolon\n",
	} {
		_, err := ParseHtpasswd(strings.NewReader("# users\n" + bad))
		if err == nil || !strings.Contains(err.Error(), "line 2") {
			t.Errorf("%q: %v (want an error naming line 2)", bad, err)
		}
	}
}

func FuzzParseHtpasswd(f *testing.F) {
	f.Add("alice:$2y$05$abcdefghijklmnopqrstuuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZa\n")
	f.Add("# c\n\nbob:$apr1$x$y\n")
	f.Fuzz(func(t *testing.T, s string) {
		u, err := ParseHtpasswd(strings.NewReader(s))
		if err == nil && u == nil {
			t.Fatal("nil users without error")
		}
		_ = fmt.Sprint(err)
	})
}

func TestImmutableTags(t *testing.T) {
	p, err := New(1, Config{Immutable: []ImmutableRule{{Repos: []string{"team/**"}, Tags: []string{"v*", "latest"}}}})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		repo, tag string
		want      bool
	}{
		{"team/app", "v1.0", true}, {"team/a/b", "latest", true}, {"team/app", "dev", false},
		{"other/app", "v1", false}, {"team/app", "xv1", false},
	} {
		rule, ok := p.ImmutableTag(c.repo, c.tag)
		if ok != c.want || (ok && !strings.Contains(rule, "immutable rule 1 (repos team/**, tags v*, latest)")) {
			t.Errorf("%s:%s: %v %q, want %v", c.repo, c.tag, ok, rule, c.want)
		}
	}
	if _, err := New(1, Config{Immutable: []ImmutableRule{{Repos: []string{"team/**"}}}}); err == nil {
		t.Fatal("an immutable rule without tags was accepted")
	}
}
