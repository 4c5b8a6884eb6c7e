package upstream

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/containerd/containerd/v2/core/remotes/docker"
	remoteerrors "github.com/containerd/containerd/v2/core/remotes/errors"
	"github.com/containerd/errdefs"
)

// observe classifies err, updates r's health and returns the error to give
// callers. Only failures of the registry itself count towards marking it
// down, and only DownAfter of them in a row: a token server's failure, or
// an answer about one repository (401, 403, 404), never does.
func (c *Client) observe(ctx context.Context, r *registry, cs *callStatus, err error) error {
	if err == nil {
		r.mu.Lock()
		r.failures = 0
		r.mu.Unlock()
		return nil
	}
	if ctx.Err() != nil {
		return err
	}
	var tokenErr *TokenError
	if errors.As(err, &tokenErr) {
		return fmt.Errorf("%s: %w: %v", r.Name, ErrUnavailable, err)
	}
	var status remoteerrors.ErrUnexpectedStatus
	if errors.As(err, &status) {
		cs.mu.Lock()
		cs.last = status.StatusCode
		cs.mu.Unlock()
	}
	code := cs.get()
	switch {
	case errdefs.IsNotFound(err), code == http.StatusNotFound:
		return fmt.Errorf("%w: %v", ErrNotFound, err)
	case errors.Is(err, ErrNotAllowed), errors.Is(err, errRangeIgnored):
		return err
	case code == http.StatusTooManyRequests:
		r.mu.Lock()
		wait := r.retryAfter
		r.limitedUntil = time.Now().Add(wait)
		r.lastErr = "429 Too Many Requests"
		r.mu.Unlock()
		c.log.Warn("upstream rate limit reached", "registry", r.Name, "retry_after", wait)
		return &RateLimitError{Registry: r.Name, RetryAfter: wait}
	case code == http.StatusUnauthorized || code == http.StatusForbidden, errors.Is(err, docker.ErrInvalidAuthorization):
		return fmt.Errorf("%w: %v", ErrDenied, err)
	case code >= 300 && code < 500:
		return fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, ErrStalled) {
		r.stalled()
	}
	c.markFailed(r, err)
	return fmt.Errorf("%s: %w: %v", r.Name, ErrUnavailable, err)
}

// markFailed counts a failure of r; the DownAfter-th in a row marks it down
// and starts a background probe that marks it up again once it answers.
func (c *Client) markFailed(r *registry, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.lastErr = err.Error()
	if r.failures++; r.failures < c.opts.DownAfter && !r.down {
		return
	}
	if !r.down {
		c.log.Warn("upstream unavailable; serving from cache until it answers", "registry", r.Name, "err", err)
	}
	r.down = true
	if r.probing {
		return
	}
	r.probing = true
	go c.probe(r)
}

func (c *Client) probe(r *registry) {
	t := time.NewTicker(c.opts.ProbeEvery)
	defer t.Stop()
	client := &http.Client{Transport: c.transport(r.Endpoint != ""), Timeout: c.opts.DialTimeout}
	for {
		select {
		case <-c.ctx.Done():
			return
		case <-t.C:
		}
		resp, err := client.Get(r.url.JoinPath("v2/").String())
		if err != nil {
			continue
		}
		resp.Body.Close()
		if resp.StatusCode < 500 {
			r.mu.Lock()
			r.down, r.probing, r.failures = false, false, 0
			r.mu.Unlock()
			c.log.Info("upstream is back", "registry", r.Name)
			return
		}
	}
}

// Status is the health of one registry, for logs and status pages.
type Status struct {
	Name, Endpoint     string
	Up                 bool
	RateLimitedUntil   time.Time
	RateLimitRemaining int // -1 when the registry does not say
	LastError          string
}

// Status reports every registry's health.
func (c *Client) Status() []Status {
	var out []Status
	for _, r := range c.regs {
		r.mu.Lock()
		out = append(out, Status{Name: r.Name, Endpoint: r.url.String(), Up: !r.down,
			RateLimitedUntil: r.limitedUntil, RateLimitRemaining: r.remaining, LastError: r.lastErr})
		r.mu.Unlock()
	}
	return out
}
