package main

import (
	"bytes"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/wharf-registry/wharf/cache"
	"github.com/wharf-registry/wharf/cache/stores"
)

// TestTokenExpiryWarnings: a token expiring within a week, and an expired
// one, are warned about once each; one expiring later, or never, is not.
func TestTokenExpiryWarnings(t *testing.T) {
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	store, err := stores.Open(cache.Options{Dir: t.TempDir(), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	now := time.Now()
	for name, exp := range map[string]time.Time{"soon": now.Add(3 * 24 * time.Hour), "gone": now.Add(-time.Hour), "later": now.Add(30 * 24 * time.Hour), "never": {}} {
		if err := store.Records().CreateToken(cache.TokenRecord{Name: name, Owner: "alice", Hash: "h", Repos: []string{"a"}, Actions: []string{"pull"}, Expires: exp}); err != nil {
			t.Fatal(err)
		}
	}
	w := tokenWarnings{}
	if n := w.check(store, log, now); n != 2 || !strings.Contains(logs.String(), "token=soon") || !strings.Contains(logs.String(), "access token expired") ||
		strings.Contains(logs.String(), "token=later") || strings.Contains(logs.String(), "token=never") {
		t.Fatalf("warned %d:\n%s", n, &logs)
	}
	if n := w.check(store, log, now.Add(time.Hour)); n != 0 {
		t.Fatalf("warned again: %d", n)
	}
}
