// Package fakehub is a test registry that behaves like Docker Hub: bearer
// token auth with a token realm, library/ images, manifest lists and OCI
// indexes, a pull rate limit that counts manifest GETs but not HEADs, blob
// redirects to a "CDN" path, and faults on demand (429, 5xx, latency,
// per-connection bandwidth, dropped connections, corrupted bytes). It
// counts every request so tests can assert on upstream traffic. It listens
// on loopback only.
package fakehub

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

// Hub is a fake Docker Hub. Knobs may be changed while it serves.
type Hub struct {
	srv *http.Server
	ln  net.Listener
	URL string // http://127.0.0.1:port

	mu        sync.Mutex
	tags      map[string]digest.Digest // repo:tag → manifest digest
	repoBlobs map[string]map[digest.Digest]bool
	blobs     map[digest.Digest][]byte // blobs and manifest bodies
	manifests map[digest.Digest]string // manifest digest → media type
	tokens    map[string]string        // issued token → scope
	counts    map[string]int
	// knobs
	auth        bool
	users       map[string]string // basic credentials accepted by the token realm
	latency     time.Duration
	bytesPerSec int64
	// totalBps caps all blob bodies together (a full link, a busy server);
	// totalNext is when the bytes sent so far are due.
	totalBps   int64
	totalNext  time.Time
	rateLimit  int // manifest GETs allowed (0: unlimited)
	retryAfter int
	failStatus int
	failNext   int // the next failNextN registry requests get failNext
	failNextN  int
	tokenFail  int // the next tokenFailN token requests get tokenFail (-1: hang)
	tokenFailN int
	dropAt     map[digest.Digest]int64 // the next GET of digest to reach byte n drops there
	corrupt    map[digest.Digest]bool
	redirect   bool
	cdnTTL     time.Duration // redirect URLs expire after this (0: never)
	noLength   bool          // blob GETs answer chunked, without Content-Length
	noRanges   bool          // blob GETs ignore Range and answer 200 with everything
	credLeaks  int           // requests outside the token realm that carried Basic credentials
	blobGets   int           // blob GETs being answered now
	// listings (lists.go)
	referrersAPI bool
	referrers    []referrer
}

// New starts a hub on a free loopback port; Close stops it.
func New() (*Hub, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	h := &Hub{
		ln: ln, URL: "http://" + ln.Addr().String(),
		tags: map[string]digest.Digest{}, repoBlobs: map[string]map[digest.Digest]bool{},
		blobs: map[digest.Digest][]byte{}, manifests: map[digest.Digest]string{},
		tokens: map[string]string{}, counts: map[string]int{},
		auth: true, dropAt: map[digest.Digest]int64{}, corrupt: map[digest.Digest]bool{},
	}
	h.srv = &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go h.srv.Serve(ln)
	return h, nil
}

// Start starts a hub for a test and stops it at the test's end.
func Start(t testing.TB) *Hub {
	t.Helper()
	h, err := New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	return h
}

// Close stops the hub: later connections are refused.
func (h *Hub) Close() { h.srv.Close() }

// Host is host:port of the hub.
func (h *Hub) Host() string { return strings.TrimPrefix(h.URL, "http://") }

// Push adds a generated image to repo under tag.
func (h *Hub) Push(repo, tag string, spec ImageSpec) *Image {
	img, blobs, manifests := GenerateImage(spec)
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.repoBlobs[repo] == nil {
		h.repoBlobs[repo] = map[digest.Digest]bool{}
	}
	for d, b := range blobs {
		h.blobs[d] = b
		h.repoBlobs[repo][d] = true
	}
	for d, mt := range manifests {
		h.manifests[d] = mt
	}
	h.tags[repo+":"+tag] = img.Index
	return img
}

// Forget removes repo and the blobs only it held: a long benchmark pushes
// many large images and would otherwise keep every one in memory.
func (h *Hub) Forget(repo string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for d := range h.repoBlobs[repo] {
		shared := false
		for other, ds := range h.repoBlobs {
			if other != repo && ds[d] {
				shared = true
				break
			}
		}
		if !shared {
			delete(h.blobs, d)
		}
	}
	delete(h.repoBlobs, repo)
	for k := range h.tags {
		if strings.HasPrefix(k, repo+":") {
			delete(h.tags, k)
		}
	}
}

// Retag points repo:tag at the index of img (pushed before to repo).
func (h *Hub) Retag(repo, tag string, img *Image) {
	h.mu.Lock()
	h.tags[repo+":"+tag] = img.Index
	h.mu.Unlock()
}

// Knobs.
func (h *Hub) SetAuth(on bool)                { h.set(func() { h.auth = on }) }
func (h *Hub) SetUser(user, pass string)      { h.set(func() { h.users = map[string]string{user: pass} }) }
func (h *Hub) SetLatency(d time.Duration)     { h.set(func() { h.latency = d }) }
func (h *Hub) SetBandwidth(bytesPerSec int64) { h.set(func() { h.bytesPerSec = bytesPerSec }) }

// SetTotalBandwidth caps the blob bytes of all responses together, however
// many connections share them (0: no cap), where SetBandwidth caps each.
func (h *Hub) SetTotalBandwidth(bytesPerSec int64) { h.set(func() { h.totalBps = bytesPerSec }) }
func (h *Hub) SetRateLimit(gets, retryAfter int) {
	h.set(func() { h.rateLimit, h.retryAfter = gets, retryAfter })
}
func (h *Hub) SetFailStatus(status int) { h.set(func() { h.failStatus = status }) }

// FailNext makes the next n registry requests (not token requests) answer
// status.
func (h *Hub) FailNext(status, n int) { h.set(func() { h.failNext, h.failNextN = status, n }) }

// FailToken makes the next n token requests answer status; status -1 makes
// them hang until the client gives up.
func (h *Hub) FailToken(status, n int)          { h.set(func() { h.tokenFail, h.tokenFailN = status, n }) }
func (h *Hub) SetRedirect(on bool)              { h.set(func() { h.redirect = on }) }
func (h *Hub) SetCDNTTL(d time.Duration)        { h.set(func() { h.cdnTTL = d }) }
func (h *Hub) SetNoLength(on bool)              { h.set(func() { h.noLength = on }) }
func (h *Hub) SetNoRanges(on bool)              { h.set(func() { h.noRanges = on }) }
func (h *Hub) DropAt(d digest.Digest, n int64)  { h.set(func() { h.dropAt[d] = n }) }
func (h *Hub) Corrupt(d digest.Digest, on bool) { h.set(func() { h.corrupt[d] = on }) }

func (h *Hub) set(f func()) {
	h.mu.Lock()
	f()
	h.mu.Unlock()
}

// Count returns how many requests of a kind were served: "GET manifest",
// "HEAD manifest", "GET blob", "GET blob <digest>", "token", "GET cdn",
// "429", "bytes" (blob bytes sent), "credleak", "insufficient_scope" (a
// request for a repository the hub does not have, with auth on), and
// "requests" (every HTTP request, the token realm's included).
func (h *Hub) Count(kind string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	if kind == "credleak" {
		return h.credLeaks
	}
	return h.counts[kind]
}

// ResetCounts zeroes every counter.
func (h *Hub) ResetCounts() {
	h.mu.Lock()
	h.counts = map[string]int{}
	h.credLeaks = 0
	h.mu.Unlock()
}

func (h *Hub) count(kinds ...string) {
	h.mu.Lock()
	for _, k := range kinds {
		h.counts[k]++
	}
	h.mu.Unlock()
}

func (h *Hub) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h.mu.Lock()
	latency, fail, auth := h.latency, h.failStatus, h.auth
	if _, _, ok := r.BasicAuth(); ok && r.URL.Path != "/token" {
		h.credLeaks++
	}
	if h.failNextN > 0 && strings.HasPrefix(r.URL.Path, "/v2/") {
		h.failNextN--
		fail = h.failNext
	}
	h.counts["requests"]++
	h.mu.Unlock()
	time.Sleep(latency)
	switch {
	case r.URL.Path == "/token":
		h.token(w, r)
		return
	case strings.HasPrefix(r.URL.Path, "/cdn/"):
		h.count("GET cdn")
		if exp, err := strconv.ParseInt(r.URL.Query().Get("exp"), 10, 64); err == nil && time.Now().UnixNano() > exp {
			h.count("GET cdn expired")
			http.Error(w, "signature expired", http.StatusForbidden)
			return
		}
		h.serveBlob(w, r, digest.Digest(strings.TrimPrefix(r.URL.Path, "/cdn/")))
		return
	case !strings.HasPrefix(r.URL.Path, "/v2/"):
		http.NotFound(w, r)
		return
	}
	if fail != 0 {
		h.count(strconv.Itoa(fail))
		writeErr(w, fail, "UNAVAILABLE", "fault injected")
		return
	}
	w.Header().Set("Docker-Distribution-Api-Version", "registry/2.0")
	if r.URL.Path == "/v2/" {
		if auth && !h.authorized(r, "") {
			h.challenge(w, "")
			return
		}
		w.Write([]byte("{}"))
		return
	}
	rest := strings.TrimPrefix(r.URL.Path, "/v2/")
	var repo, kind, ref string
	if i := strings.LastIndex(rest, "/manifests/"); i > 0 {
		repo, kind, ref = rest[:i], "manifest", rest[i+len("/manifests/"):]
	} else if i := strings.LastIndex(rest, "/blobs/"); i > 0 {
		repo, kind, ref = rest[:i], "blob", rest[i+len("/blobs/"):]
	} else if name, ok := strings.CutSuffix(rest, "/tags/list"); ok {
		repo, kind = name, "tags"
	} else if i := strings.LastIndex(rest, "/referrers/"); i > 0 {
		repo, kind, ref = rest[:i], "referrers", rest[i+len("/referrers/"):]
	} else {
		writeErr(w, http.StatusNotFound, "NAME_UNKNOWN", "no such endpoint")
		return
	}
	if auth && !h.authorized(r, repo) {
		h.challenge(w, repo)
		return
	}
	h.mu.Lock()
	_, exists := h.repoBlobs[repo]
	h.mu.Unlock()
	if auth && !exists {
		// Docker Hub never says 404 for a repository it does not have: the
		// token carries no access to it, and the request gets 401
		// insufficient_scope.
		h.count("insufficient_scope")
		w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm="%s/token",service="fakehub",scope="repository:%s:pull",error="insufficient_scope"`, h.URL, repo))
		writeErr(w, http.StatusUnauthorized, "UNAUTHORIZED", "authentication required")
		return
	}
	switch kind {
	case "tags":
		h.serveTags(w, r, repo)
		return
	case "referrers":
		h.serveReferrers(w, r, repo, ref)
		return
	}
	h.count(r.Method + " " + kind)
	if kind == "manifest" {
		h.manifest(w, r, repo, ref)
		return
	}
	d := digest.Digest(ref)
	h.mu.Lock()
	known := h.repoBlobs[repo][d]
	redirect, cdnTTL := h.redirect, h.cdnTTL
	h.mu.Unlock()
	if !known {
		writeErr(w, http.StatusNotFound, "BLOB_UNKNOWN", "blob unknown")
		return
	}
	h.count(r.Method + " blob " + ref)
	if redirect && r.Method == http.MethodGet {
		to := "/cdn/" + ref
		if cdnTTL > 0 { // a signed URL, valid for cdnTTL
			to += "?exp=" + strconv.FormatInt(time.Now().Add(cdnTTL).UnixNano(), 10)
		}
		http.Redirect(w, r, to, http.StatusTemporaryRedirect)
		return
	}
	h.serveBlob(w, r, d)
}

func (h *Hub) manifest(w http.ResponseWriter, r *http.Request, repo, ref string) {
	h.mu.Lock()
	d := digest.Digest(ref)
	if !strings.Contains(ref, ":") {
		d = h.tags[repo+":"+ref]
	}
	body, mt := h.blobs[d], h.manifests[d]
	limited := false
	if r.Method == http.MethodGet && h.rateLimit > 0 {
		if h.counts["GET manifest"] > h.rateLimit {
			limited = true
		}
		w.Header().Set("ratelimit-limit", fmt.Sprintf("%d;w=21600", h.rateLimit))
		w.Header().Set("ratelimit-remaining", fmt.Sprintf("%d;w=21600", max(0, h.rateLimit-h.counts["GET manifest"])))
	}
	retryAfter := h.retryAfter
	h.mu.Unlock()
	if limited {
		h.count("429")
		w.Header().Set("Retry-After", strconv.Itoa(retryAfter))
		writeErr(w, http.StatusTooManyRequests, "TOOMANYREQUESTS", "You have reached your pull rate limit.")
		return
	}
	if mt == "" {
		writeErr(w, http.StatusNotFound, "MANIFEST_UNKNOWN", "manifest unknown")
		return
	}
	w.Header().Set("Content-Type", mt)
	w.Header().Set("Docker-Content-Digest", d.String())
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	if r.Method == http.MethodGet {
		w.Write(body)
	}
}

// serveBlob writes a blob honouring Range, bandwidth, drops and corruption.
func (h *Hub) serveBlob(w http.ResponseWriter, r *http.Request, d digest.Digest) {
	h.mu.Lock()
	body := h.blobs[d]
	bps := h.bytesPerSec
	noLength := h.noLength && r.Method == http.MethodGet
	noRanges := h.noRanges
	drop, dropping := h.dropAt[d]
	dropping = dropping && r.Method == http.MethodGet
	if r.Method == http.MethodGet {
		h.blobGets++
		if h.blobGets > h.counts["blob GETs at once"] {
			h.counts["blob GETs at once"] = h.blobGets
		}
		defer func() {
			h.mu.Lock()
			h.blobGets--
			h.mu.Unlock()
		}()
	}
	if h.corrupt[d] {
		body = append([]byte(nil), body...)
		body[len(body)/2] ^= 0xff
	}
	h.mu.Unlock()
	start, end := int64(0), int64(len(body))
	ranged := false
	if rg := r.Header.Get("Range"); rg != "" && !noRanges {
		var a, b int64 = 0, -1
		if n, _ := fmt.Sscanf(rg, "bytes=%d-%d", &a, &b); n >= 1 && a < end {
			start, ranged = a, true
			if n == 2 && b+1 < end {
				end = b + 1
			}
			w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", start, end-1, len(body)))
			if start > 0 || end < int64(len(body)) { // "bytes=0-" is the whole blob
				h.count("GET range")
			}
		}
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Docker-Content-Digest", d.String())
	if !noLength {
		w.Header().Set("Content-Length", strconv.FormatInt(end-start, 10))
	}
	if ranged { // as net/http's ServeContent: any satisfiable range is a 206
		w.WriteHeader(http.StatusPartialContent)
	}
	if r.Method != http.MethodGet {
		return
	}
	if noLength {
		w.(http.Flusher).Flush() // headers out now: the body goes chunked
	}
	out := body[start:end]
	const chunk = 32 << 10
	began := time.Now()
	var sent int64
	for len(out) > 0 {
		n := min(len(out), chunk)
		if dropping && start+sent <= drop && start+sent+int64(n) > drop {
			h.mu.Lock()
			_, still := h.dropAt[d] // the first GET to reach it drops
			delete(h.dropAt, d)
			h.mu.Unlock()
			if !still {
				dropping = false
				continue
			}
			n = int(drop - start - sent)
			w.Write(out[:n])
			h.addBytes(n)
			// Cut the connection mid-body, as a flaky network does.
			if hj, ok := w.(http.Hijacker); ok {
				w.(http.Flusher).Flush()
				if c, _, err := hj.Hijack(); err == nil {
					c.Close()
				}
			}
			return
		}
		if _, err := w.Write(out[:n]); err != nil {
			return
		}
		h.addBytes(n)
		sent += int64(n)
		out = out[n:]
		h.shareTotal(n)
		if bps > 0 {
			if ahead := time.Duration(float64(sent)/float64(bps)*float64(time.Second)) - time.Since(began); ahead > 0 {
				time.Sleep(ahead)
			}
		}
	}
}

// shareTotal waits until n more bytes fit under the total bandwidth cap.
func (h *Hub) shareTotal(n int) {
	h.mu.Lock()
	if h.totalBps <= 0 {
		h.mu.Unlock()
		return
	}
	due := h.totalNext
	if now := time.Now(); due.Before(now) {
		due = now
	}
	due = due.Add(time.Duration(float64(n) / float64(h.totalBps) * float64(time.Second)))
	h.totalNext = due
	h.mu.Unlock()
	time.Sleep(time.Until(due))
}

func (h *Hub) addBytes(n int) {
	h.mu.Lock()
	h.counts["bytes"] += n
	h.mu.Unlock()
}

func (h *Hub) challenge(w http.ResponseWriter, repo string) {
	v := fmt.Sprintf(`Bearer realm="%s/token",service="fakehub"`, h.URL)
	if repo != "" {
		v += fmt.Sprintf(`,scope="repository:%s:pull"`, repo)
	}
	w.Header().Set("WWW-Authenticate", v)
	writeErr(w, http.StatusUnauthorized, "UNAUTHORIZED", "authentication required")
}

func (h *Hub) authorized(r *http.Request, repo string) bool {
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok {
		return false
	}
	h.mu.Lock()
	scope, known := h.tokens[tok]
	h.mu.Unlock()
	return known && (repo == "" || strings.Contains(scope, "repository:"+repo+":"))
}

// token is the auth realm: GET with Basic credentials (or anonymous), or
// POST with an OAuth2 password grant, as Docker Hub accepts both.
func (h *Hub) token(w http.ResponseWriter, r *http.Request) {
	h.count("token")
	h.mu.Lock()
	users := h.users
	fail := 0
	if h.tokenFailN > 0 {
		h.tokenFailN--
		fail = h.tokenFail
	}
	h.mu.Unlock()
	switch {
	case fail == -1:
		h.count("token hang")
		select {
		case <-r.Context().Done():
		case <-time.After(2 * time.Minute):
		}
		return
	case fail != 0:
		h.count("token " + strconv.Itoa(fail))
		writeErr(w, fail, "UNAVAILABLE", "token fault injected")
		return
	}
	u, p, ok := r.BasicAuth()
	scopes := r.URL.Query()["scope"]
	if r.Method == http.MethodPost {
		r.ParseForm()
		u, p, ok = r.PostForm.Get("username"), r.PostForm.Get("password"), r.PostForm.Get("grant_type") == "password"
		scopes = strings.Fields(r.PostForm.Get("scope"))
	}
	if users != nil && (!ok || users[u] != p) {
		writeErr(w, http.StatusUnauthorized, "UNAUTHORIZED", "bad credentials")
		return
	}
	scope := strings.Join(scopes, " ")
	tok := fmt.Sprintf("tok-%d-%d", time.Now().UnixNano(), len(scope))
	h.mu.Lock()
	h.tokens[tok] = scope
	h.mu.Unlock()
	json.NewEncoder(w).Encode(map[string]any{"token": tok, "access_token": tok, "expires_in": 300, "issued_at": time.Now().UTC().Format(time.RFC3339)})
}

func writeErr(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]any{"errors": []map[string]string{{"code": code, "message": msg}}})
}
