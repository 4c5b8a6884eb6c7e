package policy

import "testing"

// TestScope: a scoped subject gets what both the rules and its scope
// allow, never more: not a repository outside the scope, not an action
// the rules deny, and registry admin only with admin on "**".
func TestScope(t *testing.T) {
	pol, err := New(1, Config{Rules: []Rule{
		{Repos: []string{"team/**"}, Who: []string{"alice"}, Actions: []Action{Pull, Push, Delete}},
		{Repos: []string{"**"}, Who: []string{"root"}, Actions: []Action{Pull, Push, Delete, Admin}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	sc, err := NewScope([]string{"team/app", "other/**"}, []Action{Pull, Push})
	if err != nil {
		t.Fatal(err)
	}
	alice := Subject{User: "alice", Scope: sc}
	for _, c := range []struct {
		repo string
		a    Action
		want bool
	}{
		{"team/app", Pull, true}, {"team/app", Push, true},
		{"team/app", Delete, false},  // the rules allow it, the scope does not
		{"team/other", Pull, false},  // outside the scope
		{"other/thing", Push, false}, // inside the scope, the rules deny it
	} {
		if got := pol.Allowed(alice, c.repo, c.a, false); got != c.want {
			t.Errorf("%s %s: %v, want %v", c.a, c.repo, got, c.want)
		}
	}
	if !pol.Allowed(Subject{User: "alice"}, "team/app", Delete, false) {
		t.Fatal("without a scope the rules decide")
	}
	narrow, _ := NewScope([]string{"team/**"}, []Action{Pull, Admin})
	all, _ := NewScope([]string{"**"}, []Action{Admin})
	if pol.RegistryAdmin(Subject{User: "root", Scope: narrow}) || !pol.RegistryAdmin(Subject{User: "root", Scope: all}) || !pol.RegistryAdmin(Subject{User: "root"}) {
		t.Fatal("registry admin: only a scope with admin on ** keeps it")
	}
	for _, bad := range []struct {
		repos   []string
		actions []Action
	}{{nil, []Action{Pull}}, {[]string{"a"}, nil}, {[]string{"a"}, []Action{"fly"}}, {[]string{""}, []Action{Pull}}} {
		if _, err := NewScope(bad.repos, bad.actions); err == nil {
			t.Errorf("NewScope(%v, %v) accepted", bad.repos, bad.actions)
		}
	}
}
