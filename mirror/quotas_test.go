package mirror

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/wharf-registry/wharf/policy"
)

// TestQuotas: `quotas: [{repos: ["team/*"], max: 1M}]`. A 600 KiB layer
// pushes to team/app; another one to team/other is refused (403 naming
// the quota), monolithic or chunked, and nothing of it stays (no blob, no
// upload session); the layer team/app holds already mounts or uploads to
// team/other (no new bytes); repositories the quota does not name are not
// bound by it; the usage API shows it.
func TestQuotas(t *testing.T) {
	users, pol := adminAccess(t)
	pol, err := policy.New(users.Len(), policy.Config{Rules: pol.Rules(), Quotas: []policy.QuotaRule{{Repos: []string{"team/*"}, Max: "1M"}}})
	if err != nil {
		t.Fatal(err)
	}
	reg := newTestRegistry(t, Options{Users: users, Policy: pol, AllowDelete: true})
	root := as("root")
	layer := func(seed byte) []byte { return bytes.Repeat([]byte{seed, seed + 1, seed + 2}, 200<<10) } // 600 KiB
	first, second := layer(1), layer(7)
	put := func(repo string, b []byte) (int, string) {
		resp, body := reg.do(t, "POST", "/v2/"+repo+"/blobs/uploads/?digest="+digest.FromBytes(b).String(), b, root)
		return resp.StatusCode, string(body)
	}
	if status, body := put("team/app", first); status != http.StatusCreated {
		t.Fatalf("the first layer: %d %s", status, body)
	}
	status, body := put("team/other", second)
	if status != http.StatusForbidden || !strings.Contains(body, "DENIED") || !strings.Contains(body, "quota 1 (repos team/*, max 1M) is full") {
		t.Fatalf("over the quota: %d %s", status, body)
	}
	if resp, _ := reg.do(t, "HEAD", "/v2/team/other/blobs/"+digest.FromBytes(second).String(), nil, root); resp.StatusCode != http.StatusNotFound {
		t.Fatalf("the refused blob: %s, want 404", resp.Status)
	}
	// Upload sessions: one opens (the quota is not full yet); a chunk that
	// does not fit the room left (424 KiB) is refused before it is stored,
	// with a stated length or without one; the session keeps what it had.
	session := func() string {
		resp, _ := reg.do(t, "POST", "/v2/team/other/blobs/uploads/", nil, root)
		loc := resp.Header.Get("Location")
		if resp.StatusCode != http.StatusAccepted || loc == "" {
			t.Fatalf("start a session: %s", resp.Status)
		}
		return loc
	}
	send := func(method, loc string, b []byte, stated bool) (*http.Response, string) {
		var body io.Reader = bytes.NewReader(b)
		if !stated {
			body = io.MultiReader(body) // no Content-Length: sent chunked
		}
		req, _ := http.NewRequest(method, reg.srv.URL+loc, body)
		req.Header.Set("Authorization", root["Authorization"])
		req.Header.Set("Content-Type", "application/octet-stream")
		resp, err := reg.srv.Client().Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, loc, err)
		}
		defer resp.Body.Close()
		raw, _ := io.ReadAll(resp.Body)
		return resp, string(raw)
	}
	withDigest := func(loc string, b []byte) string {
		sep := "?"
		if strings.Contains(loc, "?") {
			sep = "&"
		}
		return loc + sep + "digest=" + digest.FromBytes(b).String()
	}
	kept := func(loc, want string) {
		t.Helper()
		if resp, _ := reg.do(t, "GET", loc, nil, root); resp.StatusCode != http.StatusNoContent || resp.Header.Get("Range") != want {
			t.Fatalf("the session after a refused chunk: %s Range %q, want %q", resp.Status, resp.Header.Get("Range"), want)
		}
	}
	loc := session()
	for _, stated := range []bool{true, false} {
		if resp, body := send("PATCH", loc, second, stated); resp.StatusCode != http.StatusForbidden || !strings.Contains(body, "DENIED") || !strings.Contains(body, "quota 1") {
			t.Fatalf("a 600 KiB chunk (stated length %v) into 424 KiB of room: %s %s", stated, resp.Status, body)
		}
		kept(loc, "0-0")
	}
	small := bytes.Repeat([]byte{9}, 300<<10)
	resp, _ := send("PATCH", loc, small, true)
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("a 300 KiB chunk: %s", resp.Status)
	}
	loc = resp.Header.Get("Location")
	if resp, body := send("PATCH", loc, small, false); resp.StatusCode != http.StatusForbidden || !strings.Contains(body, "quota 1") {
		t.Fatalf("a second 300 KiB chunk of no stated length: %s %s", resp.Status, body)
	}
	kept(loc, fmt.Sprintf("0-%d", len(small)-1))
	if resp, _ := reg.do(t, "DELETE", loc, nil, root); resp.StatusCode != http.StatusNoContent {
		t.Fatalf("cancel the session: %s", resp.Status)
	}
	// A PUT whose body (of no stated length) does not fit is refused, and
	// its session is gone.
	loc = session()
	if resp, body := send("PUT", withDigest(loc, second), second, false); resp.StatusCode != http.StatusForbidden || !strings.Contains(body, "quota 1") {
		t.Fatalf("finishing a session with a body over the quota: %s %s", resp.Status, body)
	}
	if resp, _ := reg.do(t, "GET", loc, nil, root); resp.StatusCode != http.StatusNotFound {
		t.Fatalf("the refused session: %s, want 404 (canceled)", resp.Status)
	}
	// Sessions are not held against each other: two 400 KiB sessions each
	// fit, and the finish that would take the quota over is refused.
	b1, b2 := bytes.Repeat([]byte{3}, 400<<10), bytes.Repeat([]byte{4}, 400<<10)
	l1, l2 := session(), session()
	resp1, _ := send("PATCH", l1, b1, true)
	resp2, _ := send("PATCH", l2, b2, true)
	if resp1.StatusCode != http.StatusAccepted || resp2.StatusCode != http.StatusAccepted {
		t.Fatalf("two 400 KiB chunks in two sessions: %s, %s", resp1.Status, resp2.Status)
	}
	if resp, body := send("PUT", withDigest(resp1.Header.Get("Location"), b1), nil, true); resp.StatusCode != http.StatusCreated {
		t.Fatalf("finishing the first: %s %s", resp.Status, body)
	}
	l2 = resp2.Header.Get("Location")
	if resp, body := send("PUT", withDigest(l2, b2), nil, true); resp.StatusCode != http.StatusForbidden || !strings.Contains(body, "quota 1") {
		t.Fatalf("finishing the second over the quota: %s %s", resp.Status, body)
	}
	if resp, _ := reg.do(t, "GET", l2, nil, root); resp.StatusCode != http.StatusNotFound {
		t.Fatalf("the refused session: %s, want 404 (canceled)", resp.Status)
	}
	// The layer the namespace holds already adds nothing: mount and upload.
	if resp, _ := reg.do(t, "POST", "/v2/team/other/blobs/uploads/?mount="+digest.FromBytes(first).String()+"&from=team/app", nil, root); resp.StatusCode != http.StatusCreated {
		t.Fatalf("mounting a layer the namespace holds: %s", resp.Status)
	}
	if status, body := put("team/third", first); status != http.StatusCreated {
		t.Fatalf("uploading a layer the namespace holds: %d %s", status, body)
	}
	if status, body := put("lib/base", second); status != http.StatusCreated {
		t.Fatalf("a repository outside the quota: %d %s", status, body)
	}
	// A body of no stated length cannot be checked before it is stored.
	req, _ := http.NewRequest("POST", reg.srv.URL+"/v2/team/app/blobs/uploads/?digest="+digest.FromBytes(second).String(), io.MultiReader(bytes.NewReader(second)))
	req.Header.Set("Authorization", root["Authorization"])
	if resp, err := reg.srv.Client().Do(req); err != nil || resp.StatusCode != http.StatusLengthRequired {
		t.Fatalf("a push of no stated length under the quota: %v %v, want 411", err, resp)
	} else {
		resp.Body.Close()
	}
	// ... unless the namespace holds that blob already: it adds nothing.
	req, _ = http.NewRequest("POST", reg.srv.URL+"/v2/team/fourth/blobs/uploads/?digest="+digest.FromBytes(first).String(), io.MultiReader(bytes.NewReader(first)))
	req.Header.Set("Authorization", root["Authorization"])
	if resp, err := reg.srv.Client().Do(req); err != nil || resp.StatusCode != http.StatusCreated {
		t.Fatalf("a push of no stated length of a blob the namespace holds: %v %v, want 201", err, resp)
	} else {
		resp.Body.Close()
	}
	resp, raw := reg.do(t, "GET", "/api/v1/usage", nil, root)
	var u struct {
		Quotas []struct {
			Quota     string
			MaxBytes  int64 `json:"max_bytes"`
			UsedBytes int64 `json:"used_bytes"`
		}
	}
	if json.Unmarshal(raw, &u); resp.StatusCode != http.StatusOK || len(u.Quotas) != 1 || u.Quotas[0].MaxBytes != 1<<20 || u.Quotas[0].UsedBytes != int64(len(first)+len(b1)) {
		t.Fatalf("usage: %s %s", resp.Status, raw)
	}
}

// slowBody sends its first byte at once and the rest after a pause: a
// push whose quota check is done long before its bytes are.
type slowBody struct {
	b    []byte
	sent bool
}

func (s *slowBody) Read(p []byte) (int, error) {
	if len(s.b) == 0 {
		return 0, io.EOF
	}
	if s.sent {
		time.Sleep(300 * time.Millisecond)
		n := copy(p, s.b)
		s.b = s.b[n:]
		return n, nil
	}
	s.sent = true
	n := copy(p[:1], s.b)
	s.b = s.b[n:]
	return n, nil
}

// TestQuotaRacingPushes: four 400 KiB layers pushed at once into a 1 MiB
// quota, each checked before any has sent its bytes: two fit, two are
// refused (before, all four passed the check and the namespace held
// 1.6 MiB); once they are done, what they held is free again for a small
// one.
func TestQuotaRacingPushes(t *testing.T) {
	users, pol := adminAccess(t)
	pol, err := policy.New(users.Len(), policy.Config{Rules: pol.Rules(), Quotas: []policy.QuotaRule{{Repos: []string{"team/*"}, Max: "1M"}}})
	if err != nil {
		t.Fatal(err)
	}
	reg := newTestRegistry(t, Options{Users: users, Policy: pol})
	root := as("root")
	layers := make([][]byte, 4)
	var wg sync.WaitGroup
	for i := range layers {
		layers[i] = bytes.Repeat([]byte{byte(i), 1, 2, 3}, 100<<10) // 400 KiB
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequest("POST", reg.srv.URL+"/v2/team/app/blobs/uploads/?digest="+digest.FromBytes(layers[i]).String(), &slowBody{b: layers[i]})
			req.ContentLength = int64(len(layers[i]))
			req.Header.Set("Authorization", root["Authorization"])
			if resp, err := reg.srv.Client().Do(req); err == nil { // a refusal may cut the body off: the HEADs below decide
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		}()
	}
	wg.Wait()
	held := 0
	for _, l := range layers {
		resp, _ := reg.do(t, "HEAD", "/v2/team/app/blobs/"+digest.FromBytes(l).String(), nil, root)
		if resp.StatusCode == http.StatusOK {
			held++
		}
	}
	if held != 2 {
		t.Fatalf("%d of four racing 400 KiB pushes stored under a 1 MiB quota, want 2", held)
	}
	small := bytes.Repeat([]byte{9}, 100<<10)
	if resp, body := reg.do(t, "POST", "/v2/team/app/blobs/uploads/?digest="+digest.FromBytes(small).String(), small, root); resp.StatusCode != http.StatusCreated {
		t.Fatalf("a 100 KiB push after the race (800 KiB of 1 MiB used): %s %s", resp.Status, body)
	}
}
