package mirror

import (
	"regexp"
	"strings"

	"github.com/opencontainers/go-digest"

	"github.com/wharf-registry/wharf/cache"
)

// The distribution reference grammar for repository paths and tags.
var (
	nameRE = regexp.MustCompile(`^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$`)
	tagRE  = regexp.MustCompile(`^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$`)
)

const maxNameLength = 255

func validName(name string) bool {
	return len(name) <= maxNameLength && nameRE.MatchString(name)
}

func checkName(name string) error {
	if !validName(name) {
		return apiErr(codeNameInvalid, "invalid repository name %q", name)
	}
	return nil
}

func checkTag(tag string) error {
	if !tagRE.MatchString(tag) {
		return apiErr(codeTagInvalid, "invalid tag %q", tag)
	}
	return nil
}

// parseDigest accepts sha256 and sha512 digests.
func parseDigest(s string) (digest.Digest, error) {
	d := digest.Digest(s)
	if cache.ValidateDigest(d) != nil {
		return "", apiErr(codeDigestInvalid, "invalid digest %q", s)
	}
	return d, nil
}

// parseReference reads a manifest reference: a digest when it holds a
// colon (tags cannot), a tag otherwise.
func parseReference(s string) (reference, error) {
	if strings.Contains(s, ":") {
		d, err := parseDigest(s)
		return reference{digest: d}, err
	}
	return reference{tag: s}, checkTag(s)
}
