package policy

import (
	"strings"

	"github.com/wharf-registry/wharf/upstream/regname"
)

// Target is where a mirrored repository comes from and where its copy is
// kept.
type Target struct {
	Registry string // upstream registry name, e.g. "docker.io"
	Remote   string // repository at the upstream, e.g. "library/alpine"
	Local    string // repository in Wharf's store, e.g. "docker.io/library/alpine"
	// Named reports that the request named the registry itself (?ns=, or
	// a registry host as the first path component), rather than meaning
	// Docker Hub by default.
	Named bool
}

// Mirror maps a request's repository name and its ?ns= parameter to the
// upstream it mirrors:
//
//	library/alpine            → docker.io, library/alpine   (dockerd registry-mirrors)
//	alpine                    → docker.io, library/alpine   (a plain pull of wharf:5000/alpine)
//	org/app?ns=ghcr.io        → ghcr.io, org/app            (containerd hosts.toml mirror)
//	ghcr.io/org/app           → ghcr.io, org/app            (registry host as first path component)
//
// Docker Hub's single-component names get their library/ prefix. Local
// names always start with the registry, so mirrored copies never share a
// name with a pushed repository.
func Mirror(name, ns string) Target {
	var t Target
	switch {
	case ns != "":
		t.Registry, t.Remote, t.Named = regname.Normalize(ns), name, true
	case HasRegistryPrefix(name):
		host, rest, _ := strings.Cut(name, "/")
		t.Registry, t.Remote, t.Named = regname.Normalize(host), rest, true
	default:
		t.Registry, t.Remote = regname.DockerHub, name
	}
	if t.Registry == regname.DockerHub && !strings.Contains(t.Remote, "/") {
		t.Remote = "library/" + t.Remote
	}
	t.Local = t.Registry + "/" + t.Remote
	return t
}

// HasRegistryPrefix reports whether the first component of name is a
// registry host (it has a dot or a port, or is localhost) followed by a
// repository. It maps a request's name to a registry (Mirror); whether a
// repository holds mirrored or pushed content is never decided from it but
// from the origin the store recorded.
func HasRegistryPrefix(name string) bool {
	host, rest, ok := strings.Cut(name, "/")
	return ok && rest != "" && (strings.ContainsAny(host, ".:") || host == "localhost")
}
