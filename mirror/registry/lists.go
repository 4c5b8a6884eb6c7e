package registry

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"

	"github.com/wharf-registry/wharf/mirror/auth"
	"github.com/wharf-registry/wharf/mirror/oci"
)

// defaultCatalogPage bounds a catalog answer when the client sets no n.
const defaultCatalogPage = 1000

func (reg *Registry) tags(w http.ResponseWriter, r *http.Request, q *request) error {
	n, last, err := pageParams(r, -1)
	if err != nil {
		return err
	}
	tags, more, err := reg.store.Tags(q.repo, n, last)
	if err != nil {
		return err
	}
	if more && n > 0 {
		setNextLink(w, "/v2/"+q.name+"/tags/list", n, tags[len(tags)-1])
	}
	return writeJSON(w, r, "application/json", map[string]any{"name": q.name, "tags": tags})
}

func (reg *Registry) catalog(w http.ResponseWriter, r *http.Request, _ *request) error {
	n, last, err := pageParams(r, defaultCatalogPage)
	if err != nil {
		return err
	}
	repos, more, err := reg.visibleRepos(r, n, last)
	if err != nil {
		return err
	}
	if more && n > 0 {
		setNextLink(w, "/v2/_catalog", n, repos[len(repos)-1])
	}
	return writeJSON(w, r, "application/json", map[string]any{"repositories": repos})
}

func (reg *Registry) referrers(w http.ResponseWriter, r *http.Request, q *request) error {
	descs, err := reg.store.Referrers(q.repo, q.digest)
	if err != nil {
		return err
	}
	return writeReferrers(w, r, descs, r.URL.Query().Get("artifactType"))
}

// visibleRepos pages through the catalog keeping what the caller may pull
// (anonymous-mirror-pull applies to repositories recorded as mirrored).
func (reg *Registry) visibleRepos(r *http.Request, n int, last string) ([]string, bool, error) {
	return reg.gate.Visible(auth.CallerOf(r).Subject, n, last, reg.store.Catalog, func(repo string) bool { return reg.origin(repo).Mirrored() })
}

// pageParams reads n and last; n is def when absent.
func pageParams(r *http.Request, def int) (int, string, error) {
	q := r.URL.Query()
	n := def
	if s := q.Get("n"); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v < 0 {
			return 0, "", &oci.Error{Code: oci.CodeUnsupported, Status: http.StatusBadRequest, Message: fmt.Sprintf("invalid n %q", s)}
		}
		n = v
	}
	return n, q.Get("last"), nil
}

func setNextLink(w http.ResponseWriter, path string, n int, last string) {
	q := url.Values{"n": {strconv.Itoa(n)}, "last": {last}}
	w.Header().Set("Link", fmt.Sprintf(`<%s?%s>; rel="next"`, path, q.Encode()))
}

func writeJSON(w http.ResponseWriter, r *http.Request, contentType string, v any) error {
	body, err := json.Marshal(v)
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", contentType)
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		w.Write(body)
	}
	return nil
}
