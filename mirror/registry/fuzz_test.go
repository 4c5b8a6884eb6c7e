package registry

import (
	"net/http"
	"regexp"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	"github.com/wharf-registry/wharf/mirror/oci"
)

// The distribution reference grammar, as regexps: the oracle of the
// hand-written checks.
var (
	nameRE = regexp.MustCompile(`^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$`)
	tagRE  = regexp.MustCompile(`^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$`)
)

func FuzzNameAndReference(f *testing.F) {
	for _, s := range [][2]string{{"library/alpine", "latest"}, {"a/b", "sha256:" + strings.Repeat("a", 64)}, {"Bad", "-x"}, {"a..b", "sha512:zz"}} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, name, ref string) {
		// The hand-written checks agree with the grammar's regexps.
		if got, want := oci.CheckName(name) == nil, len(name) <= oci.MaxNameLength && nameRE.MatchString(name); got != want {
			t.Fatalf("name %q: accepted %v, grammar says %v", name, got, want)
		}
		if got, want := oci.CheckTag(ref) == nil, tagRE.MatchString(ref); got != want {
			t.Fatalf("tag %q: accepted %v, grammar says %v", ref, got, want)
		}
		if r, err := parseReference(ref); err == nil {
			if strings.Contains(ref, ":") != r.isDigest() || r.String() != ref {
				t.Fatalf("reference %q parsed as %+v", ref, r)
			}
			if r.isDigest() {
				if err := digest.Digest(ref).Validate(); err != nil {
					t.Fatalf("accepted digest reference %q: %v", ref, err)
				}
			}
		}
	})
}

func FuzzParseDigest(f *testing.F) {
	f.Add("sha256:" + strings.Repeat("0", 64))
	f.Add("sha512:" + strings.Repeat("f", 128))
	f.Add("md5:d41d8cd98f00b204e9800998ecf8427e")
	f.Add("sha256:ABC")
	f.Fuzz(func(t *testing.T, s string) {
		d, err := parseDigest(s)
		if err != nil {
			return
		}
		if a := d.Algorithm(); (a != digest.SHA256 || len(d.Encoded()) != 64) && (a != digest.SHA512 || len(d.Encoded()) != 128) {
			t.Fatalf("accepted %q", s)
		}
		if strings.ContainsAny(d.Encoded(), "/\\.ABCDEF") {
			t.Fatalf("accepted %q, unsafe in a path", s)
		}
	})
}

func FuzzContentRange(f *testing.F) {
	for _, s := range []string{"0-9", "bytes 10-19", "5-4", "a-b", "-1-3", "18446744073709551615-0"} {
		f.Add(s, int64(10))
	}
	f.Fuzz(func(t *testing.T, header string, length int64) {
		r := &http.Request{Header: http.Header{"Content-Range": {header}}, ContentLength: length}
		start, err := chunkStart(r)
		if err == nil && start < -1 {
			t.Fatalf("Content-Range %q: start %d", header, start)
		}
	})
}
