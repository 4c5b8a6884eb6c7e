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

// checkReference validates a manifest reference: a digest when it holds a
// colon, a tag otherwise.
func checkReference(ref string) error {
	if strings.Contains(ref, ":") {
		_, err := parseDigest(ref)
		return err
	}
	return checkTag(ref)
}
