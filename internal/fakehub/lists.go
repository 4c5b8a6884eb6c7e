package fakehub

import (
	"encoding/json"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"

	"github.com/opencontainers/go-digest"
)

// Listings, as Docker Hub and CNCF Distribution answer them: tags/list
// paginated with n, last and a Link header, and (with SetReferrersAPI) the
// OCI 1.1 referrers API; without it, a referrers API request is a 404, as
// Distribution 3.1 answers, and PushReferrer keeps the referrers tag
// schema's index ("sha256-<hex>") instead, as clients do then.

// SetReferrersAPI turns the referrers API on or off (off by default).
func (h *Hub) SetReferrersAPI(on bool) { h.set(func() { h.referrersAPI = on }) }

// PushReferrer adds to repo an artifact of artifactType whose subject is
// the manifest subject (a descriptor of it: digest, media type, size), and
// returns the artifact manifest's digest.
func (h *Hub) PushReferrer(repo string, subject digest.Digest, artifactType string, payload []byte) digest.Digest {
	h.mu.Lock()
	defer h.mu.Unlock()
	empty := []byte("{}")
	cfg := descriptor{MediaType: "application/vnd.oci.empty.v1+json", Digest: digest.FromBytes(empty), Size: 2}
	layer := descriptor{MediaType: "application/octet-stream", Digest: digest.FromBytes(payload), Size: int64(len(payload))}
	subj := descriptor{MediaType: h.manifests[subject], Digest: subject, Size: int64(len(h.blobs[subject]))}
	body, _ := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": MediaTypeOCIManifest, "artifactType": artifactType,
		"config": cfg, "layers": []descriptor{layer}, "subject": subj})
	d := digest.FromBytes(body)
	if h.repoBlobs[repo] == nil {
		h.repoBlobs[repo] = map[digest.Digest]bool{}
	}
	for _, b := range [][]byte{empty, payload} {
		h.blobs[digest.FromBytes(b)] = b
		h.repoBlobs[repo][digest.FromBytes(b)] = true
	}
	h.blobs[d], h.manifests[d] = body, MediaTypeOCIManifest
	h.referrers = append(h.referrers, referrer{repo: repo, subject: subject, desc: map[string]any{
		"mediaType": MediaTypeOCIManifest, "digest": d, "size": len(body), "artifactType": artifactType}})
	// The tag schema's index, as a client without the API keeps it.
	idx, _ := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": MediaTypeOCIIndex, "manifests": h.referrersOf(repo, subject)})
	id := digest.FromBytes(idx)
	h.blobs[id], h.manifests[id] = idx, MediaTypeOCIIndex
	h.tags[repo+":"+subject.Algorithm().String()+"-"+subject.Encoded()] = id
	return d
}

type referrer struct {
	repo    string
	subject digest.Digest
	desc    map[string]any
}

func (h *Hub) referrersOf(repo string, subject digest.Digest) []map[string]any {
	out := []map[string]any{}
	for _, r := range h.referrers {
		if r.repo == repo && r.subject == subject {
			out = append(out, r.desc)
		}
	}
	return out
}

// serveTags answers GET /v2/<repo>/tags/list.
func (h *Hub) serveTags(w http.ResponseWriter, r *http.Request, repo string) {
	h.count("GET tags")
	h.mu.Lock()
	var tags []string
	for k := range h.tags {
		if name, tag, _ := strings.Cut(k, ":"); name == repo {
			tags = append(tags, tag)
		}
	}
	_, exists := h.repoBlobs[repo]
	h.mu.Unlock()
	if !exists {
		writeErr(w, http.StatusNotFound, "NAME_UNKNOWN", "repository name not known to registry")
		return
	}
	sort.Strings(tags)
	q := r.URL.Query()
	if last := q.Get("last"); last != "" {
		i := sort.SearchStrings(tags, last)
		if i < len(tags) && tags[i] == last {
			i++
		}
		tags = tags[i:]
	}
	n := 100 // Docker Hub's page when n is not given
	if v, err := strconv.Atoi(q.Get("n")); err == nil && v > 0 {
		n = min(v, 100) // and its cap, whatever n asks for
	}
	if len(tags) > n {
		tags = tags[:n]
		next := url.Values{"n": {strconv.Itoa(n)}, "last": {tags[n-1]}}
		w.Header().Set("Link", `</v2/`+repo+`/tags/list?`+next.Encode()+`>; rel="next"`)
	}
	if tags == nil {
		tags = []string{}
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]any{"name": repo, "tags": tags})
}

// serveReferrers answers GET /v2/<repo>/referrers/<digest>.
func (h *Hub) serveReferrers(w http.ResponseWriter, r *http.Request, repo, ref string) {
	h.count("GET referrers")
	h.mu.Lock()
	on := h.referrersAPI
	ms := h.referrersOf(repo, digest.Digest(ref))
	h.mu.Unlock()
	if !on {
		writeErr(w, http.StatusNotFound, "UNSUPPORTED", "no such endpoint")
		return
	}
	w.Header().Set("Content-Type", MediaTypeOCIIndex)
	json.NewEncoder(w).Encode(map[string]any{"schemaVersion": 2, "mediaType": MediaTypeOCIIndex, "manifests": ms})
}
