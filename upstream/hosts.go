package upstream

import (
	"fmt"
	"net/url"
	"strings"

	"github.com/wharf-registry/wharf/upstream/regname"
)

// DockerHub is the name Docker Hub content is known by.
const DockerHub = regname.DockerHub

// Registry is one upstream registry: the name clients use for it, where to
// connect, and optional credentials (sent only to its auth realm).
type Registry struct {
	Name     string // "docker.io", "ghcr.io", ...
	Endpoint string // "https://registry-1.docker.io"; empty: https://<Name>
	Username string
	Password string
}

// NormalizeName maps Docker Hub's aliases to "docker.io".
func NormalizeName(name string) string { return regname.Normalize(name) }

func (r Registry) endpoint() (*url.URL, error) {
	ep := r.Endpoint
	switch {
	case ep == "" && r.Name == DockerHub:
		ep = "https://registry-1.docker.io"
	case ep == "":
		ep = "https://" + r.Name
	}
	u, err := url.Parse(ep)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("upstream %s: bad endpoint %q", r.Name, ep)
	}
	return u, nil
}

// ParseRegistry reads "name" or "name=endpoint" (the --upstream flag).
func ParseRegistry(s string) (Registry, error) {
	name, ep, _ := strings.Cut(s, "=")
	r := Registry{Name: NormalizeName(strings.TrimSpace(name)), Endpoint: strings.TrimSpace(ep)}
	if r.Name == "" {
		return r, fmt.Errorf("upstream %q: empty registry name", s)
	}
	_, err := r.endpoint()
	return r, err
}
