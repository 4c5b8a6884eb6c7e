package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wharf-registry/wharf/internal/testport"
)

// r2Event is the part of registry:2's notification event the tests read.
type r2Event struct {
	ID        string    `json:"id"`
	Timestamp time.Time `json:"timestamp"`
	Action    string    `json:"action"`
	Target    struct {
		MediaType  string `json:"mediaType"`
		Size       int64  `json:"size"`
		Length     int64  `json:"length"`
		Digest     string `json:"digest"`
		Repository string `json:"repository"`
		URL        string `json:"url"`
		Tag        string `json:"tag"`
	} `json:"target"`
	Request struct {
		ID        string `json:"id"`
		Addr      string `json:"addr"`
		Host      string `json:"host"`
		Method    string `json:"method"`
		UserAgent string `json:"useragent"`
	} `json:"request"`
	Actor struct {
		Name string `json:"name"`
	} `json:"actor"`
	Source struct {
		Addr       string `json:"addr"`
		InstanceID string `json:"instanceID"`
	} `json:"source"`
}

// receiver is a notification endpoint on loopback: it keeps every event it
// took, refuses envelopes without the expected header or content type, and
// answers 503 while down.
type receiver struct {
	*httptest.Server
	down   atomic.Bool
	slow   atomic.Int64 // nanoseconds each delivery takes
	mu     sync.Mutex
	events []r2Event
	bad    []string // what a delivery got wrong
}

func startReceiver(t *testing.T, header, value string) *receiver {
	rc := &receiver{}
	rc.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if rc.down.Load() {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		time.Sleep(time.Duration(rc.slow.Load()))
		body, _ := io.ReadAll(r.Body)
		var env struct {
			Events []r2Event `json:"events"`
		}
		rc.mu.Lock()
		defer rc.mu.Unlock()
		switch {
		case r.Method != http.MethodPost:
			rc.bad = append(rc.bad, "method "+r.Method)
		case r.Header.Get("Content-Type") != "application/vnd.docker.distribution.events.v1+json":
			rc.bad = append(rc.bad, "content type "+r.Header.Get("Content-Type"))
		case r.Header.Get(header) != value:
			rc.bad = append(rc.bad, header+": "+r.Header.Get(header))
		case json.Unmarshal(body, &env) != nil || len(env.Events) == 0:
			rc.bad = append(rc.bad, "envelope "+string(body))
		}
		rc.events = append(rc.events, env.Events...)
	}))
	t.Cleanup(rc.Close)
	return rc
}

// wait returns the first event match accepts, within d.
func (rc *receiver) wait(t *testing.T, d time.Duration, what string, match func(e r2Event) bool) r2Event {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		rc.mu.Lock()
		if len(rc.bad) > 0 {
			t.Fatalf("a delivery was wrong: %v", rc.bad)
		}
		for _, e := range rc.events {
			if match(e) {
				rc.mu.Unlock()
				return e
			}
		}
		n := len(rc.events)
		rc.mu.Unlock()
		if time.Now().After(deadline) {
			rc.mu.Lock()
			defer rc.mu.Unlock()
			t.Fatalf("no %s event within %s (%d events received: %+v)", what, d, n, rc.events)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// count counts the events match accepts, and says whether any ID came twice.
func (rc *receiver) count(match func(e r2Event) bool) (n int, dup string) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	seen := map[string]bool{}
	for _, e := range rc.events {
		if seen[e.ID] {
			dup = e.ID
		}
		seen[e.ID] = true
		if match(e) {
			n++
		}
	}
	return n, dup
}

func manifestPush(repo, tag string) func(e r2Event) bool {
	return func(e r2Event) bool {
		return e.Action == "push" && e.Target.Repository == repo && e.Target.Tag == tag && strings.Contains(e.Target.URL, "/manifests/")
	}
}

// TestNotifications: registry:2's config.yml with a notification endpoint
// (the test's receiver, with a header). A real dockerd's push, its pull,
// a DELETE and a delete through the admin API arrive in registry:2's
// envelope, with the header, the
// target's digest, size, media type, tag and URL, and the request. The
// endpoint down during a push: the event is retried and delivered once it
// is back, and the metrics count the failures. Wharf killed with SIGKILL
// between a push and its delivery: delivered after the restart. No event
// is delivered twice.
func TestNotifications(t *testing.T) {
	requireTool(t, "dockerd")
	rc := startReceiver(t, "X-Token", "s3cret")
	cfg := filepath.Join(t.TempDir(), "config.yml")
	yml := fmt.Sprintf(`version: 0.1
notifications:
  endpoints:
    - name: ci
      url: %s/hook
      headers:
        X-Token: [s3cret]
      timeout: 1s
      threshold: 2
      backoff: 200ms
`, rc.URL)
	if err := os.WriteFile(cfg, []byte(yml), 0o644); err != nil {
		t.Fatal(err)
	}
	data, metrics := t.TempDir(), testport.Pick(t)
	args := []string{"--registry-config", cfg, "--mirror=false", "--allow-delete", "--metrics-addr", metrics}
	w := startWharf(t, data, args...)
	d := startDockerdWith(t, map[string]any{"insecure-registries": []string{w.addr}})

	ref := w.addr + "/centos:7"
	d.buildImage(t, ref, "scratch", "n.bin")
	d.docker(t, "push", ref)
	push := rc.wait(t, 10*time.Second, "manifest push", manifestPush("centos", "7"))
	resp, err := http.Head(w.url("/v2/centos/manifests/7"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	dg := resp.Header.Get("Docker-Content-Digest")
	if push.Target.Digest != dg || push.Target.Size <= 0 || push.Target.Length != push.Target.Size ||
		!strings.Contains(push.Target.MediaType, "manifest") || push.Target.URL != "http://"+w.addr+"/v2/centos/manifests/"+dg ||
		push.Request.Method != http.MethodPut || !strings.Contains(push.Request.UserAgent, "docker") || push.ID == "" ||
		push.Timestamp.IsZero() || push.Source.Addr == "" || push.Source.InstanceID == "" || push.Request.Host != w.addr {
		t.Fatalf("the manifest push event: %+v (manifest %s)", push, dg)
	}
	rc.wait(t, 10*time.Second, "blob push", func(e r2Event) bool {
		return e.Action == "push" && e.Target.Repository == "centos" && e.Target.MediaType == "application/octet-stream" && e.Target.Size > 0
	})

	d.docker(t, "rmi", ref)
	d.docker(t, "pull", ref)
	// dockerd asks for the tag with HEAD, then GETs the digest: that GET
	// is the pull, as registry:2 tells it.
	pull := rc.wait(t, 10*time.Second, "manifest pull", func(e r2Event) bool {
		return e.Action == "pull" && e.Target.Repository == "centos" && strings.Contains(e.Target.URL, "/manifests/")
	})
	if pull.Target.Digest != dg || pull.Request.Method != http.MethodGet {
		t.Fatalf("the pull event: %+v", pull)
	}

	req, _ := http.NewRequest(http.MethodDelete, w.url("/v2/centos/manifests/"+dg), nil)
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != http.StatusAccepted {
		t.Fatalf("DELETE: %v %v", err, resp)
	}
	rc.wait(t, 10*time.Second, "delete", func(e r2Event) bool {
		return e.Action == "delete" && e.Target.Repository == "centos" && e.Target.Digest == dg
	})

	// A delete through the admin API (as the console's) is told too.
	if _, err := pushRaw(w, "team/app", "api", []byte("layer-api")); err != nil {
		t.Fatal(err)
	}
	req, _ = http.NewRequest(http.MethodDelete, w.url("/api/v1/repositories/team/app/tags/api"), nil)
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != http.StatusAccepted {
		t.Fatalf("DELETE through the admin API: %v %v", err, resp)
	}
	rc.wait(t, 10*time.Second, "delete through the admin API", func(e r2Event) bool {
		return e.Action == "delete" && e.Target.Repository == "team/app" && e.Target.Tag == "api"
	})

	// The endpoint down during a push: retried, delivered once it is back.
	rc.down.Store(true)
	if _, err := pushRaw(w, "team/app", "down", []byte("layer-while-down")); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(scrape(t, metrics), `wharf_notifications_failed_total{endpoint="ci"}`) ||
		strings.Contains(scrape(t, metrics), `wharf_notifications_failed_total{endpoint="ci"} 0`) {
		if time.Now().After(deadline) {
			t.Fatalf("no failed delivery counted while the endpoint was down:\n%s", scrape(t, metrics))
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !strings.Contains(scrape(t, metrics), `wharf_notifications_pending{endpoint="ci"}`) ||
		strings.Contains(scrape(t, metrics), `wharf_notifications_pending{endpoint="ci"} 0`) {
		t.Fatalf("nothing pending while the endpoint is down:\n%s", scrape(t, metrics))
	}
	rc.down.Store(false)
	rc.wait(t, 10*time.Second, "push made while the endpoint was down", manifestPush("team/app", "down"))

	// SIGKILL between the push and its delivery: delivered after the restart.
	rc.down.Store(true)
	if _, err := pushRaw(w, "team/app", "killed", []byte("layer-before-kill")); err != nil {
		t.Fatal(err)
	}
	w.kill()
	rc.down.Store(false)
	w = startWharf(t, data, args...)
	rc.wait(t, 15*time.Second, "push made before the SIGKILL", manifestPush("team/app", "killed"))

	// The console's overview has a line for the endpoint.
	resp, err = http.Get(w.url("/"))
	if err != nil {
		t.Fatal(err)
	}
	if page := readAll(t, resp); !strings.Contains(page, "<h2>Notifications</h2>") || !strings.Contains(page, "<b>ci</b>") ||
		!strings.Contains(page, " sent · ") {
		t.Fatalf("the console's overview shows no notification line:\n%s", page)
	}
	if _, dup := rc.count(func(r2Event) bool { return true }); dup != "" {
		t.Fatalf("event %s was delivered twice", dup)
	}
	for _, tag := range []string{"7", "down", "killed"} {
		repo := map[string]string{"7": "centos", "down": "team/app", "killed": "team/app"}[tag]
		if n, _ := rc.count(manifestPush(repo, tag)); n != 1 {
			t.Fatalf("the push of %s:%s was delivered %d times", repo, tag, n)
		}
	}
}

// TestNotificationsCluster: three nodes on one etcd and one bucket, each
// with the same endpoint, which is down while pushes and pulls go through
// each node and slow once it is back (so that nodes delivering the same
// queue at once would show): each event is delivered exactly once (the
// queue is shared, one node delivers it).
func TestNotificationsCluster(t *testing.T) {
	rc := startReceiver(t, "X-Token", "c1")
	c := startCluster(t, 3, "--mirror=false", "--notify-url", rc.URL+"/hook", "--notify-header", "X-Token: c1")
	rc.down.Store(true)
	rc.slow.Store(int64(20 * time.Millisecond))
	for i, node := range c.nodes {
		tag := fmt.Sprintf("n%d", i)
		if _, err := pushRaw(node, "team/cl", tag, []byte("cluster layer "+tag)); err != nil {
			t.Fatal(err)
		}
		other := c.nodes[(i+1)%len(c.nodes)]
		resp, err := http.Get(other.url("/v2/team/cl/manifests/" + tag))
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("pull %s from another node: %v %v", tag, err, resp)
		}
		resp.Body.Close()
	}
	time.Sleep(2500 * time.Millisecond) // every node's loop has looked at the queue
	rc.down.Store(false)
	for i := range c.nodes {
		tag := fmt.Sprintf("n%d", i)
		rc.wait(t, 30*time.Second, "push of "+tag, manifestPush("team/cl", tag))
		rc.wait(t, 30*time.Second, "pull of "+tag, func(e r2Event) bool {
			return e.Action == "pull" && e.Target.Repository == "team/cl" && e.Target.Tag == tag
		})
	}
	time.Sleep(3 * time.Second) // time for a second delivery, if there were one
	for i := range c.nodes {
		tag := fmt.Sprintf("n%d", i)
		pushes, dup := rc.count(manifestPush("team/cl", tag))
		pulls, _ := rc.count(func(e r2Event) bool {
			return e.Action == "pull" && e.Target.Repository == "team/cl" && e.Target.Tag == tag
		})
		if pushes != 1 || pulls != 1 || dup != "" {
			t.Fatalf("%s: %d push and %d pull events delivered (duplicate id %q); want each once", tag, pushes, pulls, dup)
		}
	}
}
