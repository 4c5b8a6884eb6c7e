package s3blobs

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wharf-registry/wharf/cache/blobs"
	"github.com/wharf-registry/wharf/internal/idle"
)

// The object store is a remote like any other: every request to it has a
// connect, a response-header and an idle deadline (a body that moves no
// byte, or a request body the store stops reading), so a store that
// accepts connections and then says nothing fails a request in bounded
// time instead of holding it. A request that hit one of those deadlines
// marks the store down: requests that need it then fail at once with
// blobs.ErrStoreUnavailable (503) while a probe asks it every probeEvery
// until it answers.
const (
	s3DialTimeout   = 5 * time.Second
	s3HeaderTimeout = 10 * time.Second
	s3IdleTimeout   = 15 * time.Second
	s3ProbeEvery    = 2 * time.Second
)

// s3Health is the object store's: down after a request hung.
type s3Health struct {
	down    atomic.Bool // set and cleared under mu; a probe runs while set
	mu      sync.Mutex
	lastErr string
	log     *slog.Logger
	probe   func() error // one request to the store, bounded
}

// ready fails fast while the store is down.
func (h *s3Health) ready() error {
	if !h.down.Load() {
		return nil
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	return fmt.Errorf("%w: it did not answer in time (%s); probing it every %s", blobs.ErrStoreUnavailable, h.lastErr, s3ProbeEvery)
}

// hung marks the store down and starts the probe (once).
func (h *s3Health) hung(cause error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.lastErr = cause.Error()
	if h.down.Load() || h.probe == nil {
		return
	}
	h.down.Store(true)
	h.log.Warn("object store not answering: requests that need it fail at once until it does", "err", cause)
	go func() {
		// The first probe goes at once: a request that timed out because
		// this process was paused (a VM migrated, SIGSTOP) finds the store
		// answering within a round trip.
		for first := true; ; first = false {
			if !first {
				time.Sleep(s3ProbeEvery)
			}
			if err := h.probe(); err == nil {
				h.mu.Lock()
				h.down.Store(false)
				h.mu.Unlock()
				h.log.Info("object store answers again")
				return
			}
		}
	}()
}

// s3RoundTripper puts the deadlines on every request and reports hangs.
type s3RoundTripper struct {
	next   *http.Transport
	health *s3Health
}

func newS3Transport(health *s3Health) *s3RoundTripper {
	d := &net.Dialer{Timeout: s3DialTimeout,
		KeepAliveConfig: net.KeepAliveConfig{Enable: true, Idle: 15 * time.Second, Interval: 5 * time.Second, Count: 3}}
	tr := &http.Transport{
		Proxy: http.ProxyFromEnvironment,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := d.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			return &writeDeadlineConn{Conn: c, idle: s3IdleTimeout}, nil
		},
		TLSHandshakeTimeout:   s3DialTimeout,
		ResponseHeaderTimeout: s3HeaderTimeout,
		ExpectContinueTimeout: time.Second,
		MaxIdleConns:          256,
		MaxIdleConnsPerHost:   64,
		IdleConnTimeout:       90 * time.Second,
		// Objects are bytes: never decompressed on the way (as minio's own
		// transport does).
		DisableCompression: true,
	}
	return &s3RoundTripper{next: tr, health: health}
}

func (t *s3RoundTripper) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := t.next.RoundTrip(req)
	if err != nil {
		if hangErr(err) && req.Context().Err() == nil {
			t.next.CloseIdleConnections() // what froze one may have frozen them
			t.health.hung(err)
		}
		return nil, err
	}
	resp.Body = idle.Body(resp.Body, s3IdleTimeout, blobs.ErrStoreUnavailable, func() {
		t.next.CloseIdleConnections()
		t.health.hung(fmt.Errorf("a response body sent nothing for %s", s3IdleTimeout))
	})
	return resp, nil
}

// hangErr reports a deadline that passed (as opposed to a refusal).
func hangErr(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// writeDeadlineConn fails a Write that the peer does not take within
// idle: a store that stopped reading a request body.
type writeDeadlineConn struct {
	net.Conn
	idle time.Duration
}

func (c *writeDeadlineConn) Write(p []byte) (int, error) {
	c.Conn.SetWriteDeadline(time.Now().Add(c.idle))
	return c.Conn.Write(p)
}
