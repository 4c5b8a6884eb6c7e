// Package idle bounds how long a remote's response body may deliver
// nothing: the upstream registry's, the object store's and another
// node's. A body that stalls (a peer that still acknowledges but sends
// nothing, a black hole) is closed from a timer, which makes the blocked
// Read return; the transport then drops its connection.
package idle

import (
	"fmt"
	"io"
	"sync"
	"time"
)

// Body wraps rc so that, once it has delivered nothing for d, it is
// closed and Read fails with an error wrapping kind. stalled, if not nil,
// is called first (before rc is closed: a caller that resumes at once must
// find its connection pool already cleaned).
func Body(rc io.ReadCloser, d time.Duration, kind error, stalled func()) io.ReadCloser {
	b := &body{rc: rc, d: d, kind: kind}
	b.timer = time.AfterFunc(d, func() {
		b.mu.Lock()
		b.stalled = true
		b.mu.Unlock()
		if stalled != nil {
			stalled()
		}
		rc.Close()
	})
	return b
}

type body struct {
	rc    io.ReadCloser
	d     time.Duration
	kind  error
	timer *time.Timer

	mu      sync.Mutex
	stalled bool
}

func (b *body) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	if err == io.EOF {
		b.timer.Stop()
	} else if n > 0 {
		b.timer.Reset(b.d)
	}
	if err != nil && err != io.EOF {
		b.mu.Lock()
		if b.stalled {
			err = fmt.Errorf("%w: nothing received for %s", b.kind, b.d)
		}
		b.mu.Unlock()
	}
	return n, err
}

func (b *body) Close() error {
	b.timer.Stop()
	return b.rc.Close()
}
