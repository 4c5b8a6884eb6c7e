package e2e

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/wharf-registry/wharf/internal/fakehub"
)

// TestRegistry2Guide runs the everyday registry:2 guide's commands verbatim
// with a real dockerd against Wharf's default settings (plus deletes, as
// the guide enables them): centos pulled from Docker Hub through the
// mirror, tagged and pushed as 127.0.0.1:PORT/centos, my-ubuntu built and
// pushed; both pull back with their image IDs, the catalog lists them, a
// DELETE of centos's manifest removes its tag; alpine, never pushed, still
// comes from Docker Hub; library/alpine cannot be pushed to.
func TestRegistry2Guide(t *testing.T) {
	hub := fakehub.Start(t)
	centos := hub.Push("library/centos", "latest", fakehub.ImageSpec{Platforms: []string{hostPlatform}, Layers: 2, LayerSize: 256 << 10, Seed: 1101})
	alpine := hub.Push("library/alpine", "latest", fakehub.ImageSpec{Platforms: []string{hostPlatform}, Layers: 1, LayerSize: 128 << 10, Seed: 1102})
	w := startWharf(t, "", "--upstream", "docker.io="+hub.URL, "--allow-delete")
	d := startDockerdWith(t, map[string]any{"registry-mirrors": []string{"http://" + w.addr}})
	reg := "127.0.0.1:" + strings.Split(w.addr, ":")[1]

	d.docker(t, "pull", "centos")
	d.docker(t, "tag", "centos", reg+"/centos")
	d.roundTrip(t, reg+"/centos")
	if id := d.docker(t, "image", "inspect", "--format", "{{.Id}}", reg+"/centos"); id != centos.Configs[hostPlatform].String() {
		t.Fatalf("pushed centos pulls back as %s, want %s", id, centos.Configs[hostPlatform])
	}
	d.buildImage(t, reg+"/my-ubuntu", "scratch", "a.bin", "b.bin")
	d.roundTrip(t, reg+"/my-ubuntu")

	resp, err := http.Get(w.url("/v2/_catalog"))
	if err != nil {
		t.Fatal(err)
	}
	var cat struct{ Repositories []string }
	json.Unmarshal([]byte(readAll(t, resp)), &cat)
	listed := map[string]bool{}
	for _, r := range cat.Repositories {
		listed[r] = true
	}
	if !listed["centos"] || !listed["my-ubuntu"] {
		t.Fatalf("catalog %v lacks centos or my-ubuntu", cat.Repositories)
	}

	// The guide's delete: HEAD for the digest, DELETE by digest, tag gone.
	req, _ := http.NewRequest(http.MethodHead, w.url("/v2/centos/manifests/latest"), nil)
	req.Header.Set("Accept", "application/vnd.docker.distribution.manifest.v2+json")
	resp, err = http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("HEAD centos:latest: %v %v", err, resp)
	}
	resp.Body.Close()
	req, _ = http.NewRequest(http.MethodDelete, w.url("/v2/centos/manifests/"+resp.Header.Get("Docker-Content-Digest")), nil)
	if resp, err = http.DefaultClient.Do(req); err != nil || resp.StatusCode != http.StatusAccepted {
		t.Fatalf("DELETE centos's manifest: %v %v", err, resp)
	}
	resp.Body.Close()
	resp, err = http.Get(w.url("/v2/centos/tags/list"))
	if err != nil {
		t.Fatal(err)
	}
	if body := readAll(t, resp); strings.Contains(body, `"latest"`) {
		t.Fatalf("centos's tags after the delete: %s", body)
	}
	if _, err := runErr(time.Minute, d.env(), "docker", "pull", reg+"/centos"); err == nil {
		t.Fatal("deleted centos still pulls (from Docker Hub?)")
	}

	// Never pushed here: Docker Hub's image, through the fall-through.
	d.docker(t, "pull", reg+"/alpine")
	if id := d.docker(t, "image", "inspect", "--format", "{{.Id}}", reg+"/alpine"); id != alpine.Configs[hostPlatform].String() {
		t.Fatalf("%s/alpine is %s, want Docker Hub's %s", reg, id, alpine.Configs[hostPlatform])
	}
	d.docker(t, "tag", reg+"/alpine", reg+"/library/alpine")
	out, err := runErr(time.Minute, d.env(), "docker", "push", reg+"/library/alpine")
	if err == nil || !strings.Contains(out, "denied") || !strings.Contains(out, "push it as alpine") {
		t.Fatalf("push to library/alpine: %v\n%s", err, out)
	}
}
