package policy

import (
	"fmt"
	"regexp"
	"strings"
)

// A pin keeps mirrored images: `pin: ["docker.io/library/alpine:3.20",
// "ghcr.io/org/app:*"]`. A pinned tag is never evicted, by the quota or by
// --retention; it is revalidated on the tag TTL as usual. Names are those
// of pulls (alpine is docker.io/library/alpine); the tag is a glob.
type pin struct {
	repo  string
	tag   *regexp.Regexp
	exact string // the tag when it is no glob: fetched ahead (PinnedTags)
	t     Target
}

func compilePins(pins []string) ([]pin, error) {
	var out []pin
	for _, p := range pins {
		slash := strings.LastIndex(p, "/")
		colon := strings.LastIndex(p, ":")
		if colon <= slash || colon == len(p)-1 {
			return nil, fmt.Errorf("pin %q: want NAME:TAG (the tag may be a glob: ghcr.io/org/app:*)", p)
		}
		name, tag := p[:colon], p[colon+1:]
		t := Mirror(name, "")
		re, err := compilePattern(tag)
		if err != nil {
			return nil, fmt.Errorf("pin %q: %w", p, err)
		}
		pn := pin{repo: t.Local, tag: re, t: t}
		if !strings.Contains(tag, "*") {
			pn.exact = tag
		}
		out = append(out, pn)
	}
	return out, nil
}

// Pinned reports whether tag of the mirrored repository repo (its local
// name, docker.io/library/alpine) is pinned.
func (p *Policy) Pinned(repo, tag string) bool {
	for _, pn := range p.pins {
		if pn.repo == repo && pn.tag.MatchString(tag) {
			return true
		}
	}
	return false
}

// PinnedTag is a pin that names one tag: the server fetches it ahead.
type PinnedTag struct {
	Target Target
	Tag    string
}

// PinnedTags are the pins that name one tag (no glob), in order.
func (p *Policy) PinnedTags() []PinnedTag {
	var out []PinnedTag
	for _, pn := range p.pins {
		if pn.exact != "" {
			out = append(out, PinnedTag{Target: pn.t, Tag: pn.exact})
		}
	}
	return out
}
