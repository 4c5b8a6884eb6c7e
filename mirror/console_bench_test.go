package mirror

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
)

// BenchmarkConsolePages renders the console's pages over 500 repositories
// of 4 tags each (2000 images): the overview with its reclaimable figure
// computed afresh (a preview from the last collection's snapshot: the
// first view's dry run took it), the repository list, one repository's
// page and a delete's confirmation (two previews: with and without the
// tag).
func BenchmarkConsolePages(b *testing.B) {
	reg := newTestRegistry(b, Options{AllowDelete: true})
	for i := range 500 {
		for _, tag := range []string{"v1", "v2", "v3", "latest"} {
			reg.pushImage(b, fmt.Sprintf("team/app%03d", i), tag, nil)
		}
	}
	r := reg.reg()
	for _, c := range []struct {
		name, path string
		fresh      bool
	}{
		{"overview", "/", true},
		{"repositories", "/repositories?sort=size&order=desc", false},
		{"repository", "/repositories/team/app123", false},
		{"confirm", "/repositories/team/app123?action=delete&ref=v1", false},
	} {
		b.Run(c.name, func(b *testing.B) {
			for b.Loop() {
				if c.fresh {
					r.svc.ForgetReclaimable()
				}
				w := httptest.NewRecorder()
				r.ServeHTTP(w, httptest.NewRequest("GET", c.path, nil))
				if w.Code != http.StatusOK {
					b.Fatalf("%s: %d", c.path, w.Code)
				}
			}
		})
	}
}
