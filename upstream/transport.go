package upstream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/wharf-registry/wharf/internal/idle"
)

func (c *Client) transport(anyAddress bool) *http.Transport {
	// Keepalive probes find a peer that vanished; BodyIdle finds a
	// connection whose peer still acknowledges but sends nothing.
	dialer := &net.Dialer{Timeout: c.opts.DialTimeout,
		KeepAliveConfig: net.KeepAliveConfig{Enable: true, Idle: 15 * time.Second, Interval: 5 * time.Second, Count: 3}}
	if !anyAddress {
		dialer.Control = refuseInternal
	}
	return &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           dialer.DialContext,
		TLSHandshakeTimeout:   c.opts.DialTimeout,
		ResponseHeaderTimeout: c.opts.ResponseTimeout,
		MaxIdleConnsPerHost:   int(c.opts.MaxConns),
		IdleConnTimeout:       90 * time.Second,
		ForceAttemptHTTP2:     true,
	}
}

func (c *Client) hosts(name string) ([]docker.RegistryHost, error) {
	r := c.regs[NormalizeName(name)]
	if r == nil {
		return nil, fmt.Errorf("%s: %w", name, ErrNotAllowed)
	}
	return []docker.RegistryHost{r.host}, nil
}

// ErrInternalAddress is returned for a connection to a loopback, private,
// link-local or unspecified address that the config did not name.
var ErrInternalAddress = errors.New("refusing to connect to an internal address")

// refuseInternal is a dialer Control: it runs after name resolution, on
// the address actually dialled.
func refuseInternal(network, address string, _ syscall.RawConn) error {
	host, _, err := net.SplitHostPort(address)
	if err != nil {
		return err
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return err
	}
	ip = ip.Unmap()
	if ip.IsLoopback() || ip.IsPrivate() || ip.IsLinkLocalUnicast() || ip.IsLinkLocalMulticast() ||
		ip.IsUnspecified() || ip.IsMulticast() || netip.MustParsePrefix("100.64.0.0/10").Contains(ip) {
		return fmt.Errorf("%w %s", ErrInternalAddress, ip)
	}
	return nil
}

// recorder notes rate-limit headers of every upstream response.
type recorder struct {
	reg  *registry
	opts Options
	next http.RoundTripper
}

func (t *recorder) RoundTrip(req *http.Request) (*http.Response, error) {
	// A blob's bytes come from its blobs URL or from where that redirected
	// (a CDN); a token response never says a blob's size.
	blob := strings.Contains(req.URL.Path, "/blobs/") || req.Response != nil
	bounded := false
	if blob && req.Method == http.MethodGet {
		if v, ok := rangeFrom(req.Context(), req.Header.Get("Range")); ok {
			req = req.Clone(req.Context())
			req.Header.Set("Range", v)
			bounded = !strings.HasSuffix(v, "-")
		}
	}
	resp, err := t.next.RoundTrip(req)
	if err != nil {
		return resp, err
	}
	if bounded && resp.StatusCode == http.StatusOK {
		// containerd would read the whole blob up to the offset.
		resp.Body.Close()
		resp.Body = io.NopCloser(errReader{errRangeIgnored})
	}
	resp.Body = idle.Body(resp.Body, t.opts.BodyIdle, ErrStalled, t.reg.stalled)
	if cs, ok := req.Context().Value(callStatusKey{}).(*callStatus); ok { // the latest response decides
		cs.noteResponse(resp, blob)
	}
	if v := resp.Header.Get("ratelimit-remaining"); v != "" {
		n, _ := strconv.Atoi(strings.TrimSpace(strings.SplitN(v, ";", 2)[0]))
		t.reg.mu.Lock()
		t.reg.remaining = n
		t.reg.mu.Unlock()
	}
	if resp.StatusCode == http.StatusTooManyRequests {
		wait := t.opts.RetryAfter
		if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && s >= 0 {
			wait = time.Duration(s) * time.Second
		} else if at, err := http.ParseTime(resp.Header.Get("Retry-After")); err == nil {
			wait = time.Until(at)
		}
		t.reg.mu.Lock()
		t.reg.retryAfter = wait
		t.reg.mu.Unlock()
	}
	return resp, nil
}

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }

// callStatus records the HTTP status of the latest response to one
// operation's requests (the recorder writes it through the request context): containerd
// does not always keep the status in the errors it returns.
type callStatus struct {
	mu    sync.Mutex
	last  int
	size  int64 // of the whole blob, from the latest blob response; -1 unknown
	start int64 // where the latest blob response's Content-Range starts; -1 none
	// where the latest blob response came from when the registry
	// redirected there (a CDN's signed URL); "" when it did not
	location string
}

type callStatusKey struct{}

func withCallStatus(ctx context.Context) (context.Context, *callStatus) {
	cs := &callStatus{size: -1, start: -1}
	return context.WithValue(ctx, callStatusKey{}, cs), cs
}

// callFrom returns the callStatus of ctx (a fresh one when it has none).
func callFrom(ctx context.Context) *callStatus {
	if cs, ok := ctx.Value(callStatusKey{}).(*callStatus); ok {
		return cs
	}
	return &callStatus{size: -1, start: -1}
}

func (cs *callStatus) blobSize() int64 {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	return cs.size
}

// noteResponse records resp's status and, for a blob's 200 or 206, the
// size of the whole blob (Content-Length, or the total of Content-Range).
func (cs *callStatus) noteResponse(resp *http.Response, blob bool) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	cs.last = resp.StatusCode
	if !blob {
		return
	}
	cs.start, cs.location = -1, ""
	if resp.Request != nil && resp.Request.Response != nil && resp.StatusCode < 300 {
		cs.location = resp.Request.URL.String()
	}
	switch resp.StatusCode {
	case http.StatusOK:
		cs.size = resp.ContentLength
	case http.StatusPartialContent:
		cs.size = -1
		if start, _, total, ok := contentRange(resp.Header.Get("Content-Range")); ok {
			cs.start, cs.size = start, total
		}
	}
}

// contentRange parses a response's "bytes start-end/total" (total -1 when
// it is "*").
func contentRange(h string) (start, end, total int64, ok bool) {
	span, tot, found := strings.Cut(strings.TrimSpace(h), "/")
	if !found {
		return 0, 0, 0, false
	}
	if n, _ := fmt.Sscanf(span, "bytes %d-%d", &start, &end); n != 2 || start < 0 || end < start {
		return 0, 0, 0, false
	}
	total = -1
	if tot = strings.TrimSpace(tot); tot != "*" {
		var err error
		if total, err = strconv.ParseInt(tot, 10, 64); err != nil || total <= end {
			return 0, 0, 0, false
		}
	}
	return start, end, total, true
}

// redirectedTo is where the latest blob response came from after a
// redirect, or "".
func (cs *callStatus) redirectedTo() string {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	return cs.location
}

// rangeStart is where the latest blob response's bytes start, when it was
// a 206 (-1 otherwise).
func (cs *callStatus) rangeStart() int64 {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	return cs.start
}

func (cs *callStatus) get() int {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	return cs.last
}
