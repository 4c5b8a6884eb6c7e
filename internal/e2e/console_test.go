package e2e

import (
	"bytes"
	"context"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/wharf-registry/wharf/internal/fakehub"
)

// browserCtx starts Debian's Chromium headless through the DevTools
// protocol (chromedp) with a fresh profile; cancelling ends it.
func browserCtx(t *testing.T) context.Context {
	t.Helper()
	bin := requireTool(t, "chromium")
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(bin), chromedp.NoSandbox, chromedp.DisableGPU,
		chromedp.UserDataDir(t.TempDir()), chromedp.WindowSize(1280, 900), chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-component-update", true), chromedp.Flag("hide-scrollbars", true))
	ctx, cancelTimeout := context.WithTimeout(context.Background(), 3*time.Minute)
	actx, cancelAlloc := chromedp.NewExecAllocator(ctx, opts...)
	bctx, cancelBrowser := chromedp.NewContext(actx)
	t.Cleanup(func() { cancelBrowser(); cancelAlloc(); cancelTimeout() })
	return bctx
}

// artifact writes a screenshot into the test's artifacts
// (WHARF_ARTIFACTS, else a temporary directory) and, with WHARF_DOCS set,
// into docs/ for the README.
func artifact(t *testing.T, name string, png []byte) {
	t.Helper()
	if len(png) < 10<<10 {
		t.Fatalf("screenshot %s is only %d bytes", name, len(png))
	}
	dir := os.Getenv("WHARF_ARTIFACTS")
	if dir == "" {
		dir = t.TempDir()
	}
	dirs := []string{dir}
	if os.Getenv("WHARF_DOCS") != "" {
		dirs = append(dirs, filepath.Join("..", "..", "docs"))
	}
	for _, d := range dirs {
		os.MkdirAll(d, 0o755)
		if err := os.WriteFile(filepath.Join(d, name), png, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// TestConsoleInBrowser drives the console in headless Chromium: sign in,
// find a pushed image by search, delete one tag through its confirmation
// (which says what it frees), collect, and see the space back on the
// overview; a form posted without its CSRF token is refused; the pages
// fit a 375 px wide screen; screenshots of the overview and a repository
// page are kept.
func TestConsoleInBrowser(t *testing.T) {
	hub := fakehub.Start(t)
	hub.Push("library/nginx", "1", fakehub.ImageSpec{Platforms: []string{"linux/amd64", "linux/arm64"}, Layers: 3, LayerSize: 256 << 10, Seed: 81})
	hub.SetRateLimit(100, 60)
	users, config := makeUsers(t, map[string]string{"root": "root-pw", "dev": "dev-pw"},
		"rules:\n  - repos: [\"**\"]\n    who: [root]\n    actions: [pull, push, delete, admin]\n"+
			"  - repos: [\"team/**\"]\n    who: [everyone]\n    actions: [pull, push]\n")
	w := startWharf(t, "", "--upstream", "docker.io="+hub.URL, "--htpasswd", users, "--config", config)
	c := &http.Client{Timeout: time.Minute}
	if err := pullMirrored(c, "http://"+w.addr, "library/nginx"); err != nil {
		t.Fatal(err)
	}
	doomed := bytes.Repeat([]byte("only team/app:old has this layer "), 40000) // 1.3 MB
	for _, p := range []struct {
		repo, tag string
		layer     []byte
	}{{"team/app", "v1", []byte("app v1 layer")}, {"team/app", "old", doomed}, {"team/web", "v1", []byte("web layer")}, {"team/api", "v1", []byte("api layer")}} {
		if _, err := pushRaw(w, p.repo, p.tag, p.layer); err != nil {
			t.Fatal(err)
		}
	}
	ctx := browserCtx(t)
	text := func(sel string) string {
		t.Helper()
		s, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(sel)))
		if err != nil {
			t.Fatalf("text of %s: %v", sel, err)
		}
		return s
	}
	do := func(what string, actions ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		if err := chromedp.Do(ctx, actions...); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	waitURL := func(part string) {
		t.Helper()
		for i := 0; ; i++ {
			loc, err := chromedp.Run(ctx, chromedp.Location())
			if err == nil && strings.Contains(loc, part) {
				do("load", chromedp.WaitVisible(chromedp.CSS("h1")))
				return
			}
			if i == 100 {
				t.Fatalf("the browser is at %s (%v), not at a URL with %q", loc, err, part)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	diskBytes := func() int64 {
		t.Helper()
		do("overview", chromedp.Navigate(w.url("/")), chromedp.WaitVisible(chromedp.CSS("#disk")))
		v, err := chromedp.Run(ctx, chromedp.AttributeValue(chromedp.CSS("#disk"), "data-bytes"))
		if err != nil || !v.Exists {
			t.Fatalf("overview's disk figure: %v", err)
		}
		n, _ := strconv.ParseInt(v.Value, 10, 64)
		return n
	}

	// Sign in.
	do("sign in", chromedp.Navigate(w.url("/signin?next=/repositories")), chromedp.WaitVisible(chromedp.ID("user")),
		chromedp.SendKeys(chromedp.ID("user"), "root"), chromedp.SendKeys(chromedp.ID("password"), "root-pw"),
		chromedp.Submit(chromedp.ID("password")), chromedp.WaitVisible(chromedp.ID("repositories")))
	if who := text("header .who span"); who != "root" {
		t.Fatalf("signed in as %q", who)
	}
	before := diskBytes()

	// Find the image by search.
	do("search", chromedp.Navigate(w.url("/repositories")), chromedp.WaitVisible(chromedp.ID("q")),
		chromedp.SendKeys(chromedp.ID("q"), "app"), chromedp.Submit(chromedp.ID("q")))
	waitURL("?q=app")
	if list := text("#repositories tbody"); strings.Contains(list, "team/web") || !strings.Contains(list, "team/app") {
		t.Fatalf("search for app lists:\n%s", list)
	}
	do("open the repository", chromedp.Click(chromedp.CSS(`a[href="/repositories/team/app"]`)), chromedp.WaitVisible(chromedp.ID("tags")))
	shot, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatal(err)
	}
	artifact(t, "console-repository.png", shot)

	// Delete one tag, through its confirmation.
	do("delete old", chromedp.Click(chromedp.CSS(`#tag-old a.danger`)), chromedp.WaitVisible(chromedp.ID("frees")))
	frees := text("#frees")
	if !strings.Contains(frees, "MiB") {
		t.Fatalf("the confirmation says it frees %q (the tag's own layer is 1.3 MB)", frees)
	}
	do("confirm", chromedp.Click(chromedp.ID("confirm")), chromedp.WaitVisible(chromedp.CSS(".flash")))
	if flash := text(".flash"); !strings.Contains(flash, "Deleted team/app:old") {
		t.Fatalf("after the delete: %q", flash)
	}
	if tags := text("#tags tbody"); strings.Contains(tags, "old") || !strings.Contains(tags, "v1") {
		t.Fatalf("tags after the delete:\n%s", tags)
	}

	// Collect now from the GC page (the server may have beaten us to it:
	// what deletes release is collected within seconds anyway).
	do("collect", chromedp.Navigate(w.url("/gc")), chromedp.WaitVisible(chromedp.ID("run-gc")),
		chromedp.Click(chromedp.ID("run-gc")), chromedp.WaitVisible(chromedp.CSS(".flash")))
	if flash := text(".flash"); !strings.Contains(flash, "Collected:") {
		t.Fatalf("after collecting: %q", flash)
	}
	if runs := text("#gc-runs tbody"); !strings.Contains(runs, "console (root)") {
		t.Fatalf("the last runs do not list this one:\n%s", runs)
	}
	after := diskBytes()
	if freed := before - after; freed < int64(len(doomed)) || freed > int64(len(doomed))+4096 {
		t.Fatalf("the overview shows %d → %d bytes: %d freed, want the deleted layer's %d and its config and manifest", before, after, freed, len(doomed))
	}
	if got := text("#reclaimable"); got != "0 B" {
		t.Fatalf("reclaimable after the collection: %q", got)
	}
	shot, err = chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatal(err)
	}
	artifact(t, "console-overview.png", shot)

	// A form posted without its CSRF token is refused.
	if _, err := chromedp.Run(ctx, chromedp.Evaluate[any](`(() => { const f = document.createElement('form'); f.method = 'post'; f.action = '/gc';
		document.body.appendChild(f); f.submit(); return true })()`)); err != nil {
		t.Fatal(err)
	}
	do("the forged form's answer", chromedp.WaitVisible(chromedp.CSS("main section p")))
	if h1, msg := text("h1"), text("main section p"); h1 != "Forbidden" || !strings.Contains(msg, "security token") {
		t.Fatalf("a form without its token: %q %q", h1, msg)
	}

	// 375 px wide: nothing wider than the screen.
	for _, path := range []string{"/", "/repositories", "/repositories/team/app", "/gc", "/audit", "/tokens", "/users"} {
		do("narrow "+path, chromedp.EmulateViewport(375, 800), chromedp.Navigate(w.url(path)), chromedp.WaitVisible(chromedp.CSS("h1")))
		width, err := chromedp.Run(ctx, chromedp.Evaluate[float64](`document.documentElement.scrollWidth`))
		if err != nil || width > 375 {
			t.Errorf("%s at 375 px is %v px wide (%v)", path, width, err)
		}
	}
}
