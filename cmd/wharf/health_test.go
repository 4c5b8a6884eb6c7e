package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/urfave/cli/v2"
)

// TestHealthSaysImporting: while a start imports registry:2's storage
// (nothing listens yet), `wharf health` fails saying so, with the progress.
func TestHealthSaysImporting(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, registry2ImportingFile), []byte("importing registry:2's storage: 1.0 GiB of 4.0 GiB (25%), ETA 3s\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	app := newApp()
	app.ExitErrHandler = func(*cli.Context, error) {}
	err := app.Run([]string{"wharf", "health", "--data", dir})
	if err == nil || !strings.Contains(err.Error(), "not serving yet: importing registry:2's storage: 1.0 GiB of 4.0 GiB (25%)") {
		t.Fatalf("health during an import: %v", err)
	}
}
