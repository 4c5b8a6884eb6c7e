package mirror

import (
	"net/http"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

// TestMissesRemembered: ten pulls of a name Docker Hub does not have (it
// answers 401 insufficient_scope) ask it at most twice; each pull still
// gets a 404.
func TestMissesRemembered(t *testing.T) {
	e := newMirrorEnv(t, Options{})
	e.hub.Push("library/app", "v1", smallImage(7))
	if resp, body := e.do(t, "GET", "/v2/library/app/manifests/v1", nil, nil); resp.StatusCode != http.StatusOK {
		t.Fatalf("present image: %s %s", resp.Status, body)
	}
	waitFillsDone(t, e)
	e.hub.ResetCounts()
	for i := 0; i < 10; i++ {
		resp, body := e.do(t, "GET", "/v2/library/no-such-image/manifests/latest", nil, nil)
		if resp.StatusCode != http.StatusNotFound {
			t.Fatalf("pull %d of a missing name: %s %s", i, resp.Status, body)
		}
	}
	if n := e.hub.Count("requests"); n > 2 {
		t.Fatalf("10 pulls of a missing name made %d upstream requests (%d tokens, %d insufficient_scope), want <= 2",
			n, e.hub.Count("token"), e.hub.Count("insufficient_scope"))
	}
	// A blob the repository does not have: asked once.
	e.hub.ResetCounts()
	missing := digest.FromString("not there")
	for i := 0; i < 5; i++ {
		if resp, body := e.do(t, "GET", "/v2/library/app/blobs/"+missing.String(), nil, nil); resp.StatusCode != http.StatusNotFound {
			t.Fatalf("missing blob: %s %s", resp.Status, body)
		}
	}
	if n := e.hub.Count("GET blob"); n != 1 {
		t.Fatalf("5 GETs of a missing blob: %d upstream GETs, want 1", n)
	}
}

// TestMissForgotten: a remembered miss ends with its TTL, with a successful
// fetch from the repository, and with a push into it.
func TestMissForgotten(t *testing.T) {
	e := newMirrorEnv(t, Options{MissTTL: time.Hour})
	e.hub.Push("library/app", "v1", smallImage(8))
	get := func(path string) int {
		resp, _ := e.do(t, "GET", path, nil, nil)
		return resp.StatusCode
	}
	if s := get("/v2/library/app/manifests/v2"); s != http.StatusNotFound {
		t.Fatalf("missing tag: %d", s)
	}
	e.hub.Push("library/app", "v2", smallImage(9))
	if s := get("/v2/library/app/manifests/v2"); s != http.StatusNotFound {
		t.Fatalf("a remembered miss was not remembered: %d", s)
	}
	if s := get("/v2/library/app/manifests/v1"); s != http.StatusOK {
		t.Fatalf("present tag: %d", s)
	}
	if s := get("/v2/library/app/manifests/v2"); s != http.StatusOK {
		t.Fatalf("after a successful fetch from the repository the miss is still remembered: %d", s)
	}

	// "tool" falls through to library/tool until pushed; a push forgets
	// the misses of both names.
	if s := get("/v2/library/tool/manifests/latest"); s != http.StatusNotFound {
		t.Fatalf("missing name: %d", s)
	}
	e.hub.Push("library/tool", "latest", smallImage(10))
	if s := get("/v2/library/tool/manifests/latest"); s != http.StatusNotFound {
		t.Fatalf("a remembered miss was not remembered: %d", s)
	}
	e.pushImage(t, "tool", "mine", nil)
	if s := get("/v2/library/tool/manifests/latest"); s != http.StatusOK {
		t.Fatalf("after a push the miss is still remembered: %d", s)
	}

	// The TTL ends it.
	short := newMirrorEnv(t, Options{MissTTL: 200 * time.Millisecond})
	resp, _ := short.do(t, "GET", "/v2/library/late/manifests/1", nil, nil)
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("missing: %s", resp.Status)
	}
	short.hub.Push("library/late", "1", smallImage(11))
	time.Sleep(250 * time.Millisecond)
	if resp, _ := short.do(t, "GET", "/v2/library/late/manifests/1", nil, nil); resp.StatusCode != http.StatusOK {
		t.Fatalf("after the miss TTL: %s", resp.Status)
	}
}

// TestOutageIsNotAMiss: a 503 or a timeout is never remembered as a miss.
func TestOutageIsNotAMiss(t *testing.T) {
	e := newMirrorEnv(t, Options{MissTTL: time.Hour})
	e.hub.Push("library/app", "v1", smallImage(12))
	e.hub.SetFailStatus(http.StatusServiceUnavailable)
	if resp, _ := e.do(t, "GET", "/v2/library/app/manifests/v1", nil, nil); resp.StatusCode < 500 {
		t.Fatalf("upstream 503: %s", resp.Status)
	}
	e.hub.SetFailStatus(0)
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, body := e.do(t, "GET", "/v2/library/app/manifests/v1", nil, nil)
		if resp.StatusCode == http.StatusOK {
			break
		}
		if resp.StatusCode == http.StatusNotFound {
			t.Fatalf("a 503 was remembered as a miss: %s", body)
		}
		if time.Now().After(deadline) { // marked down: the probe brings it back
			t.Fatalf("upstream back, still %s %s", resp.Status, body)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
