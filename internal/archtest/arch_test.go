// Package archtest checks the boundaries the architecture fixes. Requests
// flow one way: cmd → mirror (HTTP API, pull-through, auth) → policy (who
// may do what, where names go) and cache (content, index, blob downloads) ←
// upstream bytes handed in by mirror; cache and upstream never import
// mirror, cache imports neither upstream nor policy, upstream imports
// neither cache nor policy, and policy never upstream's root (only its
// dependency-free name leaf). The store is over two interfaces it declares
// (cache/index, cache/blobs): cache never imports a concrete backend, a
// backend imports only its interface package, and only cmd and
// cache/stores put them together. Only the Badger backend touches Badger,
// only the etcd backend etcd's client, only the S3 backend minio, and only
// upstream containerd's remotes; and no code outside policy derives a
// repository's origin from the shape of its name. The HTTP face (mirror)
// is a mux over planes with fixed arrows: the OCI data plane
// (mirror/registry) never imports the operator plane (mirror/admin,
// mirror/console), which never imports the data plane or upstream; they
// share only the gate (mirror/auth) and the wire format (mirror/oci).
package archtest

import (
	"encoding/json"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

const module = "github.com/wharf-registry/wharf/"

func TestImportGraph(t *testing.T) {
	out, err := exec.Command("go", "list", "-json=ImportPath,Imports,Deps", "../../...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	dec := json.NewDecoder(strings.NewReader(string(out)))
	seen := 0
	for dec.More() {
		var p struct {
			ImportPath string
			Imports    []string // direct
			Deps       []string // transitive
		}
		if err := dec.Decode(&p); err != nil {
			t.Fatal(err)
		}
		seen++
		pkg := strings.TrimPrefix(p.ImportPath, module)
		for _, dep := range p.Deps {
			d := strings.TrimPrefix(dep, module)
			switch {
			case (under(pkg, "cache") || pkg == "upstream" || pkg == "policy") && under(d, "mirror"):
				t.Errorf("%s imports %s: data must flow one way", pkg, d)
			case pkg == "cache" && (under(d, "upstream") || d == "policy"):
				t.Errorf("cache imports %s: the store knows nothing of registries' protocols or rules", d)
			case pkg == "cache" && (isBackend(d) || d == "cache/stores"):
				t.Errorf("cache imports the backend %s: it knows only the interfaces it declares", d)
			case pkg == "cache" && (strings.HasPrefix(dep, "github.com/dgraph-io/badger") || strings.HasPrefix(dep, "go.etcd.io/") || strings.HasPrefix(dep, "github.com/minio/") || strings.HasPrefix(dep, "google.golang.org/grpc")):
				t.Errorf("cache links %s: a backend's library belongs to the backend", dep)
			case pkg == "upstream" && (d == "cache" || d == "policy"):
				t.Errorf("upstream imports %s", d)
			case pkg == "policy" && d == "upstream":
				t.Errorf("policy imports upstream's root: names come from upstream/regname")
			case pkg == "policy" && strings.HasPrefix(dep, "google.golang.org/grpc"):
				t.Errorf("policy links %s", dep)
			}
		}
		for _, dep := range p.Deps {
			d := strings.TrimPrefix(dep, module)
			if pkg == "mirror/registry" && (d == "mirror" || under(d, "mirror/admin") || under(d, "mirror/console") || under(d, "mirror/notify")) {
				t.Errorf("the data plane (mirror/registry) imports %s: it reports through its Events and its Notifier, never to the operator plane", d)
			}
			if (pkg == "mirror/admin" || pkg == "mirror/console") && (d == "mirror" || under(d, "mirror/registry") || under(d, "mirror/cluster") || d == "upstream") {
				t.Errorf("the operator plane (%s) imports %s: it is handed what it shows, never the data plane", pkg, d)
			}
		}
		for _, imp := range p.Imports {
			d := strings.TrimPrefix(imp, module)
			if allowed, ok := mirrorPlanes[pkg]; ok && strings.HasPrefix(imp, module) && !allowed[d] {
				t.Errorf("%s imports %s: the arrows of the HTTP face allow only %v", pkg, d, keys(allowed))
			}
			if isBackend(pkg) && strings.HasPrefix(imp, module) && d != iface(pkg) && d != "internal/idle" {
				t.Errorf("backend %s imports %s: a backend imports only its interface package (%s)", pkg, d, iface(pkg))
			}
			if isBackend(d) && pkg != "cache/stores" && !under(pkg, "cmd") && !under(pkg, "internal") {
				t.Errorf("%s imports the backend %s: cmd (through cache/stores) chooses backends", pkg, d)
			}
			if strings.HasPrefix(imp, "github.com/dgraph-io/badger") && pkg != "cache/index/badgerindex" {
				t.Errorf("%s imports Badger; only cache/index/badgerindex may", pkg)
			}
			if strings.HasPrefix(imp, "go.etcd.io/etcd/") && pkg != "cache/index/etcdindex" && pkg != "internal/etcdtest" {
				t.Errorf("%s imports etcd's client; only cache/index/etcdindex (and the tests' etcd helper) may", pkg)
			}
			if strings.HasPrefix(imp, "github.com/minio/") && pkg != "cache/blobs/s3blobs" && !under(pkg, "internal") {
				t.Errorf("%s imports minio; only cache/blobs/s3blobs (and test helpers) may", pkg)
			}
			if strings.HasPrefix(imp, "github.com/containerd/containerd/v2/core/remotes") && pkg != "upstream" {
				t.Errorf("%s imports containerd's remotes; only upstream may", pkg)
			}
		}
	}
	if seen < 3 {
		t.Fatalf("go list saw %d packages", seen)
	}
}

// mirrorPlanes are the HTTP face's packages and the only packages of
// this module each may import: the mux (mirror) puts them together; the
// data plane and the operator plane share only the gate (auth) and the
// wire format (oci).
var mirrorPlanes = map[string]map[string]bool{
	"mirror/oci":      {},
	"mirror/auth":     {"mirror/oci": true, "policy": true, "internal/loglimit": true},
	"mirror/admin":    {"mirror/auth": true, "mirror/oci": true, "cache": true, "policy": true},
	"mirror/console":  {"mirror/admin": true, "mirror/auth": true, "mirror/oci": true, "policy": true},
	"mirror/cluster":  {"mirror/auth": true, "mirror/oci": true, "cache": true, "internal/idle": true},
	"mirror/notify":   {"mirror/registry": true, "mirror/auth": true, "cache": true},
	"mirror/registry": {"mirror/auth": true, "mirror/oci": true, "mirror/cluster": true, "cache": true, "policy": true, "upstream": true, "internal/loglimit": true},
}

func keys(m map[string]bool) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// under reports whether pkg is dir or inside it.
func under(pkg, dir string) bool { return pkg == dir || strings.HasPrefix(pkg, dir+"/") }

// isBackend reports whether pkg implements one of the store's interfaces
// (the conformance suites are not backends).
func isBackend(pkg string) bool {
	for _, i := range []string{"cache/index/", "cache/blobs/"} {
		if rest, ok := strings.CutPrefix(pkg, i); ok && !strings.Contains(rest, "/") && !strings.HasSuffix(rest, "test") {
			return true
		}
	}
	return false
}

// iface is the interface package a backend implements.
func iface(pkg string) string { return pkg[:strings.LastIndex(pkg, "/")] }

// TestNoOriginFromNameShape: whether a repository is pushed or mirrored is
// read from the origin the store recorded; the name-shape predicate maps a
// request name to a registry inside policy only.
func TestNoOriginFromNameShape(t *testing.T) {
	checked := 0
	err := filepath.WalkDir("../..", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(p, ".go") || strings.HasSuffix(p, "_test.go") {
			return err
		}
		rel, _ := filepath.Rel("../..", p)
		if strings.HasPrefix(rel, "policy"+string(filepath.Separator)) {
			return nil
		}
		src, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		checked++
		if strings.Contains(string(src), "HasRegistryPrefix") {
			t.Errorf("%s uses policy.HasRegistryPrefix: decide from the recorded origin (cache.Store.Origin)", rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if checked < 20 {
		t.Fatalf("checked only %d files", checked)
	}
}
