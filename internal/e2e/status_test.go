package e2e

import (
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/wharf-registry/wharf/internal/fakehub"
)

// chromium runs headless Chromium (Debian's package) with a fresh profile
// and no background networking.
func chromium(t *testing.T, args ...string) string {
	t.Helper()
	bin := requireTool(t, "chromium")
	base := []string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
		"--user-data-dir=" + t.TempDir()}
	return run(t, 2*time.Minute, nil, bin, append(base, args...)...)
}

// TestStatusPage opens the status page in headless Chromium after a cold
// and a warm pull: it shows the cached image and the hit ratio, and a
// screenshot is taken (WHARF_SCREENSHOT=path keeps it, for the README).
func TestStatusPage(t *testing.T) {
	hub := fakehub.Start(t)
	hub.Push("library/nginx", "1", fakehub.ImageSpec{Platforms: []string{"linux/amd64", "linux/arm64"}, Layers: 3, LayerSize: 256 << 10, Seed: 80})
	hub.SetRateLimit(100, 60)
	w := startWharf(t, "", "--upstream", "docker.io="+hub.URL)
	c := &http.Client{Timeout: time.Minute}
	for i := 0; i < 2; i++ { // cold, then warm
		if err := pullMirrored(c, "http://"+w.addr, "library/nginx"); err != nil {
			t.Fatal(err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err := (&pusher{base: "http://" + w.addr, client: c, mu: nil}).pushPrivate("team/app"); err != nil {
		t.Fatal(err)
	}
	dom := chromium(t, "--dump-dom", "http://"+w.addr+"/")
	for _, want := range []string{"docker.io/library/nginx", "Cache hit ratio", "team/app", "docker.io", "pulls left"} {
		if !strings.Contains(dom, want) {
			t.Fatalf("status page lacks %q:\n%s", want, dom)
		}
	}
	m := regexp.MustCompile(`<div class="big">(\d+)%</div>\s*<div class="sub">(\d+) hits, (\d+) misses`).FindStringSubmatch(dom)
	if m == nil || m[2] == "0" || m[3] == "0" {
		t.Fatalf("hit ratio after a cold and a warm pull: %v\n%s", m, dom)
	}
	shot := filepath.Join(t.TempDir(), "status.png")
	if keep := os.Getenv("WHARF_SCREENSHOT"); keep != "" {
		shot = keep
	}
	chromium(t, "--window-size=1280,960", "--screenshot="+shot, "http://"+w.addr+"/")
	if st, err := os.Stat(shot); err != nil || st.Size() < 10<<10 {
		t.Fatalf("screenshot: %v", err)
	}
}
