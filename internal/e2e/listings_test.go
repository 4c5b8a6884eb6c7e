package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wharf-registry/wharf/internal/fakehub"
)

// Go-built clients (crane, oras, helm), each from its tools module under
// internal/tools, built once per test binary through the module proxy.
var (
	goToolsMu sync.Mutex
	goTools   = map[string]string{}
)

func goTool(t *testing.T, name, pkg string) string {
	t.Helper()
	goToolsMu.Lock()
	defer goToolsMu.Unlock()
	if bin, ok := goTools[name]; ok {
		return bin
	}
	dir, err := os.MkdirTemp("", "wharf-e2e-"+name)
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, name)
	cmd := exec.Command("go", "build", "-o", bin, pkg)
	cmd.Dir = filepath.Join("..", "tools", name)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building %s (%s): %v\n%s", name, pkg, err, out)
	}
	goTools[name] = bin
	return bin
}

func crane(t *testing.T) string {
	return goTool(t, "crane", "github.com/google/go-containerregistry/cmd/crane")
}
func oras(t *testing.T) string { return goTool(t, "oras", "oras.land/oras/cmd/oras") }
func helm(t *testing.T) string { return goTool(t, "helm", "helm.sh/helm/v4/cmd/helm") }

func lines(s string) []string {
	var out []string
	for _, l := range strings.Split(strings.TrimSpace(s), "\n") {
		if l = strings.TrimSpace(l); l != "" {
			out = append(out, l)
		}
	}
	return out
}

// TestTagListsWithRealClients: crane ls and skopeo list-tags of a mirrored
// repository never pulled list upstream's tags (two of the hub's pages);
// docker pull -a through registry-mirrors pulls every tag; with upstream
// down the last list is still served; a pushed repository whose every tag
// was deleted lists no tags and the clients exit 0.
func TestTagListsWithRealClients(t *testing.T) {
	requireTool(t, "skopeo")
	requireTool(t, "dockerd")
	cr := crane(t)
	hub := fakehub.Start(t)
	var want []string
	for i, tag := range []string{"1.0", "1.1", "2.0"} {
		hub.Push("library/app", tag, fakehub.ImageSpec{Platforms: []string{"linux/amd64", "linux/arm64"}, Layers: 1, LayerSize: 32 << 10, Seed: uint64(70 + i)})
		want = append(want, tag)
	}
	img := hub.Push("library/many", "v000", fakehub.ImageSpec{Platforms: []string{"linux/amd64"}, Layers: 1, LayerSize: 1024, Seed: 80})
	var many []string
	for i := range 150 {
		tag := fmt.Sprintf("v%03d", i)
		hub.Retag("library/many", tag, img)
		many = append(many, tag)
	}
	w := startWharf(t, "", "--upstream", "docker.io="+hub.URL, "--tag-ttl", "2s", "--allow-delete")

	if got := lines(run(t, time.Minute, nil, cr, "ls", "--insecure", w.addr+"/library/many")); !slices.Equal(got, many) {
		t.Fatalf("crane ls of a repository never pulled: %d tags, want the 150 upstream lists", len(got))
	}
	out := skopeo(t, "list-tags", "--tls-verify=false", "docker://"+w.addr+"/library/app")
	for _, tag := range want {
		if !strings.Contains(out, `"`+tag+`"`) {
			t.Fatalf("skopeo list-tags: %s lacks %s", out, tag)
		}
	}

	d := startDockerdWith(t, map[string]any{"registry-mirrors": []string{"http://" + w.addr}})
	pulled := d.docker(t, "pull", "-a", "app")
	if got := lines(d.docker(t, "images", "--format", "{{.Tag}}", "app")); !slices.Equal(sorted(got), want) {
		t.Fatalf("docker pull -a through the mirror gave tags %v, want %v:\n%s", got, want, pulled)
	}

	hub.SetFailStatus(503)
	time.Sleep(2500 * time.Millisecond) // past the tag TTL
	if got := lines(run(t, time.Minute, nil, cr, "ls", "--insecure", w.addr+"/library/many")); !slices.Equal(got, many) {
		t.Fatalf("crane ls with upstream down: %d tags, want the last list", len(got))
	}
	hub.SetFailStatus(0)

	// A pushed repository emptied by deletes.
	ref := w.addr + "/team/tool:v1"
	run(t, time.Minute, nil, cr, "copy", "--insecure", w.addr+"/library/app:1.0", ref)
	dg := strings.TrimSpace(run(t, time.Minute, nil, cr, "digest", "--insecure", ref))
	run(t, time.Minute, nil, cr, "delete", "--insecure", w.addr+"/team/tool@"+dg)
	if out, err := runErr(time.Minute, nil, cr, "ls", "--insecure", w.addr+"/team/tool"); err != nil || strings.TrimSpace(out) != "" {
		t.Fatalf("crane ls of an emptied repository: %v %q", err, out)
	}
	if out, err := runErr(time.Minute, nil, "skopeo", "list-tags", "--tls-verify=false", "docker://"+w.addr+"/team/tool"); err != nil || !strings.Contains(out, `"Tags": []`) {
		t.Fatalf("skopeo list-tags of an emptied repository: %v %s", err, out)
	}
}

func sorted(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}

// TestReferrersAndChartsWithRealClients: oras discover through the mirror
// lists an SBOM attached upstream, on an upstream with the referrers API
// (another Wharf), on one without it (CNCF Distribution 3.1.1: oras keeps
// the tag schema there) and through a chained edge; helm pull without
// --version through the mirror takes the newest chart upstream, and a
// newer version pushed upstream after the tag TTL.
func TestReferrersAndChartsWithRealClients(t *testing.T) {
	or, hm := oras(t), helm(t)
	home := t.TempDir()
	env := []string{"HOME=" + home, "XDG_CONFIG_HOME=" + home + "/config", "XDG_CACHE_HOME=" + home + "/cache", "XDG_DATA_HOME=" + home + "/data", "DOCKER_CONFIG=" + home + "/docker"}
	core := startWharf(t, "", "--mirror=false")
	r2 := startRegistry2(t, t.TempDir())
	edge := startWharf(t, "", "--upstream", "core.test=http://"+core.addr, "--upstream", "r2.test=http://"+r2, "--tag-ttl", "2s")
	// A chained edge names the registry it mirrors and reaches it through
	// the first edge (as containerd's hosts.toml does: ?ns=core.test).
	chained := startWharf(t, "", "--upstream", "core.test=http://"+edge.addr)

	work := t.TempDir()
	for _, f := range []string{"app.txt", "sbom.json"} {
		if err := os.WriteFile(filepath.Join(work, f), []byte(f+" of "+work), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	in := func(bin string) func(args ...string) string { // a client run in work, failing the test on error
		return func(args ...string) string {
			t.Helper()
			out, err := runInDir(work, 2*time.Minute, env, bin, args...)
			if err != nil {
				t.Fatalf("%s %s: %v\n%s", filepath.Base(bin), strings.Join(args, " "), err, out)
			}
			return out
		}
	}
	orasIn, helmIn := in(or), in(hm)
	const sbom = "application/vnd.example.sbom.v1+json"
	for _, up := range []string{core.addr, r2} {
		orasIn("push", "--plain-http", up+"/team/app:v1", "app.txt")
		orasIn("attach", "--plain-http", "--artifact-type", sbom, up+"/team/app:v1", "sbom.json")
	}
	for _, ref := range []string{
		edge.addr + "/core.test/team/app:v1",
		edge.addr + "/r2.test/team/app:v1",
		chained.addr + "/core.test/team/app:v1",
	} {
		out := orasIn("discover", "--plain-http", "--format", "json", ref)
		if !strings.Contains(out, sbom) {
			t.Fatalf("oras discover %s does not list the SBOM:\n%s", ref, out)
		}
	}

	// helm: charts on CNCF Distribution, pulled through the mirror.
	helmIn("create", "mychart")
	push := func(version string) {
		helmIn("package", "mychart", "--version", version)
		helmIn("push", "mychart-"+version+".tgz", "oci://"+r2+"/charts", "--plain-http")
	}
	pull := func(want string) {
		t.Helper()
		dest := t.TempDir()
		helmIn("pull", "oci://"+edge.addr+"/r2.test/charts/mychart", "--plain-http", "-d", dest)
		if _, err := os.Stat(filepath.Join(dest, "mychart-"+want+".tgz")); err != nil {
			entries, _ := os.ReadDir(dest)
			t.Fatalf("helm pull without --version: want %s, got %v", want, entries)
		}
	}
	push("0.1.0")
	push("0.2.0")
	pull("0.2.0")
	push("0.3.0")
	time.Sleep(2500 * time.Millisecond) // past the tag TTL
	pull("0.3.0")
}
