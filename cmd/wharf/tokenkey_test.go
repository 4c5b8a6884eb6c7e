package main

import (
	"bytes"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestTokenKeyFile: the key file's contents are the signing secret; a
// missing, short or doubly given key stops the start with a way out; a
// file others may read is started with a warning.
func TestTokenKeyFile(t *testing.T) {
	dir := t.TempDir()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	good := filepath.Join(dir, "key")
	os.WriteFile(good, []byte("c2VjcmV0LWtleS1mb3ItYWxsLW5vZGVz\n"), 0o600)
	if k, err := tokenSecret("", good, quiet); err != nil || k != "c2VjcmV0LWtleS1mb3ItYWxsLW5vZGVz" {
		t.Fatalf("key file: %q %v", k, err)
	}
	if k, err := tokenSecret("plain", "", quiet); err != nil || k != "plain" {
		t.Fatalf("--secret alone: %q %v", k, err)
	}
	if _, err := tokenSecret("plain", good, quiet); err == nil {
		t.Fatal("--secret and --token-key-file both accepted")
	}
	if _, err := tokenSecret("", filepath.Join(dir, "none"), quiet); err == nil || !strings.Contains(err.Error(), "/dev/urandom") {
		t.Fatalf("missing file: %v", err)
	}
	short := filepath.Join(dir, "short")
	os.WriteFile(short, []byte("abc\n"), 0o600)
	if _, err := tokenSecret("", short, quiet); err == nil {
		t.Fatal("a 3-character key accepted")
	}
	open := filepath.Join(dir, "open")
	os.WriteFile(open, []byte("c2VjcmV0LWtleS1mb3ItYWxsLW5vZGVz"), 0o644)
	var logged bytes.Buffer
	if _, err := tokenSecret("", open, slog.New(slog.NewTextHandler(&logged, nil))); err != nil || !strings.Contains(logged.String(), "readable by other users") {
		t.Fatalf("world-readable key: %v, log %q", err, logged.String())
	}
}
