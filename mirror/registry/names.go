package registry

import (
	"strings"

	"github.com/opencontainers/go-digest"

	"github.com/wharf-registry/wharf/cache"
	"github.com/wharf-registry/wharf/mirror/oci"
)

// parseDigest accepts sha256 and sha512 digests.
func parseDigest(s string) (digest.Digest, error) {
	d := digest.Digest(s)
	if cache.ValidateDigest(d) != nil {
		return "", oci.Errorf(oci.CodeDigestInvalid, "invalid digest %q", s)
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
	return reference{tag: s}, oci.CheckTag(s)
}
