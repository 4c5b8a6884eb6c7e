package policy

import "testing"

func TestMirror(t *testing.T) {
	cases := []struct{ name, ns, registry, remote, local string }{
		{"library/alpine", "", "docker.io", "library/alpine", "docker.io/library/alpine"},
		{"alpine", "", "docker.io", "library/alpine", "docker.io/library/alpine"},
		{"someuser/app", "", "docker.io", "someuser/app", "docker.io/someuser/app"},
		{"org/app", "ghcr.io", "ghcr.io", "org/app", "ghcr.io/org/app"},
		{"alpine", "docker.io", "docker.io", "library/alpine", "docker.io/library/alpine"},
		{"library/alpine", "index.docker.io", "docker.io", "library/alpine", "docker.io/library/alpine"},
		{"ghcr.io/org/app", "", "ghcr.io", "org/app", "ghcr.io/org/app"},
		{"docker.io/nginx", "", "docker.io", "library/nginx", "docker.io/library/nginx"},
		{"registry-1.docker.io/library/nginx", "", "docker.io", "library/nginx", "docker.io/library/nginx"},
		{"quay.io/a/b/c", "", "quay.io", "a/b/c", "quay.io/a/b/c"},
		{"localhost/app", "", "localhost", "app", "localhost/app"},
		{"team.x", "", "docker.io", "library/team.x", "docker.io/library/team.x"},
	}
	for _, c := range cases {
		got := Mirror(c.name, c.ns)
		if got.Registry != c.registry || got.Remote != c.remote || got.Local != c.local {
			t.Errorf("Mirror(%q, %q) = %+v, want %s %s %s", c.name, c.ns, got, c.registry, c.remote, c.local)
		}
	}
}
