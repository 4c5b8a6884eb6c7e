package cluster

import (
	"fmt"
	"testing"

	"github.com/opencontainers/go-digest"
)

// TestOwnerMovesOnlyTheLeaversShare: rendezvous hashing spreads digests
// over the members, and a member leaving moves only the digests it owned.
func TestOwnerMovesOnlyTheLeaversShare(t *testing.T) {
	members := map[string]string{"a": "http://127.0.0.1:1", "b": "http://127.0.0.1:2", "c": "http://127.0.0.1:3"}
	owners := map[digest.Digest]string{}
	count := map[string]int{}
	for i := range 3000 {
		d := digest.FromString(fmt.Sprint(i))
		id, url := BlobOwner(members, d)
		if members[id] != url {
			t.Fatalf("owner %s with URL %s", id, url)
		}
		owners[d] = id
		count[id]++
	}
	for id, n := range count {
		if n < 800 || n > 1200 {
			t.Fatalf("%s owns %d of 3000 digests: %v", id, n, count)
		}
	}
	delete(members, "b")
	for d, before := range owners {
		after, _ := BlobOwner(members, d)
		if before != "b" && after != before {
			t.Fatalf("%s moved from %s to %s when b left", d, before, after)
		}
		if after == "b" {
			t.Fatalf("%s still owned by the member that left", d)
		}
	}
	if id, _ := BlobOwner(nil, digest.FromString("x")); id != "" {
		t.Fatalf("owner among no members: %q", id)
	}
	if a, _ := ManifestOwner(members, "docker.io/library/alpine", "3.20"); a == "" {
		t.Fatal("no manifest owner")
	}
}
