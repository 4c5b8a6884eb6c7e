package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/wharf-registry/wharf/internal/s3test"
)

// TestHtpasswdAloneIsRegistry2: `--htpasswd` without rules means what
// registry:2's htpasswd means: a signed-in user pushes and pulls any name
// with real dockerd (the seeds' `docker push HOST/centos`), an anonymous
// push is refused at once, and the start says so in one line.
func TestHtpasswdAloneIsRegistry2(t *testing.T) {
	requireTool(t, "dockerd")
	htpasswd, _ := makeUsers(t, map[string]string{"testuser": "testpassword"}, "")
	w := startWharf(t, "", "--mirror=false", "--htpasswd", htpasswd)
	d := startDockerdWith(t, map[string]any{"insecure-registries": []string{w.addr}})
	dockerLogin(t, d, w.addr, "testuser", "testpassword")
	ref := w.addr + "/centos:latest"
	d.buildImage(t, ref, "scratch", "c.bin")
	d.roundTrip(t, ref)
	d.docker(t, "logout", w.addr)
	if out, err := runErr(time.Minute, d.env(), "docker", "push", ref); err == nil || !strings.Contains(strings.ToLower(out), "authentication required") {
		t.Fatalf("anonymous push: %v\n%s", err, out)
	}
	if !strings.Contains(w.log.String(), "registry:2's htpasswd: signed-in users may pull, push, delete everything") {
		t.Fatalf("the start does not say the effective policy:\n%s", w.log)
	}
}

// TestReadOnlyMode: registry:2's read-only variable and Wharf's flag: what
// was pushed before pulls with real dockerd; a push is refused with 405
// saying the registry is read-only; collections do not run.
func TestReadOnlyMode(t *testing.T) {
	requireTool(t, "dockerd")
	data := t.TempDir()
	w := startWharf(t, data, "--mirror=false")
	d := startDockerdWith(t, map[string]any{"insecure-registries": []string{"127.0.0.0/8"}}) // every wharf of this test
	ref := w.addr + "/team/app:v1"
	d.buildImage(t, ref, "scratch", "a.bin")
	d.docker(t, "push", ref)
	if err := w.stop(t); err != nil {
		t.Fatal(err)
	}
	for name, start := range map[string]func() *wharfProc{
		"REGISTRY_STORAGE_MAINTENANCE_READONLY_ENABLED": func() *wharfProc {
			return startWharfWithEnv(t, data, []string{"REGISTRY_STORAGE_MAINTENANCE_READONLY_ENABLED=true"}, "--mirror=false", "--gc-interval", "1s")
		},
		"--read-only": func() *wharfProc { return startWharf(t, data, "--mirror=false", "--read-only", "--gc-interval", "1s") },
	} {
		ro := start()
		roRef := ro.addr + "/team/app:v1"
		d.docker(t, "pull", roRef)
		d.buildImage(t, ro.addr+"/team/app:v2", "scratch", "b.bin")
		if out, err := runErr(time.Minute, d.env(), "docker", "push", ro.addr+"/team/app:v2"); err == nil || !strings.Contains(out, "read-only") {
			t.Fatalf("%s: push to a read-only registry: %v\n%s", name, err, out)
		}
		time.Sleep(1500 * time.Millisecond) // a --gc-interval: no collection runs
		if l := ro.log.String(); !strings.Contains(l, "read-only (--read-only)") || strings.Contains(l, `msg="garbage collection"`) {
			t.Fatalf("%s: log:\n%s", name, l)
		}
		if err := ro.stop(t); err != nil {
			t.Fatal(err)
		}
	}
}

// TestHealthFindsTheServer: `wharf health` (the image's HEALTHCHECK) finds
// the server however its address was given — here a flag the probe never
// sees — through what the server records in its data directory, even with
// a variable naming another address; once the server stopped, the probe
// fails.
func TestHealthFindsTheServer(t *testing.T) {
	w := startWharf(t, "", "--mirror=false")
	probe := func(env ...string) (string, error) {
		return runErr(30*time.Second, env, wharfBin, "health")
	}
	for _, env := range [][]string{
		{"REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY=" + w.data},                // the image's way
		{"WHARF_DATA=" + w.data, "REGISTRY_HTTP_ADDR=127.0.0.1:1"},             // a stale variable: the record wins
		{"WHARF_DATA=" + w.data, "WHARF_ADDR=127.0.0.1:1", "WHARF_TLS_CERT=x"}, // and the scheme is recorded too
	} {
		if out, err := probe(env...); err != nil || !strings.Contains(out, "ok") {
			t.Fatalf("health with %v: %v\n%s", env, err, out)
		}
	}
	if err := w.stop(t); err != nil {
		t.Fatal(err)
	}
	if out, err := probe("WHARF_DATA=" + w.data); err == nil {
		t.Fatalf("health after the server stopped: %s", out)
	}
}

// TestRegistry2S3Variables: registry:2's S3 storage variables (the
// REGISTRY_STORAGE=s3 guides' form, the endpoint as a URL) against a real
// S3-compatible server: a push lands in the bucket under the root
// directory, and pulls back.
func TestRegistry2S3Variables(t *testing.T) {
	requireTool(t, "dockerd")
	srv := s3test.Start(t)
	w := startWharfWithEnv(t, "", []string{"REGISTRY_STORAGE=s3", "REGISTRY_STORAGE_S3_BUCKET=" + srv.Bucket,
		"REGISTRY_STORAGE_S3_REGIONENDPOINT=http://" + srv.Addr, "REGISTRY_STORAGE_S3_REGION=us-east-1",
		"REGISTRY_STORAGE_S3_ROOTDIRECTORY=/registry", "REGISTRY_STORAGE_S3_ACCESSKEY=" + srv.AccessKey,
		"REGISTRY_STORAGE_S3_SECRETKEY=" + srv.SecretKey, "REGISTRY_STORAGE_S3_FORCEPATHSTYLE=true"}, "--mirror=false")
	d := startDockerdWith(t, map[string]any{"insecure-registries": []string{w.addr}})
	ref := w.addr + "/team/app:v1"
	d.buildImage(t, ref, "scratch", "a.bin")
	d.roundTrip(t, ref) // pushed, removed, pulled back: the same image
	n := 0
	for obj := range srv.Client.ListObjects(context.Background(), srv.Bucket, minio.ListObjectsOptions{Prefix: "registry/blobs/", Recursive: true}) {
		if obj.Err != nil {
			t.Fatal(obj.Err)
		}
		n++
	}
	if n < 3 { // config, layer, manifest
		t.Fatalf("%d objects under registry/blobs/ after the push", n)
	}
}

// TestReadOnlyReload: read-only mode from registry:2's config.yml
// (storage.maintenance.readonly) switches with a SIGHUP, both ways: a push
// gets 405 while it is on and 201 once it is off; the log says each switch.
// Set by the flag, a reload leaves it on.
func TestReadOnlyReload(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "config.yml")
	write := func(on bool) {
		t.Helper()
		yml := fmt.Sprintf("version: 0.1\nstorage:\n  maintenance:\n    readonly:\n      enabled: %v\n", on)
		if err := os.WriteFile(cfg, []byte(yml), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	pushStatus := func(w *wharfProc, tag string) string {
		t.Helper()
		_, err := pushRaw(w, "team/ro", tag, []byte("layer "+tag))
		if err == nil {
			return "201"
		}
		if strings.Contains(err.Error(), "405") {
			return "405"
		}
		t.Fatalf("push %s: %v", tag, err)
		return ""
	}
	hup := func(w *wharfProc, want string) {
		t.Helper()
		w.cmd.Process.Signal(syscall.SIGHUP)
		for deadline := time.Now().Add(10 * time.Second); !strings.Contains(w.log.String(), want); time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("no %q in the log after SIGHUP:\n%s", want, w.log)
			}
		}
	}
	write(true)
	w := startWharf(t, "", "--mirror=false", "--registry-config", cfg)
	if got := pushStatus(w, "a"); got != "405" {
		t.Fatalf("push while read-only: %s", got)
	}
	write(false)
	hup(w, "read-only mode off")
	if got := pushStatus(w, "b"); got != "201" {
		t.Fatalf("push after read-only was switched off: %s", got)
	}
	write(true)
	hup(w, "read-only mode on")
	if got := pushStatus(w, "c"); got != "405" {
		t.Fatalf("push after read-only was switched on again: %s", got)
	}

	fixed := startWharf(t, "", "--mirror=false", "--read-only", "--registry-config", cfg)
	write(false)
	fixed.cmd.Process.Signal(syscall.SIGHUP)
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(fixed.log.String(), "reloaded users and rules"); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no reload after SIGHUP:\n%s", fixed.log)
		}
	}
	if got := pushStatus(fixed, "d"); got != "405" {
		t.Fatalf("--read-only on the command line, after a reload: push %s", got)
	}
}
