// Package archtest checks the import graph the architecture fixes:
// requests flow mirror → policy → cache/upstream, never backwards, and
// only cache touches Badger.
package archtest

import (
	"encoding/json"
	"os/exec"
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
			case pkg == "cache" && dep == module+"upstream":
				t.Errorf("cache imports upstream")
			}
		}
		for _, imp := range p.Imports {
			if strings.HasPrefix(imp, "github.com/dgraph-io/badger") && pkg != "cache" {
				t.Errorf("%s imports Badger; only cache may", pkg)
			}
		}
	}
	if seen < 3 {
		t.Fatalf("go list saw %d packages", seen)
	}
}
