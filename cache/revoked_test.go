package cache

import (
	"testing"
	"time"

	"github.com/wharf-registry/wharf/internal/etcdtest"
)

// TestRevocations: a revocation holds until its expiry and across a
// reopen; expired ones are dropped as new ones are written. On a shared
// index another node sees it at once.
func TestRevocations(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir)
	if err := s.Records().Revoke("a", time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if err := s.Records().Revoke("old", time.Now().Add(-time.Hour)); err != nil {
		t.Fatal(err)
	}
	for id, want := range map[string]bool{"a": true, "old": false, "never": false} {
		if got, err := s.Records().Revoked(id); err != nil || got != want {
			t.Errorf("Revoked(%q) = %v, %v; want %v", id, got, err, want)
		}
	}
	if err := s.Records().Revoke("b", time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s = openStore(t, dir)
	if got, _ := s.Records().Revoked("a"); !got {
		t.Error("a revocation did not survive a reopen")
	}
	var keys int
	s.idx.View(func(txn Txn) error {
		return txn.Scan([]byte("x/"), nil, true, func([]byte, []byte) error { keys++; return nil })
	})
	if keys != 2 {
		t.Errorf("%d revocations kept, want 2 (the expired one dropped)", keys)
	}

	c := etcdtest.Start(t, 1)
	blobs := t.TempDir()
	n1, n2 := clusterNode(t, c, "revoked", blobs), clusterNode(t, c, "revoked", blobs)
	if err := n1.Records().Revoke("session", time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if got, err := n2.Records().Revoked("session"); err != nil || !got {
		t.Fatalf("another node: %v %v", got, err)
	}
}
