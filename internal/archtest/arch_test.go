// Package archtest checks the boundaries the architecture fixes. Requests
// flow one way: cmd → mirror (HTTP API, pull-through, auth) → policy (who
// may do what, where names go) and cache (content, index, blob downloads) ←
// upstream bytes handed in by mirror; cache and upstream never import
// mirror, cache imports neither upstream nor policy, upstream imports
// neither cache nor policy; only cache touches Badger and only upstream
// containerd's remotes; and no code outside policy derives a repository's
// origin from the shape of its name.
package archtest

import (
	"encoding/json"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
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
			switch {
			case (pkg == "cache" || pkg == "upstream" || pkg == "policy") && dep == module+"mirror":
				t.Errorf("%s imports mirror: data must flow one way", pkg)
			case pkg == "cache" && (dep == module+"upstream" || dep == module+"policy"):
				t.Errorf("cache imports %s: the store knows nothing of registries' protocols or rules", dep)
			case pkg == "upstream" && (dep == module+"cache" || dep == module+"policy"):
				t.Errorf("upstream imports %s", dep)
			}
		}
		for _, imp := range p.Imports {
			if strings.HasPrefix(imp, "github.com/dgraph-io/badger") && pkg != "cache" {
				t.Errorf("%s imports Badger; only cache may", pkg)
			}
			if strings.HasPrefix(imp, "go.etcd.io/etcd/") && pkg != "cache" && pkg != "internal/etcdtest" {
				t.Errorf("%s imports etcd's client; only cache (and the tests' etcd helper) may", pkg)
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
