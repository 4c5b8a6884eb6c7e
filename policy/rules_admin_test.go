package policy

import "testing"

// TestRegistryAdmin: admin on the whole registry takes a rule on "**";
// a rule on part of the names gives admin there only; with no users
// everyone is admin, as everyone may do everything.
func TestRegistryAdmin(t *testing.T) {
	p, err := New(3, Config{Rules: []Rule{
		{Repos: []string{"team/**"}, Who: []string{"alice"}, Actions: []Action{Pull, Admin}},
		{Repos: []string{"*"}, Who: []string{"bob"}, Actions: []Action{Admin}},
		{Repos: []string{"**"}, Who: []string{"root"}, Actions: []Action{Pull, Admin}},
		{Repos: []string{"**"}, Who: []string{"users"}, Actions: []Action{Pull}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	for user, want := range map[string]bool{"root": true, "alice": false, "bob": false, "carol": false, "": false} {
		if got := p.RegistryAdmin(Subject{User: user}); got != want {
			t.Errorf("RegistryAdmin(%q) = %v", user, got)
		}
	}
	if !p.Allowed(Subject{User: "alice"}, "team/app", Admin, false) || p.Allowed(Subject{User: "alice"}, "other/app", Admin, false) {
		t.Error("alice's admin on team/** only")
	}
	open, _ := New(0, Config{})
	if !open.RegistryAdmin(Subject{}) {
		t.Error("no users: everyone is admin")
	}
	if _, err := New(1, Config{Rules: []Rule{{Repos: []string{"**"}, Who: []string{"x"}, Actions: []Action{"root"}}}}); err == nil {
		t.Error("an unknown action accepted")
	}
}
