package mirror

import (
	"bytes"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
)

// FuzzRange sends GETs with any Range header for a stored blob and checks
// the answer: the whole blob (200), exactly the bytes a single range names
// (206), a multipart answer, or 416 — never an impossible range.
func FuzzRange(f *testing.F) {
	for _, s := range []string{"bytes=0-9", "bytes=-5", "bytes=5-", "bytes=9-2", "bytes=0-1,3-4", "bytes=99999999999999999999-", "bytes=-0", "bytes=-0,-00"} {
		f.Add(s)
	}
	reg := newTestRegistry(&testing.T{}, Options{})
	content := []byte(strings.Repeat("0123456789", 10))
	d := digest.FromBytes(content)
	if err := reg.store.Uploads().PutBlob("fuzz/range", d, -1, bytes.NewReader(content)); err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { reg.srv.Close(); reg.store.Close() })
	f.Fuzz(func(t *testing.T, h string) {
		req := httptest.NewRequest(http.MethodGet, "/v2/fuzz/range/blobs/"+d.String(), nil)
		req.Header.Set("Range", h)
		w := httptest.NewRecorder()
		reg.srv.Config.Handler.ServeHTTP(w, req)
		body := w.Body.Bytes()
		switch cr := w.Header().Get("Content-Range"); w.Code {
		case http.StatusOK:
			if !bytes.Equal(body, content) {
				t.Fatalf("Range %q: 200 with %d bytes", h, len(body))
			}
		case http.StatusPartialContent:
			if strings.HasPrefix(w.Header().Get("Content-Type"), "multipart/") {
				return
			}
			var a, b, size int
			if _, err := fmt.Sscanf(cr, "bytes %d-%d/%d", &a, &b, &size); err != nil || a < 0 || b < a || b >= len(content) || size != len(content) {
				t.Fatalf("Range %q: 206 with Content-Range %q", h, cr)
			}
			if !bytes.Equal(body, content[a:b+1]) {
				t.Fatalf("Range %q: 206 %q with the wrong %d bytes", h, cr, len(body))
			}
		case http.StatusRequestedRangeNotSatisfiable:
		default:
			t.Fatalf("Range %q: status %d", h, w.Code)
		}
	})
}
