package cache

import (
	"testing"
)

func FuzzParseManifest(f *testing.F) {
	f.Add(MediaTypeOCIManifest, `{"schemaVersion":2,"config":{"mediaType":"a","digest":"sha256:`+zeros(64)+`","size":1},"layers":[]}`)
	f.Add(MediaTypeOCIIndex, `{"schemaVersion":2,"manifests":[{"mediaType":"a","digest":"sha512:`+zeros(128)+`","size":1}]}`)
	f.Add("", `{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json"}`)
	f.Add(MediaTypeDockerList, `{"schemaVersion":1}`)
	f.Fuzz(func(t *testing.T, contentType, body string) {
		p, err := parseManifest(contentType, []byte(body))
		if err != nil {
			return
		}
		if p.mediaType == "" {
			t.Fatal("accepted a manifest without a media type")
		}
		for _, d := range append(append(p.blobs[:0:0], p.blobs...), p.children...) {
			if ValidateDigest(d) != nil {
				t.Fatalf("accepted reference %q", d)
			}
		}
	})
}

func zeros(n int) string {
	b := make([]byte, n)
	for i := range b {
		b[i] = '0'
	}
	return string(b)
}
