package upstream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	remoteerrors "github.com/containerd/containerd/v2/core/remotes/errors"
	"github.com/containerd/errdefs"
	containerdlog "github.com/containerd/log"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/semaphore"
)

// Options configures a Client. Zero values take the defaults in brackets.
type Options struct {
	// Registries are the only registries ever contacted (the allow-list).
	Registries []Registry
	// MaxConns bounds concurrent blob downloads over all registries (32).
	MaxConns int64
	// DialTimeout bounds connecting (5s); ResponseTimeout waiting for
	// response headers (30s).
	DialTimeout, ResponseTimeout time.Duration
	// ProbeEvery is how often a registry marked down is probed (2s).
	ProbeEvery time.Duration
	// RetryAfter is assumed after a 429 without Retry-After (60s).
	RetryAfter time.Duration
	Logger     *slog.Logger
}

// Descriptor identifies upstream content.
type Descriptor = ocispec.Descriptor

// Client fetches from the allowed registries. Safe for concurrent use.
type Client struct {
	opts     Options
	log      *slog.Logger
	regs     map[string]*registry
	resolver remotes.Resolver
	sem      *semaphore.Weighted
	ctx      context.Context // cancelled by Close: stops probes
	cancel   context.CancelFunc
}

// registry is one Registry with its connection and health state.
type registry struct {
	Registry
	url  *url.URL
	host docker.RegistryHost

	mu           sync.Mutex
	down         bool
	probing      bool
	limitedUntil time.Time
	retryAfter   time.Duration // from the last 429
	remaining    int           // ratelimit-remaining, -1 unknown
	lastErr      string
}

// New returns a client for opts.Registries.
func New(opts Options) (*Client, error) {
	if opts.MaxConns <= 0 {
		opts.MaxConns = 32
	}
	if opts.DialTimeout <= 0 {
		opts.DialTimeout = 5 * time.Second
	}
	if opts.ResponseTimeout <= 0 {
		opts.ResponseTimeout = 30 * time.Second
	}
	if opts.ProbeEvery <= 0 {
		opts.ProbeEvery = 2 * time.Second
	}
	if opts.RetryAfter <= 0 {
		opts.RetryAfter = time.Minute
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	// containerd logs every retry and fallback through logrus at info;
	// Wharf reports upstream trouble itself, once, through slog.
	containerdlog.SetLevel("warn")
	c := &Client{opts: opts, log: opts.Logger, regs: map[string]*registry{}, sem: semaphore.NewWeighted(opts.MaxConns)}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	for _, r := range opts.Registries {
		r.Name = NormalizeName(r.Name)
		u, err := r.endpoint()
		if err != nil {
			return nil, err
		}
		reg := &registry{Registry: r, url: u, remaining: -1}
		// Only an endpoint the config names may be on a loopback, private or
		// link-local address (no SSRF through a name that resolves there).
		client := &http.Client{Transport: &recorder{reg: reg, opts: opts, next: c.transport(r.Endpoint != "")}}
		creds := func(host string) (string, string, error) {
			if host == u.Host { // never another host's realm
				return r.Username, r.Password, nil
			}
			return "", "", nil
		}
		reg.host = docker.RegistryHost{
			Client:       client,
			Authorizer:   docker.NewDockerAuthorizer(docker.WithAuthClient(client), docker.WithAuthCreds(creds)),
			Host:         u.Host,
			Scheme:       u.Scheme,
			Path:         strings.TrimSuffix(u.Path, "/") + "/v2",
			Capabilities: docker.HostCapabilityPull | docker.HostCapabilityResolve,
		}
		c.regs[r.Name] = reg
	}
	c.resolver = docker.NewResolver(docker.ResolverOptions{Hosts: c.hosts})
	return c, nil
}

// Close stops background probes.
func (c *Client) Close() { c.cancel() }

func (c *Client) transport(anyAddress bool) *http.Transport {
	dialer := &net.Dialer{Timeout: c.opts.DialTimeout, KeepAlive: 30 * time.Second}
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

// Allowed reports whether registry name may be contacted.
func (c *Client) Allowed(name string) bool { return c.regs[NormalizeName(name)] != nil }

// Resolve turns a tag or digest of repo into a descriptor with a HEAD
// request (Docker Hub does not count HEADs against its pull limit).
func (c *Client) Resolve(ctx context.Context, name, repo, ref string) (Descriptor, error) {
	r, err := c.ready(name)
	if err != nil {
		return Descriptor{}, err
	}
	sep := ":"
	if strings.Contains(ref, ":") {
		sep = "@"
	}
	ctx, cs := withCallStatus(ctx)
	_, desc, err := c.resolver.Resolve(ctx, r.Name+"/"+repo+sep+ref)
	if err != nil {
		return Descriptor{}, c.observe(ctx, r, cs, err)
	}
	c.observe(ctx, r, cs, nil)
	return Descriptor{Digest: desc.Digest, MediaType: desc.MediaType, Size: desc.Size}, nil
}

// Manifest downloads manifest desc of repo, at most maxSize bytes, and
// checks the bytes hash to desc.Digest. Errors: ErrInvalid, and those of
// Resolve.
func (c *Client) Manifest(ctx context.Context, name, repo string, desc Descriptor, maxSize int64) ([]byte, error) {
	r, err := c.ready(name)
	if err != nil {
		return nil, err
	}
	if desc.Size <= 0 || desc.MediaType == "" { // unknown: HEAD it first
		if desc, err = c.Resolve(ctx, name, repo, desc.Digest.String()); err != nil {
			return nil, err
		}
	}
	if desc.Size > maxSize {
		return nil, fmt.Errorf("%w: manifest %s is %d bytes, more than %d", ErrInvalid, desc.Digest, desc.Size, maxSize)
	}
	ctx, cs := withCallStatus(ctx)
	f, err := c.resolver.Fetcher(ctx, r.Name+"/"+repo+"@"+desc.Digest.String())
	if err != nil {
		return nil, c.observe(ctx, r, cs, err)
	}
	rc, err := f.Fetch(ctx, ocispec.Descriptor{MediaType: desc.MediaType, Digest: desc.Digest, Size: desc.Size})
	if err != nil {
		return nil, c.observe(ctx, r, cs, err)
	}
	defer rc.Close()
	body, err := io.ReadAll(io.LimitReader(rc, maxSize+1))
	if err != nil {
		return nil, c.observe(ctx, r, cs, err)
	}
	c.observe(ctx, r, cs, nil)
	if int64(len(body)) > maxSize || desc.Digest.Algorithm().FromBytes(body) != desc.Digest {
		return nil, fmt.Errorf("%w: manifest bytes do not hash to %s", ErrInvalid, desc.Digest)
	}
	return body, nil
}

// Blob opens blob d of repo and returns it with its size. The reader
// reconnects with a Range request when the connection drops, and Seek
// resumes at an offset. It holds one of the MaxConns slots until closed.
func (c *Client) Blob(ctx context.Context, name, repo string, d digest.Digest) (io.ReadSeekCloser, int64, error) {
	r, err := c.ready(name)
	if err != nil {
		return nil, 0, err
	}
	if err := c.sem.Acquire(ctx, 1); err != nil {
		return nil, 0, err
	}
	ctx, cs := withCallStatus(ctx)
	f, err := c.resolver.Fetcher(ctx, r.Name+"/"+repo+"@"+d.String())
	if err != nil {
		c.sem.Release(1)
		return nil, 0, c.observe(ctx, r, cs, err)
	}
	byDigest, ok := f.(remotes.FetcherByDigest)
	if !ok {
		c.sem.Release(1)
		return nil, 0, errors.New("containerd fetcher cannot fetch by digest")
	}
	rc, desc, err := byDigest.FetchByDigest(ctx, d)
	if err != nil {
		c.sem.Release(1)
		return nil, 0, c.observe(ctx, r, cs, err)
	}
	c.observe(ctx, r, cs, nil)
	rs, ok := rc.(io.ReadSeekCloser)
	if !ok {
		rc.Close()
		c.sem.Release(1)
		return nil, 0, errors.New("containerd blob reader cannot seek")
	}
	return &slotReader{ReadSeekCloser: rs, release: func() { c.sem.Release(1) }}, desc.Size, nil
}

type slotReader struct {
	io.ReadSeekCloser
	once    sync.Once
	release func()
}

func (s *slotReader) Close() error {
	err := s.ReadSeekCloser.Close()
	s.once.Do(s.release)
	return err
}

// HasBlob asks, with a HEAD, whether repo holds blob d upstream.
func (c *Client) HasBlob(ctx context.Context, name, repo string, d digest.Digest) error {
	rc, _, err := c.Blob(ctx, name, repo, d) // FetchByDigest sends only the HEAD until read
	if err != nil {
		return err
	}
	return rc.Close()
}

// ready fails fast for a registry that is not allowed, down or rate limited.
func (c *Client) ready(name string) (*registry, error) {
	r := c.regs[NormalizeName(name)]
	if r == nil {
		return nil, fmt.Errorf("%s: %w", name, ErrNotAllowed)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.down {
		return nil, fmt.Errorf("%s: %w (%s)", r.Name, ErrUnavailable, r.lastErr)
	}
	if wait := time.Until(r.limitedUntil); wait > 0 {
		return nil, &RateLimitError{Registry: r.Name, RetryAfter: wait}
	}
	return r, nil
}

// callStatus records the HTTP status of the latest response to one
// operation's requests (the recorder writes it through the request context): containerd
// does not always keep the status in the errors it returns.
type callStatus struct {
	mu   sync.Mutex
	last int
}

type callStatusKey struct{}

func withCallStatus(ctx context.Context) (context.Context, *callStatus) {
	cs := &callStatus{}
	return context.WithValue(ctx, callStatusKey{}, cs), cs
}

func (cs *callStatus) get() int {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	return cs.last
}

// observe classifies err, updates r's health and returns the error to give
// callers.
func (c *Client) observe(ctx context.Context, r *registry, cs *callStatus, err error) error {
	if err == nil || ctx.Err() != nil {
		return err
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
	case errors.Is(err, ErrNotAllowed):
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
	c.markDown(r, err)
	return fmt.Errorf("%s: %w: %v", r.Name, ErrUnavailable, err)
}

// markDown records that r failed and starts a background probe that marks
// it up again once it answers.
func (c *Client) markDown(r *registry, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.lastErr = err.Error()
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
			r.down, r.probing = false, false
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

// recorder notes rate-limit headers of every upstream response.
type recorder struct {
	reg  *registry
	opts Options
	next http.RoundTripper
}

func (t *recorder) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := t.next.RoundTrip(req)
	if err != nil {
		return resp, err
	}
	if cs, ok := req.Context().Value(callStatusKey{}).(*callStatus); ok { // the latest response decides
		cs.mu.Lock()
		cs.last = resp.StatusCode
		cs.mu.Unlock()
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
