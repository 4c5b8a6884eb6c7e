package registry

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/wharf-registry/wharf/upstream"
)

// TestOutageErrorsAreNotMisses: a 503, a timeout, a rate limit or invalid
// content is never remembered as a miss.
func TestOutageErrorsAreNotMisses(t *testing.T) {
	ms := newMisses(time.Hour)
	for _, err := range []error{context.DeadlineExceeded, upstream.ErrUnavailable, upstream.ErrBusy, upstream.ErrStalled,
		&upstream.RateLimitError{Registry: "docker.io", RetryAfter: time.Second}, upstream.ErrInvalid, errors.New("disk full")} {
		ms.note("docker.io", "library/x", "1", fmt.Errorf("wrapped: %w", err))
		if got := ms.get("docker.io", "library/x", "1"); got != nil {
			t.Fatalf("%v was remembered as a miss", err)
		}
	}
}

// TestMissesBounded: random names cannot grow the remembered misses past
// their bound.
func TestMissesBounded(t *testing.T) {
	ms := newMisses(time.Hour)
	for i := 0; i < maxMisses+500; i++ {
		ms.note("docker.io", fmt.Sprintf("library/x%d", i), "1", upstream.ErrNotFound)
	}
	if n := len(ms.m); n > maxMisses {
		t.Fatalf("%d misses remembered, bound %d", n, maxMisses)
	}
	if ms.get("docker.io", fmt.Sprintf("library/x%d", maxMisses+499), "1") == nil {
		t.Fatal("the latest miss was dropped")
	}
}
