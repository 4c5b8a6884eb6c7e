package mirror

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/wharf-registry/wharf/cache"
	"github.com/wharf-registry/wharf/cache/stores"
	"github.com/wharf-registry/wharf/mirror/registry"
)

// syncLog is a log buffer safe for the server's goroutines.
type syncLog struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *syncLog) Write(p []byte) (int, error) { l.mu.Lock(); defer l.mu.Unlock(); return l.b.Write(p) }
func (l *syncLog) String() string              { l.mu.Lock(); defer l.mu.Unlock(); return l.b.String() }

// TestEveryExitCountedOnce: health checks, the status page, token logins
// and refused uploads are logged and counted like every request, once.
func TestEveryExitCountedOnce(t *testing.T) {
	users, pol := testPolicy(t)
	m := registry.NewMetrics(prometheus.NewRegistry())
	logs := &syncLog{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	st, err := stores.Open(cache.Options{Dir: t.TempDir(), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	reg := New(st, Options{Logger: log, Metrics: m, Users: users, Policy: pol, MaxUploads: 1})
	srv := httptest.NewServer(reg)
	t.Cleanup(func() { srv.Close(); st.Close() })
	r := &testRegistry{srv: srv, store: st}

	r.do(t, "GET", "/healthz", nil, nil)
	r.do(t, "GET", "/readyz", nil, nil)
	r.do(t, "GET", "/", nil, nil)
	r.do(t, "GET", "/token", nil, basic("alice", "alice-pw"))
	// One upload holds the only slot; the second is refused.
	pr, pw := io.Pipe()
	first := make(chan struct{})
	go func() {
		defer close(first)
		req, _ := http.NewRequest("POST", srv.URL+"/v2/team/a/blobs/uploads/?digest=sha256:"+strings.Repeat("0", 64), pr)
		req.Header.Set("Authorization", basic("alice", "alice-pw")["Authorization"])
		if resp, err := srv.Client().Do(req); err == nil {
			resp.Body.Close()
		}
	}()
	pw.Write([]byte("x"))
	for i := 0; ; i++ { // the first upload holds the slot
		n, _ := reg.reg.Uploads("")
		if n == 1 {
			break
		}
		if i == 2000 {
			t.Fatal("the first upload never started")
		}
		time.Sleep(5 * time.Millisecond)
	}
	resp, body := r.do(t, "POST", "/v2/team/b/blobs/uploads/", nil, basic("alice", "alice-pw"))
	pw.Close()
	<-first
	if resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("second upload: %s %s", resp.Status, body)
	}
	for label, want := range map[string]float64{"health": 2, "console": 1, "token": 1} {
		if got := testutil.ToFloat64(m.Requests.WithLabelValues(label, "GET", "200")); got != want {
			t.Errorf("%s requests counted %v times, want %v", label, got, want)
		}
	}
	if got := testutil.ToFloat64(m.Requests.WithLabelValues("uploads", "POST", "429")); got != 1 {
		t.Errorf("refused upload counted %v times, want 1", got)
	}
	var refused, health int
	for _, line := range strings.Split(logs.String(), "\n") {
		if strings.Contains(line, "msg=request") && strings.Contains(line, "status=429") {
			refused++
		}
		if strings.Contains(line, "msg=request") && strings.Contains(line, "path=/healthz") {
			health++
		}
	}
	if refused != 1 || health != 1 {
		t.Fatalf("log lines: %d for the refused upload, %d for /healthz; want 1 each:\n%s", refused, health, logs)
	}
}

// TestClientGoneIsNotAServerError: a client that hangs up while its cold
// pull waits for the upstream is logged and counted as 499 at INFO, and is
// not a recent error on the status page.
func TestClientGoneIsNotAServerError(t *testing.T) {
	m := registry.NewMetrics(prometheus.NewRegistry())
	logs := &syncLog{}
	e := newMirrorEnv(t, Options{Metrics: m, Logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	e.hub.Push("library/slow", "1", smallImage(51))
	e.hub.SetLatency(time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", e.srv.URL+"/v2/library/slow/manifests/1", nil)
	if resp, err := e.srv.Client().Do(req); err == nil {
		resp.Body.Close()
		t.Fatalf("the pull answered before its client hung up: %s", resp.Status)
	}
	// The request is counted, then logged: wait for both.
	const line = "level=INFO msg=request method=GET path=/v2/library/slow/manifests/1 status=499"
	deadline := time.Now().Add(5 * time.Second)
	for testutil.ToFloat64(m.Requests.WithLabelValues("manifest", "GET", "499")) != 1 || !strings.Contains(logs.String(), line) {
		if time.Now().After(deadline) {
			t.Fatalf("no 499 counted for a client that hung up; log:\n%s", logs)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if got := testutil.ToFloat64(m.Requests.WithLabelValues("manifest", "GET", "500")); got != 0 {
		t.Fatalf("%v 500s counted for a client that hung up", got)
	}
	if l := logs.String(); strings.Contains(l, "level=ERROR") {
		t.Fatalf("log for a client that hung up:\n%s", l)
	}
	if errs := e.reg.svc.RecentErrors(); len(errs) != 0 {
		t.Fatalf("recent errors after a client hung up: %v", errs)
	}
}
