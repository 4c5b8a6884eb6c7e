package mirror

import (
	"strings"

	"github.com/opencontainers/go-digest"

	"github.com/wharf-registry/wharf/cache"
)

// The distribution reference grammar for repository paths and tags:
//
//	name: component ("/" component)*, component: [a-z0-9]+ (([._]|__|-+) [a-z0-9]+)*
//	tag:  [a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}
//
// checked by hand (every request checks its name: a regexp was a tenth of
// a warm manifest GET); names_test.go holds the regexps as the oracle.
const maxNameLength = 255

func validName(name string) bool {
	if len(name) == 0 || len(name) > maxNameLength {
		return false
	}
	for {
		c, rest, more := strings.Cut(name, "/")
		if !validComponent(c) {
			return false
		}
		if !more {
			return true
		}
		name = rest
	}
}

func isLowerAlnum(b byte) bool { return b >= 'a' && b <= 'z' || b >= '0' && b <= '9' }

func validComponent(c string) bool {
	i := 0
	for {
		// [a-z0-9]+
		start := i
		for i < len(c) && isLowerAlnum(c[i]) {
			i++
		}
		if i == start {
			return false
		}
		if i == len(c) {
			return true
		}
		// a separator: ".", "_", "__" or "-"+
		switch c[i] {
		case '.':
			i++
		case '_':
			i++
			if i < len(c) && c[i] == '_' {
				i++
			}
		case '-':
			for i < len(c) && c[i] == '-' {
				i++
			}
		default:
			return false
		}
	}
}

func validTag(tag string) bool {
	if len(tag) == 0 || len(tag) > 128 {
		return false
	}
	for i := 0; i < len(tag); i++ {
		b := tag[i]
		switch {
		case b >= 'a' && b <= 'z', b >= 'A' && b <= 'Z', b >= '0' && b <= '9', b == '_':
		case (b == '.' || b == '-') && i > 0:
		default:
			return false
		}
	}
	return true
}

func checkName(name string) error {
	if !validName(name) {
		return apiErr(codeNameInvalid, "invalid repository name %q", name)
	}
	return nil
}

func checkTag(tag string) error {
	if !validTag(tag) {
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
