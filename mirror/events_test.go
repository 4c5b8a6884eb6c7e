package mirror

import (
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/opencontainers/go-digest"
	"github.com/wharf-registry/wharf/mirror/auth"
)

// recorder is a listener of Events that keeps what it was told.
type recorder struct {
	mu      sync.Mutex
	audits  []auth.AuditEvent
	pulls   []string
	refused []string
}

func (r *recorder) Audit(e auth.AuditEvent) {
	r.mu.Lock()
	r.audits = append(r.audits, e)
	r.mu.Unlock()
}

func (r *recorder) Pulled(repo, ref string) {
	r.mu.Lock()
	r.pulls = append(r.pulls, repo+":"+ref)
	r.mu.Unlock()
}

func (r *recorder) Refused(repo, msg string) {
	r.mu.Lock()
	r.refused = append(r.refused, msg)
	r.mu.Unlock()
}

func (r *recorder) events(kind string) (n int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, e := range r.audits {
		if e.Event == kind {
			n++
		}
	}
	return n
}

// TestEvents: what the data plane did reaches Options.Events as well as
// the registry's own book: a push and a delete (audit), a pull (and the
// store's pull count, which the book keeps), and a refused request.
func TestEvents(t *testing.T) {
	rec := &recorder{}
	r := newTestRegistry(t, Options{Events: rec, AllowDelete: true})
	manifest := r.pushImage(t, "team/app", "v1", nil)
	if resp, _ := r.do(t, http.MethodGet, "/v2/team/app/manifests/v1", nil, nil); resp.StatusCode != http.StatusOK {
		t.Fatalf("pull: %s", resp.Status)
	}
	if resp, _ := r.do(t, http.MethodGet, "/v2/team/app/manifests/v9", nil, nil); resp.StatusCode != http.StatusNotFound {
		t.Fatalf("pull of a missing tag: %s", resp.Status)
	}
	d := digest.FromBytes(manifest)
	if resp, _ := r.do(t, http.MethodDelete, "/v2/team/app/manifests/"+d.String(), nil, nil); resp.StatusCode != http.StatusAccepted {
		t.Fatalf("delete: %s", resp.Status)
	}
	if n := rec.events("push"); n != 1 {
		t.Errorf("%d push events, want 1", n)
	}
	if n := rec.events("delete"); n != 1 {
		t.Errorf("%d delete events, want 1", n)
	}
	rec.mu.Lock()
	pulls, refused := append([]string(nil), rec.pulls...), strings.Join(rec.refused, "\n")
	rec.mu.Unlock()
	if len(pulls) != 1 || pulls[0] != "team/app:v1" {
		t.Errorf("pulls %q, want team/app:v1 once", pulls)
	}
	if !strings.Contains(refused, "404 GET /v2/team/app/manifests/v9") {
		t.Errorf("refused: %q", refused)
	}
	// The book saw the same: the store's pull count.
	if p, err := r.store.Records().Pulls("team/app"); err != nil || p["v1"].Count != 1 {
		t.Errorf("the store's pull count of v1: %+v %v", p["v1"], err)
	}
}
