package mirror

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/wharf-registry/wharf/mirror/registry"
)

// BenchmarkWarmManifest is one warm GET of a mirrored manifest by tag,
// through the whole handler (routing, access, lookup, headers), with
// metrics on, as production runs it.
func BenchmarkWarmManifest(b *testing.B) {
	e := newMirrorEnv(b, Options{Metrics: registry.NewMetrics(prometheus.NewRegistry())})
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

// discardWriter is a ResponseWriter that keeps nothing: the benchmark's
// allocations are then the handler's own (a real server reuses its
// per-connection writer in the same way).
type discardWriter struct {
	h    http.Header
	code int
}

func (w *discardWriter) Header() http.Header         { return w.h }
func (w *discardWriter) WriteHeader(code int)        { w.code = code }
func (w *discardWriter) Write(p []byte) (int, error) { return len(p), nil }

// BenchmarkWarmManifestHandler is BenchmarkWarmManifest without the test
// recorder and request copies: what it reports is Wharf's own cost per
// warm manifest GET by tag (the "allocations in Wharf's code").
func BenchmarkWarmManifestHandler(b *testing.B) {
	for _, c := range []struct{ name, repo string }{{"mirrored", "library/app"}, {"pushed", "team/app"}} {
		b.Run(c.name, func(b *testing.B) {
			e := newMirrorEnv(b, Options{Metrics: registry.NewMetrics(prometheus.NewRegistry())})
			if c.repo == "library/app" {
				e.hub.Push("library/app", "v1", smallImage(20))
			} else {
				e.pushImage(b, "team/app", "v1", nil)
			}
			req := httptest.NewRequest("GET", "/v2/"+c.repo+"/manifests/v1", nil)
			req.Header.Set("Accept", "application/vnd.oci.image.index.v1+json,application/vnd.oci.image.manifest.v1+json,application/vnd.docker.distribution.manifest.list.v2+json")
			w := &discardWriter{h: http.Header{}}
			e.reg.ServeHTTP(w, req)
			if w.code != 0 && w.code != http.StatusOK {
				b.Fatal(w.code)
			}
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				clear(w.h)
				w.code = 0
				e.reg.ServeHTTP(w, req)
			}
		})
	}
}
