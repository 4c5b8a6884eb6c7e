package e2e

import (
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wharf-registry/wharf/internal/fakehub"
	"github.com/wharf-registry/wharf/internal/testport"
)

// TestContainerImage builds the repository's Dockerfile from a context
// holding only a static wharf binary, runs it with the real dockerd as the
// README says (a host directory as /var/lib/wharf; --network host, since
// the test daemon has no bridge; the address from registry:2's variable),
// pushes and pulls through it, mirrors from the fake hub, waits for the
// image's own health check to pass, and finds the data again after
// `docker restart`. registry:2's own `docker run` line on a directory the
// real registry:2 wrote serves its image at once and keeps what is pushed
// across `docker rm -f` and the same line.
func TestContainerImage(t *testing.T) {
	requireTool(t, "dockerd")
	requireTool(t, "skopeo")
	ctx := t.TempDir()
	build := exec.Command("go", "build", "-o", filepath.Join(ctx, "wharf"), "github.com/wharf-registry/wharf/cmd/wharf")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("static build: %v\n%s", err, out)
	}
	dockerfile, err := filepath.Abs("../../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	d := startDockerd(t)
	d.docker(t, "build", "-q", "-t", "wharf-e2e", "-f", dockerfile, ctx)

	hub := fakehub.Start(t)
	img := hub.Push("library/alpine", "latest", fakehub.ImageSpec{Platforms: []string{hostPlatform}, Layers: 2, LayerSize: 128 << 10, Seed: 1201})
	addr := testport.Pick(t)
	data := t.TempDir()
	d.docker(t, "run", "-d", "--name", "wharf-e2e", "--restart=always", "--network", "host", "--health-interval", "1s",
		"-v", data+":/var/lib/wharf", "-e", "REGISTRY_HTTP_ADDR="+addr, "-e", "WHARF_UPSTREAM=docker.io="+hub.URL, "wharf-e2e")
	t.Cleanup(func() { runErr(time.Minute, d.env(), "docker", "rm", "-f", "wharf-e2e") })
	waitUp := func(when string) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			if resp, err := http.Get("http://" + addr + "/v2/"); err == nil {
				resp.Body.Close()
				if resp.StatusCode == 200 {
					return
				}
			}
			if time.Now().After(deadline) {
				logs, _ := runErr(time.Minute, d.env(), "docker", "logs", "wharf-e2e")
				t.Fatalf("%s: the container does not answer on %s\n%s", when, addr, logs)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	waitUp("started")

	ref := addr + "/centos:latest"
	d.buildImage(t, ref, "scratch", "a.bin", "b.bin")
	d.roundTrip(t, ref)
	d.docker(t, "pull", addr+"/alpine:latest")
	if id := d.docker(t, "image", "inspect", "--format", "{{.Id}}", addr+"/alpine:latest"); id != img.Configs[hostPlatform].String() {
		t.Fatalf("alpine through the container: %s, want %s", id, img.Configs[hostPlatform])
	}
	if _, err := os.Stat(filepath.Join(data, "index")); err != nil {
		t.Fatalf("the data is not in the mounted host directory: %v", err)
	}

	waitHealthy := func(name string) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			st := d.docker(t, "inspect", "--format", "{{.State.Health.Status}}", name)
			if st == "healthy" {
				return
			}
			if time.Now().After(deadline) {
				logs, _ := runErr(time.Minute, d.env(), "docker", "inspect", "--format", "{{json .State.Health}}", name)
				t.Fatalf("%s: the image's health check says %q\n%s", name, st, logs)
			}
			time.Sleep(500 * time.Millisecond)
		}
	}
	waitHealthy("wharf-e2e")
	// Options after the image name, as the README suggests (and another
	// address than the variables say): the health check finds the server
	// through what it recorded in its data directory.
	addr2 := testport.Pick(t)
	d.docker(t, "run", "-d", "--name", "wharf-e2e-flags", "--network", "host", "--health-interval", "1s",
		"-v", t.TempDir()+":/var/lib/wharf", "wharf-e2e", "serve", "--addr", addr2, "--mirror=false")
	t.Cleanup(func() { runErr(time.Minute, d.env(), "docker", "rm", "-f", "wharf-e2e-flags") })
	waitHealthy("wharf-e2e-flags")

	// registry:2's own `docker run` line, volume path included: the data
	// lands in the mounted directory and survives `docker rm -f` and the
	// same `docker run`.
	// The directory holds what the real registry:2 wrote: the first start
	// imports it, the second imports nothing.
	addr3, r2data := testport.Pick(t), t.TempDir()
	r2 := startRegistry2(t, r2data)
	skopeo(t, "copy", "--all", "--preserve-digests", "--src-tls-verify=false", "--dest-tls-verify=false",
		"docker://"+hub.Host()+"/library/alpine:latest", "docker://"+r2+"/base:1")
	runR2 := func() {
		d.docker(t, "run", "-d", "--name", "wharf-e2e-r2", "--network", "host", "--health-interval", "1s", "-v", r2data+":/var/lib/registry",
			"-e", "REGISTRY_HTTP_ADDR="+addr3, "wharf-e2e", "serve", "--mirror=false")
	}
	runR2()
	t.Cleanup(func() { runErr(time.Minute, d.env(), "docker", "rm", "-f", "wharf-e2e-r2") })
	waitHealthy("wharf-e2e-r2")
	d.docker(t, "pull", addr3+"/base:1")
	if id := d.docker(t, "image", "inspect", "--format", "{{.Id}}", addr3+"/base:1"); id != img.Configs[hostPlatform].String() {
		t.Fatalf("registry:2's base:1 through the container: %s, want %s", id, img.Configs[hostPlatform])
	}
	r2ref := addr3 + "/centos:7"
	d.buildImage(t, r2ref, "scratch", "c.bin")
	r2id := d.docker(t, "image", "inspect", "--format", "{{.Id}}", r2ref)
	d.docker(t, "push", r2ref)
	if _, err := os.Stat(filepath.Join(r2data, "index")); err != nil {
		t.Fatalf("registry:2's volume path holds no data: %v", err)
	}
	d.docker(t, "rm", "-f", "wharf-e2e-r2")
	runR2()
	waitHealthy("wharf-e2e-r2")
	if logs, _ := runErr(time.Minute, d.env(), "docker", "logs", "wharf-e2e-r2"); !strings.Contains(logs, "nothing to import") {
		t.Fatalf("the second start on registry:2's volume does not say it had nothing to import:\n%s", logs)
	}
	d.docker(t, "rmi", r2ref)
	d.docker(t, "pull", r2ref)
	if got := d.docker(t, "image", "inspect", "--format", "{{.Id}}", r2ref); got != r2id {
		t.Fatalf("after docker rm -f and the same docker run: %s, pushed %s", got, r2id)
	}

	id := d.docker(t, "image", "inspect", "--format", "{{.Id}}", ref)
	d.docker(t, "restart", "wharf-e2e")
	waitUp("after docker restart")
	d.docker(t, "rmi", ref)
	d.docker(t, "pull", ref)
	if got := d.docker(t, "image", "inspect", "--format", "{{.Id}}", ref); got != id {
		t.Fatalf("after docker restart centos is %s, pushed %s", got, id)
	}
	if u := d.docker(t, "image", "inspect", "--format", "{{.Config.User}}", "wharf-e2e"); strings.TrimSpace(u) != "" {
		t.Fatalf("image user %q: the README documents root (as registry:2)", u)
	}
}
