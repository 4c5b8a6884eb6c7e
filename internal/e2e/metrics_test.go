package e2e

import (
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/wharf-registry/wharf/internal/fakehub"
	"github.com/wharf-registry/wharf/internal/testport"
)

// TestMetricsEndpoint: --metrics-addr serves Prometheus metrics that show a
// pull through the mirror, the upstream's health and its rate-limit
// headroom.
func TestMetricsEndpoint(t *testing.T) {
	hub := fakehub.Start(t)
	hub.Push("library/m", "1", fakehub.ImageSpec{Platforms: []string{"linux/amd64", "linux/arm64"}, Layers: 2, LayerSize: 64 << 10, Seed: 70})
	hub.SetRateLimit(100, 60)
	metricsAddr := testport.Pick(t)
	w := startWharf(t, "", "--upstream", "docker.io="+hub.URL, "--metrics-addr", metricsAddr)
	if err := pullMirrored(&http.Client{Timeout: time.Minute}, "http://"+w.addr, "library/m"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get("http://" + metricsAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	value := func(series string) float64 {
		t.Helper()
		m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(series) + ` ([0-9.e+-]+)$`).FindSubmatch(body)
		if m == nil {
			t.Fatalf("metrics lack %s:\n%s", series, body)
		}
		v, _ := strconv.ParseFloat(string(m[1]), 64)
		return v
	}
	if value(`wharf_cache_requests_total{kind="manifest",result="miss"}`) < 2 {
		t.Error("manifest misses not counted")
	}
	if value(`wharf_upstream_bytes_total`) <= 0 || value(`wharf_upstream_up{registry="docker.io"}`) != 1 {
		t.Error("upstream bytes or health wrong")
	}
	if r := value(`wharf_upstream_ratelimit_remaining{registry="docker.io"}`); r <= 0 || r > 100 {
		t.Errorf("ratelimit-remaining %v", r)
	}
	if value(`wharf_http_requests_total{method="GET",route="manifest",status="200"}`) < 2 {
		t.Error("manifest requests not counted")
	}
	value(`wharf_store_bytes`)
	value(`wharf_gc_runs_total`)
}

// TestDebugAddr: --debug-addr serves Go's profiler: the index, a one
// second CPU profile (gzipped protobuf) and the metrics.
func TestDebugAddr(t *testing.T) {
	addr := testport.Pick(t)
	startWharf(t, "", "--mirror=false", "--debug-addr", addr)
	for _, c := range []struct{ path, want string }{
		{"/debug/pprof/", "goroutine"},
		{"/debug/pprof/profile?seconds=1", "\x1f\x8b"},
		{"/metrics", "wharf_"},
	} {
		resp, err := http.Get("http://" + addr + c.path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), c.want) {
			t.Fatalf("%s: %s, %d bytes, no %q", c.path, resp.Status, len(body), c.want)
		}
	}
}
