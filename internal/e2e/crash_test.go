package e2e

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	mrand "math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/wharf-registry/wharf/policy"
)

// ackedPush is a push Wharf answered 201 to: it must survive any crash.
type ackedPush struct {
	repo, tag string
	manifest  digest.Digest
	blobs     []digest.Digest
}

// pusher pushes small images to Wharf using every upload style until stop
// closes or a request fails (the server was killed).
type pusher struct {
	base     string
	client   *http.Client
	mu       *sync.Mutex
	attempts *[]ackedPush // every blob upload started, acknowledged or not
}

// do sends a request and fails unless the answer has status want.
func (p *pusher) do(method, u string, body []byte, hdr map[string]string, want int) (*http.Response, error) {
	req, err := http.NewRequest(method, u, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := p.client.Do(req)
	if err != nil {
		return nil, err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != want {
		return nil, fmt.Errorf("%s %s: %s", method, req.URL.Path, resp.Status)
	}
	return resp, nil
}

// pushBlob uploads b to repo in the given style (0 monolithic, 1 POST+PUT,
// 2 chunked PATCHes then PUT).
func (p *pusher) pushBlob(repo string, b []byte, style int) (digest.Digest, error) {
	d := digest.FromBytes(b)
	p.mu.Lock()
	*p.attempts = append(*p.attempts, ackedPush{repo: repo, blobs: []digest.Digest{d}})
	p.mu.Unlock()
	start := p.base + "/v2/" + repo + "/blobs/uploads/"
	if style == 0 {
		_, err := p.do("POST", start+"?digest="+d.String(), b, nil, http.StatusCreated)
		return d, err
	}
	resp, err := p.do("POST", start, nil, nil, http.StatusAccepted)
	if err != nil {
		return d, err
	}
	loc, err := url.Parse(resp.Header.Get("Location"))
	if err != nil {
		return d, err
	}
	loc = resp.Request.URL.ResolveReference(loc)
	if style == 2 {
		for off := 0; off < len(b); {
			end := min(off+len(b)/3+1, len(b))
			resp, err := p.do("PATCH", loc.String(), b[off:end],
				map[string]string{"Content-Range": fmt.Sprintf("%d-%d", off, end-1)}, http.StatusAccepted)
			if err != nil {
				return d, err
			}
			l, _ := url.Parse(resp.Header.Get("Location"))
			loc = resp.Request.URL.ResolveReference(l)
			off = end
		}
		b = nil
	}
	q := loc.Query()
	q.Set("digest", d.String())
	loc.RawQuery = q.Encode()
	_, err = p.do("PUT", loc.String(), b, nil, http.StatusCreated)
	return d, err
}

func (p *pusher) pushImage(repo, tag string, style int) (ackedPush, error) {
	layer := make([]byte, 1024+mrand.IntN(1<<20))
	rand.Read(layer)
	ld, err := p.pushBlob(repo, layer, style)
	if err != nil {
		return ackedPush{}, err
	}
	cfg := []byte(fmt.Sprintf(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["%s"]}}`, ld))
	cd, err := p.pushBlob(repo, cfg, (style+1)%3)
	if err != nil {
		return ackedPush{}, err
	}
	man, _ := json.Marshal(map[string]any{
		"schemaVersion": 2, "mediaType": ociTypes.manifest,
		"config": desc{MediaType: ociTypes.config, Digest: cd, Size: int64(len(cfg))},
		"layers": []desc{{MediaType: ociTypes.layer, Digest: ld, Size: int64(len(layer))}},
	})
	_, err = p.do("PUT", p.base+"/v2/"+repo+"/manifests/"+tag, man,
		map[string]string{"Content-Type": ociTypes.manifest}, http.StatusCreated)
	if err != nil {
		return ackedPush{}, err
	}
	return ackedPush{repo: repo, tag: tag, manifest: digest.FromBytes(man), blobs: []digest.Digest{ld, cd}}, nil
}

// TestCrashDuringPushes kill -9s a real wharf during concurrent pushes,
// again and again. After every restart each acknowledged push is complete
// and readable, every blob file on disk holds exactly its digest's bytes,
// and no one-shot temp file is left.
func TestCrashDuringPushes(t *testing.T) {
	const rounds, workers = 8, 4
	data := t.TempDir()
	var acked, attempts []ackedPush
	for round := 0; round < rounds; round++ {
		// The registry core is under test: an unknown name must be a local
		// 404, not a question for Docker Hub.
		args := []string{"--mirror=false"}
		if round == rounds-1 {
			args = append(args, "--upload-ttl", "1ms") // drop every session: ingest must end empty
		}
		w := startWharf(t, data, args...)
		verifyStore(t, w, acked, attempts, round == rounds-1)
		var mu sync.Mutex
		var wg sync.WaitGroup
		for i := 0; i < workers; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				p := &pusher{base: "http://" + w.addr, client: &http.Client{Timeout: 30 * time.Second}, mu: &mu, attempts: &attempts}
				for n := 0; n < 1000; n++ {
					a, err := p.pushImage(fmt.Sprintf("crash/w%d", i), fmt.Sprintf("r%d-n%d", round, n), n%3)
					if err != nil {
						return
					}
					mu.Lock()
					acked = append(acked, a)
					mu.Unlock()
				}
			}()
		}
		time.Sleep(time.Duration(150+mrand.IntN(450)) * time.Millisecond)
		if exited, err := w.kill(); exited {
			t.Fatalf("round %d: wharf exited on its own (%v) before the kill\n%s", round, err, w.log)
		}
		wg.Wait()
	}
	if len(acked) < rounds {
		t.Fatalf("only %d pushes acknowledged over %d rounds: the test pushed too little to mean anything", len(acked), rounds)
	}
	w := startWharf(t, data, "--mirror=false")
	verifyStore(t, w, acked, attempts, false)
	t.Logf("%d acknowledged pushes survived %d kill -9s", len(acked), rounds)
}

// verifyStore checks a restarted wharf: acknowledged pushes readable and
// intact, every committed blob file hashing to its name, no temp files.
func verifyStore(t *testing.T, w *wharfProc, acked, attempts []ackedPush, ingestEmpty bool) {
	t.Helper()
	// A blob the index knows (HEAD) must be readable in full (GET), and the
	// other way round, whether or not its upload was acknowledged.
	for _, a := range attempts {
		u := w.url("/v2/" + a.repo + "/blobs/" + a.blobs[0].String())
		head, err := http.Head(u)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := http.Get(u)
		if err != nil {
			t.Fatal(err)
		}
		got, _ := digest.FromReader(resp.Body)
		resp.Body.Close()
		if head.StatusCode == http.StatusOK && resp.StatusCode == http.StatusNotFound {
			// With GC running, an unreferenced upload may be collected between
			// the two requests: then the index must not show it any more.
			if again, err := http.Head(u); err == nil && again.StatusCode == http.StatusNotFound {
				continue
			}
		}
		if head.StatusCode != resp.StatusCode || (resp.StatusCode == http.StatusOK && got != a.blobs[0]) ||
			(resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusNotFound) {
			t.Fatalf("blob %s in %s: HEAD %s, GET %s with content %s", a.blobs[0], a.repo, head.Status, resp.Status, got)
		}
	}
	for _, a := range acked {
		resp, err := http.Get(w.url("/v2/" + a.repo + "/manifests/" + a.tag))
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || digest.FromBytes(body) != a.manifest {
			t.Fatalf("acknowledged %s:%s lost after crash: %s, digest %s want %s", a.repo, a.tag, resp.Status, digest.FromBytes(body), a.manifest)
		}
		for _, b := range a.blobs {
			resp, err := http.Get(w.url("/v2/" + a.repo + "/blobs/" + b.String()))
			if err != nil {
				t.Fatal(err)
			}
			got, err := digest.FromReader(resp.Body)
			resp.Body.Close()
			if err != nil || resp.StatusCode != http.StatusOK || got != b {
				t.Fatalf("blob %s of acknowledged %s:%s: %s, content %s (%v)", b, a.repo, a.tag, resp.Status, got, err)
			}
		}
	}
	checkReachable(t, w)
	err := filepath.WalkDir(filepath.Join(w.data, "blobs"), func(p string, e os.DirEntry, err error) error {
		if err != nil || e.IsDir() {
			return err
		}
		f, err := os.Open(p)
		if errors.Is(err, fs.ErrNotExist) {
			return nil // collected since the directory was listed
		} else if err != nil {
			return err
		}
		defer f.Close()
		alg := filepath.Base(filepath.Dir(filepath.Dir(p)))
		got, err := digest.Algorithm(alg).FromReader(f)
		if err != nil {
			return err
		}
		if got.Encoded() != e.Name() {
			return fmt.Errorf("blob file %s holds content %s: a partial or corrupt blob is visible", p, got)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(filepath.Join(w.data, "ingest"))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "tmp-") || ingestEmpty {
			t.Fatalf("ingest file %s left after start-up cleanup", e.Name())
		}
	}
}

// checkReachable walks catalog → tags → manifests → blobs through the API:
// whatever the index shows, acknowledged or not, must be complete.
func checkReachable(t *testing.T, w *wharfProc) {
	t.Helper()
	// Mirrored copies may be evicted and collected between two requests
	// while GC and eviction run: for them a 404 is allowed, wrong or partial
	// content never is. Pushed repositories must always answer.
	getJSON := func(path string, v any) bool {
		resp, err := http.Get(w.url(path))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		mirrored := policy.HasRegistryPrefix(strings.TrimPrefix(path, "/v2/"))
		if resp.StatusCode == http.StatusNotFound && mirrored {
			return false
		}
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: %s", path, resp.Status)
		}
		if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		return true
	}
	var cat struct{ Repositories []string }
	getJSON("/v2/_catalog?n=100000", &cat)
	var walk func(repo, ref string, depth int)
	walk = func(repo, ref string, depth int) {
		var m struct {
			Config    desc
			Layers    []desc
			Manifests []desc
		}
		if !getJSON("/v2/"+repo+"/manifests/"+ref, &m) {
			return
		}
		for _, c := range m.Manifests { // an index: every entry must resolve too
			if depth < 3 {
				walk(repo, c.Digest.String(), depth+1)
			}
		}
		if len(m.Manifests) > 0 {
			return
		}
		for _, b := range append(m.Layers, m.Config) {
			resp, err := http.Get(w.url("/v2/" + repo + "/blobs/" + b.Digest.String()))
			if err != nil {
				t.Fatal(err)
			}
			got, err := digest.FromReader(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusNotFound && policy.HasRegistryPrefix(repo) {
				continue // evicted meanwhile
			}
			if resp.StatusCode != http.StatusOK || err != nil || got != b.Digest {
				t.Fatalf("%s@%s is indexed but its blob %s is not intact: %s (%v)", repo, ref, b.Digest, resp.Status, err)
			}
		}
	}
	for _, repo := range cat.Repositories {
		var tl struct{ Tags []string }
		if !getJSON("/v2/"+repo+"/tags/list", &tl) {
			continue
		}
		for _, tag := range tl.Tags {
			walk(repo, tag, 0)
		}
	}
}

// pushPrivate pushes one small image to repo:v1.
func (p *pusher) pushPrivate(repo string) error {
	if p.mu == nil {
		p.mu, p.attempts = new(sync.Mutex), new([]ackedPush)
	}
	_, err := p.pushImage(repo, "v1", 0)
	return err
}
