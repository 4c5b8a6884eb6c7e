package upstream

import (
	"errors"
	"fmt"
	"time"
)

// Error categories; callers use errors.Is / errors.As.
var (
	ErrNotFound    = errors.New("not found upstream")
	ErrDenied      = errors.New("upstream denied access")
	ErrNotAllowed  = errors.New("registry is not on the upstream allow-list")
	ErrUnavailable = errors.New("upstream unavailable")
	ErrRateLimited = errors.New("upstream rate limit reached")
	ErrInvalid     = errors.New("upstream sent invalid content")
	// ErrBusy: every upstream connection slot stayed taken (Options.SlotWait).
	ErrBusy = fmt.Errorf("%w: every upstream connection is busy", ErrUnavailable)
	// ErrStalled: a response body delivered nothing for Options.BodyIdle.
	ErrStalled = errors.New("upstream connection stalled")
)

// RateLimitError is ErrRateLimited with the time the registry asked to wait.
type RateLimitError struct {
	Registry   string
	RetryAfter time.Duration
}

func (e *RateLimitError) Error() string {
	return fmt.Sprintf("%s: rate limit reached, retry after %s", e.Registry, e.RetryAfter)
}

func (e *RateLimitError) Unwrap() error { return ErrRateLimited }
