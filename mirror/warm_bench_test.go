package mirror

import (
	"net/http"
	"net/http/httptest"
	"testing"
)

// BenchmarkWarmManifest is one warm GET of a mirrored manifest by tag,
// through the whole handler (routing, access, lookup, headers).
func BenchmarkWarmManifest(b *testing.B) {
	e := newMirrorEnv(b, Options{})
	e.hub.Push("library/app", "v1", smallImage(20))
	req := httptest.NewRequest("GET", "/v2/library/app/manifests/v1", nil)
	req.Header.Set("Accept", "application/vnd.oci.image.index.v1+json,application/vnd.docker.distribution.manifest.list.v2+json")
	w := httptest.NewRecorder()
	e.reg.ServeHTTP(w, req)
	if w.Code != http.StatusOK {
		b.Fatal(w.Code)
	}
	b.ReportAllocs()
	b.SetParallelism(16)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			w := httptest.NewRecorder()
			e.reg.ServeHTTP(w, req.Clone(req.Context()))
		}
	})
}
