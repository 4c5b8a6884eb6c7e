package mirror

import (
	"net/http"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
)

func FuzzNameAndReference(f *testing.F) {
	for _, s := range [][2]string{{"library/alpine", "latest"}, {"a/b", "sha256:" + strings.Repeat("a", 64)}, {"Bad", "-x"}, {"a..b", "sha512:zz"}} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, name, ref string) {
		if checkName(name) == nil && (len(name) > maxNameLength || !nameRE.MatchString(name) || strings.Contains(name, "//")) {
			t.Fatalf("accepted name %q", name)
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

func FuzzRange(f *testing.F) {
	for _, s := range []string{"bytes=0-9", "bytes=-5", "bytes=5-", "bytes=9-2", "bytes=0-1,3-4", "bytes=99999999999999999999-"} {
		f.Add(s, int64(100))
	}
	f.Fuzz(func(t *testing.T, h string, size int64) {
		if size < 0 {
			return
		}
		start, n, _, ok := singleRange(h, size)
		if ok && (start < 0 || n < 0 || start+n > size || (h != "" && n == 0)) {
			t.Fatalf("Range %q on %d bytes: start %d n %d", h, size, start, n)
		}
	})
}
