package e2e

import (
	"encoding/xml"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestConformance runs the OCI distribution-spec conformance suite (the
// module version pinned in go.mod as a tool) against a real wharf process
// with deletes enabled, every data set and API group switched on.
func TestConformance(t *testing.T) {
	requireTool(t, "go")
	dir := t.TempDir()
	bin := filepath.Join(dir, "conformance")
	run(t, 5*time.Minute, nil, "go", "build", "-o", bin, "github.com/opencontainers/distribution-spec/conformance")
	// The suite tests the registry: it probes repositories it never pushed,
	// which a mirror would forward upstream.
	w := startWharf(t, "", "--allow-delete", "--mirror=false")
	env := []string{
		"OCI_REGISTRY=" + w.addr, "OCI_TLS=disabled", "OCI_VERSION=1.1",
		"OCI_REPO1=conformance/repo1", "OCI_REPO2=conformance/repo2",
		"OCI_RESULTS_DIR=" + filepath.Join(dir, "results"),
		"OCI_API_BLOBS_UPLOAD_CANCEL=true", "OCI_API_MANIFESTS_TAG_PARAM=true",
		"OCI_API_BLOBS_DIGEST_HEADER=true", "OCI_API_MANIFESTS_DIGEST_HEADER=true",
		"OCI_DATA_SHA512=true", "OCI_DATA_NONDISTRIBUTABLE=true", "OCI_API_REFERRER=true",
	}
	out, err := runInDir(dir, 10*time.Minute, env, bin)
	raw, rerr := os.ReadFile(filepath.Join(dir, "results", "junit.xml"))
	if rerr != nil {
		t.Fatalf("no junit report (%v); conformance exit: %v\n%s", rerr, err, out)
	}
	var suites struct {
		Tests   int `xml:"tests,attr"`
		Skipped int `xml:"skipped,attr"`
		Suites  []struct {
			Failures int `xml:"failures,attr"`
			Errors   int `xml:"errors,attr"`
		} `xml:"testsuite"`
	}
	if err := xml.Unmarshal(raw, &suites); err != nil {
		t.Fatal(err)
	}
	failures := 0
	for _, s := range suites.Suites {
		failures += s.Failures + s.Errors
	}
	passed := suites.Tests - suites.Skipped - failures
	// Printed for the CI log.
	fmt.Printf("OCI conformance: %d tests, %d passed, %d failed, %d skipped\n", suites.Tests, passed, failures, suites.Skipped)
	if err != nil || failures > 0 {
		t.Fatalf("conformance failed (exit %v, %d failures)\n%s\nwharf log:\n%s", err, failures, out, w.log)
	}
	// Only the two anonymous mounts (no from=) may skip: Wharf answers them
	// with an upload session, so a bare digest never reaches another
	// repository's blob.
	if suites.Skipped > 2 {
		t.Fatalf("%d conformance tests skipped, want at most 2 (anonymous mount)\n%s", suites.Skipped, out)
	}
	if suites.Tests < 900 {
		t.Fatalf("only %d conformance tests ran; the suite did not run fully\n%s", suites.Tests, out)
	}
}
